"""Retrieval arms (candidate generators) behind one interface: ``retrieve(query, context, n)``.

- :class:`BM25Arm` -- BM25 full text over item texts (optionally expanded with clicked queries);
- :class:`CharGramArm` -- character n-gram TF-IDF cosine, tolerant to typos;
- :class:`PopularityArm` -- most-clicked items, query-independent, updated online.
"""
from retrieval.arms.base import Arm, Context, OnlineArm
from retrieval.arms.bm25 import BM25Arm, BM25Config, build_bm25_arm
from retrieval.arms.chargram import CharGramArm, CharGramConfig, build_chargram_arm
from retrieval.arms.popularity import PopularityArm, build_popularity_arm

__all__ = [
    "Arm", "Context", "OnlineArm",
    "BM25Arm", "BM25Config", "build_bm25_arm",
    "CharGramArm", "CharGramConfig", "build_chargram_arm",
    "PopularityArm", "build_popularity_arm",
]

"""Search analyzers: exact tokens, invariants (idempotent normalisation), and the qp2q analyzer equal
to the completion side's normalisation."""
from __future__ import annotations

import numpy as np
import pytest

from qac.text import normalize_query
from retrieval.analyzer import Analyzer, get_analyzer, s_stem

PRODUCT = get_analyzer("product")

NORMALIZE_CASES = [
    ("Simpson Strong-Tie 12-Gauge Angle", "simpson strong tie 12 gauge angle"),
    ("House of Fara 3/4 in. x 3 in. x 8 ft. MDF", "house of fara 3/4 in x 3 in x 8 ft mdf"),
    ("1-1/4 bi-metal saw hole", "1 1/4 bi metal saw hole"),
    ("Whirlpool 1.9 cu. ft. Microwave", "whirlpool 1.9 cu ft microwave"),
    (".75 in pocket hole screws", "0.75 in pocket hole screws"),
    ('1/2" pipe', "1/2 in pipe"),
    ("2x4 8.0 ft 1.50", "2 x 4 8 ft 1.5"),
    ("Men's (4-Pack) #SC-141", "mens 4 pack sc 141"),
    ("T&amp;S Brass", "t s brass"),
    ("1/2/3 a__b", "1/2 3 a b"),
    ("  ...  - / ", ""),
    ("Café 5", "café 5"),
]


@pytest.mark.parametrize("raw,expected", NORMALIZE_CASES)
def test_product_normalize_exact(raw, expected):
    assert PRODUCT.normalize(raw) == expected


TERMS_CASES = [
    ("1/2-inch Copper Pipes", ["1/2", "in", "copper", "pipe"]),
    ("3 Gallons 2 feet 5 lbs", ["3", "gal", "2", "ft", "5", "lb"]),
    ("boxes batteries glass hinges shoes cactus", ["box", "battery", "glass", "hinge", "shoe", "cactus"]),
    ("sqft tiles", ["sq", "ft", "tile"]),
    ("gas bus", ["gas", "bus"]),
]


@pytest.mark.parametrize("raw,expected", TERMS_CASES)
def test_product_terms_exact(raw, expected):
    assert PRODUCT.terms(raw) == expected


@pytest.mark.parametrize("word,stem", [
    ("hinges", "hinge"), ("batteries", "battery"), ("series", "sery"), ("glass", "glass"), ("cactus", "cactus"),
    ("toes", "toe"), ("bees", "bee"), ("faucets", "faucet"), ("boxes", "box"), ("benches", "bench"),
    ("dishes", "dish"), ("glasses", "glass"), ("buzzes", "buzz"), ("abs", "abs"), ("12s", "12s"), ("caf", "caf"),
])
def test_s_stem(word, stem):
    assert s_stem(word) == stem


def test_compounds():
    assert Analyzer.compounds(["door", "bell", "kit"]) == ["doorbell", "bellkit"]
    assert Analyzer.compounds(["1/2", "in", "pipe", "x", "flash", "light"]) == ["flashlight"]
    assert Analyzer.compounds([]) == []


def _random_strings(seed: int, n: int = 200) -> list[str]:
    alphabet = list("aB1/.-' \"x&;é_9s\u2019\t")
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 30))) for _ in range(n)]


@pytest.mark.parametrize("raw", _random_strings(0) + [r for r, _ in NORMALIZE_CASES])
def test_product_normalize_idempotent_and_terms_stable(raw):
    once = PRODUCT.normalize(raw)
    assert PRODUCT.normalize(once) == once
    assert PRODUCT.terms(once) == PRODUCT.terms(raw)
    assert "  " not in once and once == once.strip()


def test_qp2q_is_normalize_query():
    a = get_analyzer("qp2q")
    for raw in _random_strings(1, 200) + ["1/2-in. Copper", "İstanbul  x"]:
        assert a.normalize(raw) == normalize_query(raw)
        assert a.terms(raw) == normalize_query(raw).split()


def test_unknown_analyzer():
    with pytest.raises(ValueError, match="analyzer: must be one of"):
        Analyzer("porter")


def test_terms_returns_a_copy():
    t = PRODUCT.terms("copper pipes")
    t.append("x")
    assert PRODUCT.terms("copper pipes") == ["copper", "pipe"]

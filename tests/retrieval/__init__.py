"""Tests of the search half (retrieval package)."""

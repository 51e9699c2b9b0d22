"""MinHash signatures against datasketch, Jaccard estimates against exact Jaccard, LSH recall."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash

from tunesmith.data import dedup
from tunesmith.data.dedup import MinHasher, NearDupIndex, NgramHasher, jaccard, lsh_params
from tunesmith.data.normalize import words

TEXT = (
    "the clinic keeps a record of every visit with the doctor who saw the patient and the "
    "prescriptions written that day so that a later question about which drug was given can be answered"
)


def test_signature_is_datasketch_minhash():
    hasher = MinHasher(num_perm=64, seed=3)
    sh = NgramHasher().shingles(words(TEXT), 3)
    ref = MinHash(num_perm=64, seed=3, hashfunc=int)
    ref.update_batch([int(x) for x in sh])
    np.testing.assert_array_equal(hasher.signatures([sh])[0], ref.hashvalues)
    np.testing.assert_array_equal(hasher.sketch(sh).hashvalues, ref.hashvalues)
    assert hasher.sketch(sh).jaccard(ref) == 1.0


def test_batched_signatures_equal_single(monkeypatch):
    hasher = MinHasher(num_perm=32)
    sets = [NgramHasher().shingles(words(TEXT)[i:], 3) for i in range(0, 30, 3)]
    one_by_one = np.stack([hasher.signatures([s])[0] for s in sets])
    monkeypatch.setattr(dedup, "_MAX_SHINGLES_PER_STEP", 50)  # force several chunks
    np.testing.assert_array_equal(hasher.signatures(sets), one_by_one)


def test_shingles_are_word_ngrams():
    ng = NgramHasher()
    toks = ["a", "b", "c", "a", "b", "c", "d"]
    # trigrams at each position: abc bca cab abc bcd -> equal hashes where the trigram is equal
    h = ng.ngrams(ng.ids(toks), 3)
    assert len(h) == 5 and h[0] == h[3] and len(set(h.tolist())) == 4
    assert len(ng.shingles(toks, 3)) == 4  # abc, bca, cab, bcd
    assert len(ng.shingles(["a", "b"], 3)) == 1  # shorter than one shingle: one shingle
    assert len(ng.shingles([], 3)) == 1
    assert set(ng.shingles(["a", "b", "c"], 3)) != set(ng.shingles(["c", "b", "a"], 3))  # order
    assert len(ng.shingles(["a", "b", "c"], 1)) == 3


@pytest.mark.parametrize("overlap", [200, 600, 900])
def test_estimate_tracks_exact_jaccard(overlap):
    hasher = MinHasher(num_perm=256)
    a = np.arange(1000, dtype=np.uint32)
    b = np.arange(1000 - overlap, 2000 - overlap, dtype=np.uint32)
    exact = overlap / (2000 - overlap)
    sa, sb = hasher.signatures([a, b])
    estimate = float((sa == sb).mean())
    # 256 slots: standard error sqrt(J(1-J)/256) <= 0.031; allow 3 of them.
    assert abs(estimate - exact) < 0.095


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.5, 128), (0.8, 128), (0.9, 64)])
def test_lsh_params_reach_recall_with_most_rows(threshold, num_perm):
    b, r = lsh_params(threshold, num_perm, recall=0.97)
    assert b * r <= num_perm
    assert 1 - (1 - threshold**r) ** b >= 0.97
    r2 = r + 1  # one more row per band would miss the recall target
    assert 1 - (1 - threshold**r2) ** (num_perm // r2) < 0.97
    assert lsh_params(0.8, 128) == (18, 7)


def _index(threshold):
    hasher = MinHasher(num_perm=256)
    return hasher, NearDupIndex(hasher, threshold)


def _rec(hasher, shingles):
    """(sketch, shingles): what the index takes for one record."""
    return hasher.sketch(shingles), shingles


def test_jaccard_is_exact():
    a, b = np.arange(10, dtype=np.uint32), np.arange(5, 20, dtype=np.uint32)
    assert jaccard(a, b) == 5 / 20
    assert jaccard(a, a) == 1.0


def test_index_finds_pair_above_threshold_only():
    hasher, idx = _index(0.8)
    a = _rec(hasher, np.arange(1000, dtype=np.uint32))
    b = _rec(hasher, np.arange(100, 1100, dtype=np.uint32))  # Jaccard 900/1100 = 0.818
    c = _rec(hasher, np.arange(5000, 6000, dtype=np.uint32))  # disjoint
    assert idx.add(*a) == 0
    assert idx.query(*b) == (0, pytest.approx(900 / 1100))
    assert idx.query(*c) is None
    _, strict = _index(0.83)
    strict.add(*a)
    assert strict.query(*b) is None  # the same pair, under a threshold just above its Jaccard


def test_index_returns_all_matches_best_first():
    hasher, idx = _index(0.5)
    base = np.arange(100, dtype=np.uint32)
    idx.add(*_rec(hasher, base[:90]))  # J with base = 0.9
    idx.add(*_rec(hasher, base[:70]))  # 0.7
    idx.add(*_rec(hasher, base[:30]))  # 0.3, under the threshold
    got = idx.matches(*_rec(hasher, base))
    assert [(k, round(j, 2)) for k, j in got] == [(0, 0.9), (1, 0.7)]


def test_index_near_duplicate_text():
    hasher, idx = _index(0.8)
    edited = TEXT.replace("drug", "medicine")  # one word edit in 33 words
    other = "a completely different sentence about weather patterns over the northern sea in winter months"
    rec = lambda t: _rec(hasher, NgramHasher().shingles(words(t), 3))  # noqa: E731
    idx.add(*rec(TEXT))
    assert idx.query(*rec(edited))[0] == 0
    assert idx.query(*rec(other)) is None
    assert idx.matches(*rec(other)) == []
    assert len(idx) == 1


def test_index_grows_past_initial_capacity():
    hasher, idx = _index(0.9)
    sets = [np.arange(i * 100, i * 100 + 100, dtype=np.uint32) for i in range(1500)]  # 150k values
    for s in sets:
        idx.add(*_rec(hasher, s))
    assert len(idx) == 1500
    assert idx.query(*_rec(hasher, sets[1234])) == (1234, 1.0)
    assert idx.query(*_rec(hasher, sets[3])) == (3, 1.0)

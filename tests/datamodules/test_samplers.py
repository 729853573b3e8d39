"""Batch samplers: coverage, grouping, cluster contiguity, rank split, mid-epoch resume, reshuffling, and the
SaHa cluster files they read (refused when they do not match the data)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import chain

import numpy as np
import pytest

from datamodules import DataError
from datamodules.samplers import (
    HomogeneousBatchSampler,
    ModalityBatchSampler,
    RandomBatchSampler,
    SaHaBatchSampler,
    _best_fit_decreasing,
    apportion,
    cluster_file_header,
    cluster_file_path,
    mined_data_dir,
    source_name,
    write_cluster_file,
)
from datamodules.schema import Item, TrainPair, rows_fingerprint

SOURCE = "/data/snapshots/mmeb/train"


def make_pairs(sizes: dict[str, int], image_every: int = 2) -> dict[str, list[TrainPair]]:
    """All rows as read, per subset; every `image_every`-th query has an image."""
    return {s: [TrainPair(s, r, Item(f"{s} query {r}", f"img/{s}/{r}.png" if r % image_every == 0 else None),
                          Item(f"{s} answer {r}")) for r in range(n)] for s, n in sizes.items()}


def info_of(rows: dict[str, list[TrainPair]], split: str = "original") -> dict[str, dict]:
    return {s: {"num_rows": len(p), "fingerprint": rows_fingerprint(p), "split": split, "source": SOURCE}
            for s, p in rows.items()}


def flat(batches) -> list[int]:
    return list(chain.from_iterable(batches))


# ------------------------------------------------------------------------------------------------ SaHa fixtures
SAHA_SIZES = {"A": 40, "B": 30}
# Phase-1 clusters are disjoint; phase-2 clusters (after PHASE1[s]) reuse phase-1 rows, as SaHa does.
SAHA_CLUSTERS = {
    "A": [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17, 18, 19],
          [20, 0, 4, 7], [21, 22, 11]],
    "B": [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11, 12], [13, 0, 3], [14, 7, 9, 1]],
}
PHASE1 = {"A": 6, "B": 4}
HELD_OUT = {("A", 5), ("A", 30), ("B", 29), ("B", 9)}


def write_clusters(directory, rows, clusters=None, phase1=None, **header_overrides):
    for subset, subset_rows in rows.items():
        info = info_of({subset: subset_rows})[subset]
        header = cluster_file_header(subset, info, k=3, pool_mult=3, classification=False, index="flat",
                                     embedder={"kind": "test"}, prompt=None)
        header.update(header_overrides)
        write_cluster_file(cluster_file_path(directory, subset), header, (clusters or SAHA_CLUSTERS)[subset],
                           (phase1 or PHASE1)[subset], {})
    return directory


@pytest.fixture
def saha_data(tmp_path):
    """(training pairs without the held-out rows, subset_info of all rows, clusters directory)."""
    rows = make_pairs(SAHA_SIZES)
    write_clusters(tmp_path, rows)
    pairs = [p for s in rows for p in rows[s] if (p.subset, p.row) not in HELD_OUT]
    return pairs, info_of(rows), tmp_path


def saha(saha_data, **kw):
    pairs, info, directory = saha_data
    kw.setdefault("batch_size", 8)
    return SaHaBatchSampler(pairs=pairs, seed=3, subset_info=info, clusters_dir=str(directory), **kw)


def mapped_clusters(pairs, dedupe=False):
    """The expected clusters as positions in `pairs` (held-out rows dropped), each with its phase."""
    position = {(p.subset, p.row): i for i, p in enumerate(pairs)}
    out = []
    for subset, clusters in SAHA_CLUSTERS.items():
        seen = set()
        for c, cluster in enumerate(clusters):
            kept = [position[(subset, r)] for r in cluster if (subset, r) in position]
            if dedupe:
                kept = [p for p in kept if p not in seen]
            seen.update(kept)
            if kept:
                out.append((kept, c >= PHASE1[subset]))
    return out


# ------------------------------------------------------------------------------------------------ all samplers
def build(kind, saha_data, rank=0, world_size=1, **kw):
    pairs, info, directory = saha_data
    common = dict(pairs=pairs, batch_size=8, seed=5, rank=rank, world_size=world_size, subset_info=info)
    if kind == "random":
        return RandomBatchSampler(**common, **kw)
    if kind == "homogeneous":
        return HomogeneousBatchSampler(**common, **kw)
    if kind == "homogeneous_sub4_weighted":
        return HomogeneousBatchSampler(**common, sub_batch_size=4, weights={"A": 1.0, "B": 2.0}, **kw)
    if kind == "modality":
        return ModalityBatchSampler(**common, **kw)
    return SaHaBatchSampler(**common, clusters_dir=str(directory), dedupe=kind == "saha_dedupe", **kw)


KINDS = ["random", "homogeneous", "homogeneous_sub4_weighted", "modality", "saha", "saha_dedupe"]


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_get_disjoint_batches_and_the_same_count(kind, saha_data):
    # The global epoch is a function of the world size for the weighted sub-batch sampler (its no-repeat
    # window spans the whole global batch of all ranks); the other samplers give one order at any world size.
    whole = build(kind, saha_data, world_size=2).epoch_batches(2)
    if kind != "homogeneous_sub4_weighted":
        assert whole == build(kind, saha_data).epoch_batches(2)
    ranks = [build(kind, saha_data, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    local = [list(s) for s in ranks]
    assert len(local[0]) == len(local[1]) == len(ranks[0]) == len(whole) // 2
    # Rank r takes global batches r, r+2, …: together they are the global epoch minus an odd last batch.
    assert [b for pair in zip(*local) for b in pair] == whole[: 2 * (len(whole) // 2)]
    # Rows repeat within an epoch by design in two cases: SaHa without dedupe (phase-2 reuse) and an
    # up-weighted subset cycling through its rows more than once.
    if kind not in ("saha", "homogeneous_sub4_weighted"):
        assert not set(flat(local[0])) & set(flat(local[1]))


@pytest.mark.parametrize("kind", KINDS)
def test_resume_mid_epoch_equals_the_uninterrupted_run(kind, saha_data):
    uninterrupted = build(kind, saha_data)
    uninterrupted.set_epoch(1)
    full = list(uninterrupted)
    restarted = build(kind, saha_data)  # a fresh process: nothing cached
    restarted.resume(epoch=1, consumed=3)
    assert restarted.epoch == 1  # already on the resumed epoch before Lightning calls set_epoch
    restarted.set_epoch(1)
    assert len(restarted) == len(full)
    assert list(restarted) == full[3:]
    assert list(restarted) == full  # the skip applies once; a later pass over the epoch is whole


@pytest.mark.parametrize("kind", KINDS)
def test_reshuffled_every_epoch_and_reproducible(kind, saha_data):
    sampler = build(kind, saha_data)
    epochs = [sampler.epoch_batches(e) for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]
    assert build(kind, saha_data).epoch_batches(1) == epochs[1]


# ------------------------------------------------------------------------------------------------ random
@pytest.mark.parametrize("drop_last", [False, True])
def test_random_uses_every_row_once(drop_last):
    pairs = make_pairs({"A": 37})["A"]
    batches = RandomBatchSampler(pairs, batch_size=8, drop_last=drop_last).epoch_batches(0)
    rows = flat(batches)
    assert len(rows) == len(set(rows)) == (32 if drop_last else 37)
    assert all(len(b) == 8 for b in batches[:4])


# ------------------------------------------------------------------------------------------------ homogeneous
@pytest.mark.parametrize("sub_batch_size", [None, 4])
def test_homogeneous_default_weights_use_every_row_once_in_single_subset_sub_batches(sub_batch_size):
    rows = make_pairs({"A": 37, "B": 22, "C": 9})
    pairs = [p for s in rows.values() for p in s]
    for drop_last in (False, True):
        sampler = HomogeneousBatchSampler(pairs, batch_size=8, seed=1, drop_last=drop_last,
                                          sub_batch_size=sub_batch_size)
        batches = sampler.epoch_batches(4)
        used = flat(batches)
        assert len(used) == len(set(used))
        h = sub_batch_size or 8
        per = 8 // h
        for b in batches:  # at most `per` single-subset runs per device batch
            runs = 1 + sum(pairs[x].subset != pairs[y].subset for x, y in zip(b, b[1:]))
            assert runs <= per
        if not drop_last:  # short sub-batches of the rows that do not fill one are kept
            assert sorted(used) == list(range(len(pairs)))
        else:  # left out: n mod h rows per subset, and a trailing device batch of fewer sub-batches
            full_sub_batches = sum(len(r) // h for r in rows.values())
            assert len(used) == full_sub_batches // per * 8
            assert all(len(b) == 8 for b in batches)
            for b in batches:
                for start in range(0, len(b), h):
                    assert len({pairs[i].subset for i in b[start : start + h]}) == 1


def test_apportion_largest_remainders():
    assert apportion(10, [3, 1, 0]) == [8, 2, 0]  # quotas 7.5, 2.5, 0: the tie goes to the first
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert apportion(5, [0.2, 0.3, 0.5]) == [1, 2, 2]  # quotas 1, 1.5, 2.5


def test_homogeneous_weights_are_respected():
    rows = make_pairs({"A": 40, "B": 40, "C": 24})
    pairs = [p for s in rows.values() for p in s]
    sampler = HomogeneousBatchSampler(pairs, batch_size=8, seed=0, sub_batch_size=4,
                                      weights={"A": 3, "B": 1, "C": 0})
    # Same epoch length as the proportional epoch (10 + 10 + 6 sub-batches), split 3:1:0.
    assert dict(zip(sampler.group_names, sampler.counts)) == {"A": 20, "B": 6, "C": 0}
    seen = Counter()
    for epoch in range(6):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == 13
        subsets = Counter(pairs[b[i]].subset for b in batches for i in range(0, 8, 4))
        assert subsets == {"A": 20, "B": 6}
        seen.update(flat(batches))
    # A (weight 3) cycles through its rows twice per epoch: every row exactly 12 times in 6 epochs;
    # B (6 of its 10 sub-batches per epoch) walks its stream, so its rows are used 3 or 4 times each.
    assert {seen[i] for i in range(40)} == {12}
    assert {seen[i] for i in range(40, 80)} <= {3, 4} and sum(seen[i] for i in range(40, 80)) == 6 * 6 * 4
    assert not any(seen[i] for i in range(80, 104))


def test_homogeneous_weights_statistically_in_every_device_batch_position():
    rows = make_pairs({"A": 400, "B": 400})
    pairs = [p for s in rows.values() for p in s]
    sampler = HomogeneousBatchSampler(pairs, batch_size=4, seed=0, weights={"A": 0.75, "B": 0.25})
    firsts = Counter(pairs[sampler.epoch_batches(e)[0][0]].subset for e in range(400))
    assert abs(firsts["A"] / 400 - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 400)


def test_homogeneous_bad_settings_are_named():
    pairs = [p for s in make_pairs({"A": 10, "B": 10}).values() for p in s]
    with pytest.raises(ValueError, match="sub_batch_size=3 must divide data.batch_size=8"):
        HomogeneousBatchSampler(pairs, batch_size=8, sub_batch_size=3)
    with pytest.raises(ValueError, match=r"unknown: \['Z'\], missing: \['B'\]"):
        HomogeneousBatchSampler(pairs, batch_size=4, weights={"A": 1, "Z": 1})
    with pytest.raises(ValueError, match="sampler.weights.B must be a finite number"):
        HomogeneousBatchSampler(pairs, batch_size=4, weights={"A": 1, "B": -1})
    with pytest.raises(ValueError, match="subset 'B' has 10 rows, fewer than one sub-batch of 16"):
        HomogeneousBatchSampler(pairs + make_pairs({"C": 20})["C"], batch_size=16, weights={"A": 0, "B": 1, "C": 1})


def test_modality_batches_never_mix_image_and_text_queries():
    pairs = [p for s in make_pairs({"A": 30, "B": 21}, image_every=3).values() for p in s]
    batches = ModalityBatchSampler(pairs, batch_size=4, drop_last=False).epoch_batches(0)
    assert sorted(flat(batches)) == list(range(len(pairs)))
    assert all(len({pairs[i].query.image is None for i in b}) == 1 for b in batches)


# ------------------------------------------------------------------------------------------------ SaHa packing
def naive_best_fit_decreasing(sizes, capacity):
    bins = []
    for size in sorted(sizes, reverse=True):
        fits = [b for b in range(len(bins)) if sum(bins[b]) + size <= capacity]
        if fits:  # the fullest bin that fits; among equals the most recently opened one
            best = min(fits, key=lambda b: (capacity - sum(bins[b]), -b))
            bins[best].append(size)
        else:
            bins.append([size])
    return bins


def test_best_fit_decreasing_matches_a_naive_packing_and_ignores_order():
    rng = np.random.default_rng(0)
    for _ in range(30):
        capacity = int(rng.integers(4, 20))
        sizes = rng.integers(1, capacity + 1, size=int(rng.integers(1, 60))).tolist()
        bins = _best_fit_decreasing(sizes, capacity)
        assert sorted(chain.from_iterable(bins)) == sorted(sizes)
        assert all(sum(b) <= capacity for b in bins)
        assert sorted(map(sorted, bins)) == sorted(map(sorted, naive_best_fit_decreasing(sizes, capacity)))
        assert bins == _best_fit_decreasing(rng.permutation(sizes).tolist(), capacity)


@pytest.mark.parametrize("dedupe", [False, True])
def test_saha_clusters_stay_whole_and_contiguous_and_no_row_is_lost(saha_data, dedupe):
    pairs = saha_data[0]
    sampler = saha(saha_data, dedupe=dedupe, drop_last=False)
    expected = mapped_clusters(pairs, dedupe)
    clustered = {p for c, _ in expected for p in c}
    leftovers = [i for i in range(len(pairs)) if i not in clustered]
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert all(len(b) <= 8 for b in batches)
        for cluster, _ in expected:
            # Each cluster appears exactly once, as a contiguous run inside one batch.
            runs = [(b, i) for b, batch in enumerate(batches) for i in range(len(batch))
                    if batch[i : i + len(cluster)] == cluster]
            assert len(runs) == 1, (cluster, runs)
        used = Counter(flat(batches))
        # Nothing lost, nothing extra: exactly the rows of the clusters plus one of each leftover row.
        assert used == Counter([p for c, _ in expected for p in c] + leftovers)
        assert set(used) == set(range(len(pairs)))  # every training row; held-out rows are gone
        if dedupe:
            assert set(used.values()) == {1}
        else:
            twice = {row for row, n in used.items() if n > 1}
            in_phase2 = {p for c, is_phase2 in expected if is_phase2 for p in c}
            assert twice and twice <= in_phase2 and max(used.values()) == 2


def test_saha_counts_and_mixing(saha_data):
    pairs = saha_data[0]
    sampler = saha(saha_data)
    # Clustered rows that are held out: A row 5; B rows 9 (twice: phase 1 and phase 2). Rows A/30, B/29
    # are held out too but in no cluster.
    assert sampler.report["A"]["held_out_rows_dropped"] == 1
    assert sampler.report["B"]["held_out_rows_dropped"] == 2
    assert sampler.report["A"]["phase2_reuses"] == 4  # 0, 4, 7 and 11
    assert sampler.report["B"]["phase2_reuses"] == 4  # 0, 3, 7 and 1
    assert sampler.report["A"]["singletons"] == 40 - 23 - 1  # rows 23..39 but the held-out 30
    separate = saha(saha_data, mix_subsets=False)
    for batch in separate.epoch_batches(0):
        assert len({pairs[i].subset for i in batch}) == 1
    # The layout is fixed: every epoch has the same number of batches of the same sizes.
    sizes = {tuple(sorted(map(len, sampler.epoch_batches(e)))) for e in range(4)}
    assert len(sizes) == 1


def test_saha_drop_last_drops_only_the_partial_batch_of_leftovers(tmp_path):
    rows = make_pairs({"A": 23})
    write_clusters(tmp_path, rows, clusters={"A": [[0, 1, 2, 3], [4, 5, 6, 7]]}, phase1={"A": 2})
    pairs = rows["A"]
    keep = SaHaBatchSampler(pairs, batch_size=8, subset_info=info_of(rows), clusters_dir=str(tmp_path),
                            drop_last=False)
    drop = SaHaBatchSampler(pairs, batch_size=8, subset_info=info_of(rows), clusters_dir=str(tmp_path),
                            drop_last=True)
    assert sorted(map(len, keep.epoch_batches(0))) == [7, 8, 8]
    assert sorted(map(len, drop.epoch_batches(0))) == [8, 8]
    # 15 leftover rows fill one batch of 8; the other 7 miss the epoch, different ones every epoch.
    missing = {frozenset(set(range(23)) - set(flat(drop.epoch_batches(e)))) for e in range(5)}
    assert len(missing) > 1


# ------------------------------------------------------------------------------------------------ SaHa files
def test_saha_reads_from_the_default_mined_dir(tmp_path):
    rows = make_pairs({"A": 12})
    directory = mined_data_dir(tmp_path, SOURCE, "original")
    write_clusters(directory, rows, clusters={"A": [[0, 1, 2]]}, phase1={"A": 1})
    sampler = SaHaBatchSampler(rows["A"], batch_size=4, subset_info=info_of(rows), mined_root=str(tmp_path))
    assert sampler.clusters_dir == directory
    assert directory.parent.name == source_name(SOURCE) == "mmeb-train-" + directory.parent.name[-8:]
    assert source_name("TIGER-Lab/MMEB-train") == "TIGER-Lab__MMEB-train"


def test_missing_cluster_file_names_the_mine_command(saha_data, tmp_path):
    pairs, info, _ = saha_data
    with pytest.raises(DataError, match=r"no SaHa cluster file .*A\.saha\.json.*python mine\.py mining\.method=saha"):
        SaHaBatchSampler(pairs, batch_size=8, subset_info=info, clusters_dir=str(tmp_path / "empty"))


@pytest.mark.parametrize("change, message", [
    ({"subset": "Other"}, "mined for subset 'Other', not 'A'"),
    ({"split": "diverse_instruction"}, "split 'diverse_instruction' but the data uses split 'original'"),
    ({"num_rows": 41}, "mined from 41 rows but the subset has 40 rows"),
    ({"fingerprint": "0" * 32}, "row fingerprint 0+ differs"),
])
def test_cluster_file_that_does_not_match_the_data_is_refused(tmp_path, change, message):
    rows = make_pairs({"A": 40})
    write_clusters(tmp_path, rows, clusters={"A": [[0, 1]]}, phase1={"A": 1}, **change)
    with pytest.raises(DataError, match=message) as err:
        SaHaBatchSampler(rows["A"], batch_size=8, subset_info=info_of(rows), clusters_dir=str(tmp_path))
    assert "A.saha.json" in str(err.value) and "mining.force=true" in str(err.value)


def test_cluster_file_with_bad_rows_or_oversized_clusters_is_refused(tmp_path):
    rows = make_pairs({"A": 10})
    write_clusters(tmp_path, rows, clusters={"A": [[0, 1], [2, 10]]}, phase1={"A": 2})
    with pytest.raises(DataError, match=r"cluster 1 holds row id 10, outside \[0, 10\)"):
        SaHaBatchSampler(rows["A"], batch_size=8, subset_info=info_of(rows), clusters_dir=str(tmp_path))
    write_clusters(tmp_path, rows, clusters={"A": [[0, 1, 2, 3, 4]]}, phase1={"A": 1})
    with pytest.raises(ValueError, match=r"clusters of up to 5 rows .* data.batch_size=4"):
        SaHaBatchSampler(rows["A"], batch_size=4, subset_info=info_of(rows), clusters_dir=str(tmp_path))
    path = cluster_file_path(tmp_path, "A")
    data = json.loads(path.read_text())
    data["k"] = 99  # another k is fine: the file's clusters are used as they are
    path.write_text(json.dumps(data))
    SaHaBatchSampler(rows["A"], batch_size=8, subset_info=info_of(rows), clusters_dir=str(tmp_path))

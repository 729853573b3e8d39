"""The training mixture: each source's share of an epoch equals its weight (exact counts, fixed seed), caps are
respected, a resumed run continues the same draw, every sub-batch is single-source (also with modality grouping
and SaHa clusters), ranks split the epoch evenly, and samplers that would ignore the weights are refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from datamodules import MixtureDataModule
from datamodules.samplers import (
    HomogeneousBatchSampler,
    RandomBatchSampler,
    apportion,
    cluster_file_header,
    cluster_file_path,
    write_cluster_file,
)
from datamodules.schema import Item, TrainPair, rows_fingerprint

SIZES = {"img": 90, "doc": 130, "video": 100, "text": 84}
WEIGHTS = {"img": 1.0, "doc": 12.0, "video": 5.0, "text": 0.5}


def pairs_of(sizes: dict[str, int]) -> list[TrainPair]:
    def query(source: str, r: int) -> Item:
        if source == "video":
            return Item(f"<|video_1|> q{r}", video=f"/v/{r}")
        return Item(f"q {source} {r}", image=f"/i/{source}/{r}.png" if source in ("img", "doc") else None)

    return [TrainPair(s, r, query(s, r), Item(f"{s} answer {r}")) for s, n in sizes.items() for r in range(n)]


def info_of(pairs: list[TrainPair], weights=WEIGHTS) -> dict[str, dict]:
    by = {}
    for p in pairs:
        by.setdefault(p.subset, []).append(p)
    return {s: {"num_rows": len(v), "fingerprint": rows_fingerprint(v), "split": "train", "source": f"/src/{s}",
                "weight": weights[s]} for s, v in by.items()}


def sampler(pairs, rank=0, world=1, **kw):
    kw.setdefault("sub_batch_size", 4)
    return HomogeneousBatchSampler(pairs, batch_size=kw.pop("batch_size", 16), seed=3, rank=rank, world_size=world,
                                   subset_info=info_of(pairs), **kw)


def sub_batch_sources(pairs, batches, h):
    return [pairs[b[s]].subset for b in batches for s in range(0, len(b), h)
            if len({pairs[i].subset for i in b[s : s + h]}) == 1] if h else []


def test_each_source_share_equals_its_weight_exactly_and_every_sub_batch_is_single_source():
    pairs = pairs_of(SIZES)
    s = sampler(pairs)
    assert s.weights_from == "data"
    # Epoch length: the proportional epoch's 22+32+25+21 = 100 sub-batches (a whole number of device batches).
    total = 100
    expected = dict(zip(sorted(WEIGHTS), apportion(total, [WEIGHTS[k] for k in sorted(WEIGHTS)])))
    assert expected == {"doc": 65, "img": 5, "text": 3, "video": 27}  # quotas 64.9, 5.4, 2.7, 27.0
    for source, n in expected.items():  # each share within one sub-batch of its weight's share
        assert abs(n / total - WEIGHTS[source] / sum(WEIGHTS.values())) < 1 / total
    for epoch in range(3):
        batches = s.epoch_batches(epoch)
        assert len(batches) == total // 4 and all(len(b) == 16 for b in batches)
        sources = sub_batch_sources(pairs, batches, 4)
        assert len(sources) == total  # every sub-batch single-source
        assert Counter(sources) == expected  # the exact count every epoch, the same seed
    assert s.epoch_batches(1) == sampler(pairs).epoch_batches(1)  # fixed seed: the same draw
    assert s.epoch_batches(1) != s.epoch_batches(2)  # reshuffled every epoch
    # Rows: an up-weighted source cycles through its rows (32 sub-batches a cycle), none twice within a cycle.
    doc_stream = [b[k : k + 4] for b in s.epoch_batches(0) for k in range(0, 16, 4) if pairs[b[k]].subset == "doc"]
    first_cycle = [i for sub in doc_stream[:32] for i in sub]
    assert len(doc_stream) == 65 and len(set(first_cycle)) == 128


def test_per_row_draws_follow_the_weights_within_sampling_error():
    # sub_batch_size=1: every row's source is drawn by weight (the reference's instance-level interleaving).
    pairs = pairs_of({"a": 300, "b": 300})
    s = HomogeneousBatchSampler(pairs, batch_size=8, seed=0, sub_batch_size=1,
                                subset_info=info_of(pairs, {"a": 3.0, "b": 1.0}))
    counts = Counter(pairs[i].subset for b in s.epoch_batches(0) for i in b)
    assert counts == {"a": 450, "b": 150}  # exact: 600 rows, 3:1
    firsts = Counter(pairs[s.epoch_batches(e)[0][0]].subset for e in range(300))  # any position: ~3:1 by chance
    assert abs(firsts["a"] / 300 - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 300)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_single_source_batches_and_the_same_step_count(world):
    pairs = pairs_of(SIZES)
    ranks = [sampler(pairs, r, world, batch_size=8) for r in range(world)]
    per_step = 2 * world  # sub-batches per global batch
    assert sum(ranks[0].counts) % per_step == 0  # whole global batches: nothing drawn is dropped
    for epoch in range(4):  # across cycle boundaries of every source
        local = [list(r.local_batches(epoch)) for r in ranks]
        assert len({len(batch_list) for batch_list in local}) == 1  # the same step count on every rank
        assert sum(len(x) for x in local) == sum(ranks[0].counts) // 2
        for step in range(len(local[0])):  # a global batch never holds a row twice (sources ≥ 4 windows)
            rows = [local[r][step] for r in range(world)]
            assert sum(len(x) for x in rows) == len(set().union(*map(set, rows)))
        assert Counter(sub_batch_sources(pairs, [b for x in local for b in x], 4)) == Counter(
            sub_batch_sources(pairs, ranks[0].epoch_batches(epoch), 4))


def test_resume_mid_epoch_continues_the_same_draw():
    pairs = pairs_of(SIZES)
    for world in (1, 2):
        full = [list(sampler(pairs, r, world)) for r in range(world)]
        for consumed in (0, 3, len(full[0]) - 1):
            for r in range(world):
                resumed = sampler(pairs, r, world)
                resumed.resume(0, consumed)
                assert list(resumed) == full[r][consumed:]
                resumed.set_epoch(1)
                uninterrupted = sampler(pairs, r, world)
                uninterrupted.set_epoch(1)
                assert list(resumed) == list(uninterrupted)  # the next epoch as if never stopped


def test_modality_batches_compose_with_sub_batches():
    pairs = pairs_of(SIZES)
    s = sampler(pairs, modality_batches=True)
    assert s.modality_of == {"doc": "image", "img": "image", "text": "text", "video": "video"}
    batches = s.epoch_batches(0)
    for b in batches:
        assert len({s.modality_of[pairs[i].subset] for i in b}) == 1  # one modality per device batch
    assert len(sub_batch_sources(pairs, batches, 4)) == 4 * len(batches)
    mixed = pairs_of({"x": 8}) + [TrainPair("x", 8 + r, Item(f"t {r}", image="/i.png"), Item("a")) for r in range(8)]
    with pytest.raises(ValueError, match="subset 'x' mixes query modalities"):
        HomogeneousBatchSampler(mixed, batch_size=4, modality_batches=True)


def test_saha_clusters_stay_whole_inside_single_source_sub_batches(tmp_path):
    pairs = pairs_of({"img": 40, "doc": 24})
    info = info_of(pairs)
    clusters = {"img": [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11]], "doc": [[0, 1, 2, 3], [4, 5, 6]]}
    for subset, cl in clusters.items():
        header = cluster_file_header(subset, info[subset], k=3, pool_mult=3, classification=False, index="flat",
                                     embedder={}, prompt=None)
        write_cluster_file(cluster_file_path(tmp_path, subset), header, cl, len(cl), {})
    s = sampler(pairs, batch_size=16, sub_batch_size=8, clusters_dir=str(tmp_path))
    for epoch in range(3):
        batches = s.epoch_batches(epoch)
        sub = [b[k : k + 8] for b in batches for k in range(0, 16, 8)]
        position = {(p.subset, p.row): i for i, p in enumerate(pairs)}
        for subset, cl in clusters.items():
            for c in cl:
                members = {position[(subset, r)] for r in c}
                holding = [x for x in sub if members & set(x)]
                for x in holding:
                    assert members <= set(x)  # a cluster never leaves its sub-batch
        assert all(len({pairs[i].subset for i in x}) == 1 for x in sub)
        assert Counter(pairs[x[0]].subset for x in sub) == dict(zip(s.group_names, s.counts))
    with pytest.raises(ValueError, match=r"clusters of up to 4 rows .* sampler.sub_batch_size=2"):
        sampler(pairs, batch_size=16, sub_batch_size=2, clusters_dir=str(tmp_path))


# ------------------------------------------------------------------------------------- the DataModule
@pytest.fixture
def snapshot(tmp_path, write_repo) -> dict:
    """Two MMEB-train subsets (20 and 12 rows) and a LLaVA-Hound QA file (10 rows, frames for 9)."""
    rows = {n: [{"qry": f"{n} query {i}", "qry_image_path": "", "pos_text": f"{n} answer {i}", "pos_image_path": "",
                 "neg_text": f"{n} wrong {i}", "neg_image_path": ""} for i in range(k)] for n, k in (("A", 20), ("B", 12))}
    repo = write_repo(tmp_path / "MMEB-train", {n: {"original": pa.Table.from_pylist(r)} for n, r in rows.items()})
    frames = tmp_path / "frames"
    lines = []
    for i in range(10):
        if i != 7:
            (frames / f"v{i}").mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(frames / f"v{i}" / "0.jpg")
        lines.append(json.dumps({"id": i, "video": f"v{i}", "conversations": [
            {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": f"event {i}"}]}))
    (tmp_path / "qa.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "A": {"parser": "mmeb", "source": str(repo), "subset": "A", "weight": 2, "max_samples": 16},
        "B": {"parser": "mmeb", "source": str(repo), "subset": "B", "weight": 1, "negatives": False},
        "qa": {"parser": "llavahound_qa", "source": str(tmp_path / "qa.jsonl"), "media_root": str(frames),
               "weight": 1},
    }


def _homogeneous(**kw):
    def factory(**args):
        return HomogeneousBatchSampler(sub_batch_size=4, **{**args, **kw})
    return factory


def test_datamodule_reads_caps_skips_and_hands_the_weights_to_the_sampler(snapshot):
    dm = MixtureDataModule(snapshot, batch_size=8, sampler=_homogeneous(), val_per_subset=2)
    dm.setup("fit")
    assert {s: i["num_rows"] for s, i in dm.subset_info.items()} == {"A": 16, "B": 12, "qa": 9}  # cap; skipped frames
    assert dm.skipped == {"A": {}, "B": {}, "qa": {"no_frames": 1}}
    assert Counter(p.subset for p in dm.train_pairs) == {"A": 14, "B": 10, "qa": 7}
    assert max(p.row for p in dm.train_pairs + dm.val_pairs if p.subset == "A") < 16
    assert all(not p.negatives for p in dm.train_pairs if p.subset == "B")
    assert all(p.negatives for p in dm.train_pairs if p.subset == "A")
    s = dm.build_train_sampler()
    assert s.weights_from == "data" and dict(zip(s.group_names, s.counts)) == {"A": 3, "B": 2, "qa": 1}  # 6 × 2:1:1, tie to the first
    assert "qa: 1 rows skipped (no_frames 1)" in dm.skip_summary()


def test_datamodule_resumes_mid_epoch_through_its_loader_state(snapshot):
    def loader():
        dm = MixtureDataModule(snapshot, batch_size=4, sampler=_homogeneous())
        dm.setup("fit")
        dm.set_input_builder(lambda texts, images, side: {"n": len(texts)})
        return dm.train_dataloader()

    full = [b["ids"] for b in loader()]
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "consumed": 2, "generator": None})
    assert [b["ids"] for b in resumed] == full[2:]


def test_samplers_that_ignore_the_weights_are_refused(snapshot):
    dm = MixtureDataModule(snapshot, batch_size=8, sampler=RandomBatchSampler)
    dm.setup("fit")
    with pytest.raises(ValueError, match="does not apply them: use sampler=homogeneous"):
        dm.build_train_sampler()
    dm = MixtureDataModule(snapshot, batch_size=8, sampler=_homogeneous(weights={"A": 1, "B": 1, "qa": 1}))
    dm.setup("fit")
    with pytest.raises(ValueError, match="weights are defined twice"):
        dm.build_train_sampler()
    dm = MixtureDataModule(snapshot, batch_size=8, sampler=_homogeneous())
    dm.setup("fit")
    dm.set_input_builder(lambda *a: {}, chunk_size=3)
    with pytest.raises(ValueError, match="chunk_size=3 must divide sampler.sub_batch_size=4"):
        dm.build_train_sampler()


def test_the_mixture_configs_compose(compose_cfg):
    cfg = compose_cfg("train", ["data=mixture"])
    assert cfg.sampler._target_.endswith("HomogeneousBatchSampler")
    assert cfg.data._target_ == "datamodules.MixtureDataModule" and len(cfg.data.sources) == 7
    cfg = compose_cfg("train", ["experiment=vlm2vec_v2_qwen2vl_2b"])
    sources = cfg.data.sources
    assert len(sources) == 25 and cfg.sampler.sub_batch_size == 64 and cfg.data.batch_size == 128
    assert sources.colpali_train_set.weight == 10 and sources["visrag-indomain"].weight == 12
    assert Path(sources.ImageNet_1K.media_root).name == "image"

"""Mining with a model: `mine.py` end to end on the bundled data (SaHa cluster files, then training with
`sampler=saha` and the in-training refresh; mined-negative datasets), and the miner's candidate rules on
synthetic embeddings against a naive computation."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

import mining.negatives as mined_negatives
from mining import job as mine
from training import job as train

ROOT = Path(__file__).resolve().parents[2]
from datamodules import MMEBDataModule  # noqa: E402
from datamodules.mmeb import read_train_pairs  # noqa: E402
from datamodules.samplers import cluster_file_path, read_cluster_file  # noqa: E402
from datamodules.schema import Item, TrainPair, rows_fingerprint  # noqa: E402
from mining.embed import SubsetEmbeddings, unique_positives  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "helpers"))
from maxsim import naive_maxsim, tokens  # noqa: E402

SUBSETS = "[ShapeCls,ShapeT2I]"
ROWS = 16  # rows per subset: 12 training rows + 4 held out (data.val_per_subset=4 in the tiny overrides)


def mine_overrides(tiny_cfg, mined_root, extra=()):
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    return [*bundled, f"data.subsets={SUBSETS}", f"data.max_per_subset={ROWS}", "data.val_per_subset=4",
            f"mining.mined_root={mined_root}", "mining.k=3", "mining.progress=false", "device=cpu", *extra]


def test_mine_saha_then_train_with_saha_and_refresh(compose_cfg, tiny_cfg, bundled_root, tmp_path, caplog):
    mined_root = tmp_path / "mined"
    result = mine.run(compose_cfg("mine", mine_overrides(tiny_cfg, mined_root)))
    assert [row["status"] for row in result["summary"]] == ["mined", "mined"]
    out_dir = result["out_dir"]
    assert out_dir.parent.parent == mined_root and out_dir.name == "original"
    data = MMEBDataModule(source=str(bundled_root / "train"), subsets=["ShapeCls", "ShapeT2I"], max_per_subset=ROWS,
                          image_root=str(bundled_root / "train"))
    data.setup()
    for subset in ("ShapeCls", "ShapeT2I"):
        path = cluster_file_path(out_dir, subset)
        clusters = read_cluster_file(path, subset, data.subset_info[subset])  # matches the data as training reads it
        assert clusters["k"] == 3 and clusters["prompt"]["name"] == "hierarchical"
        assert clusters["classification"] == (subset == "ShapeCls")
        assert clusters["embedder"]["kind"] == "model" and clusters["stats"]["num_queries"] == ROWS
        assert all(2 <= len(c) <= 4 for c in clusters["clusters"])
    mtime = cluster_file_path(out_dir, "ShapeCls").stat().st_mtime_ns

    # Mined already: skipped, file untouched. Forced: mined again.
    again = mine.run(compose_cfg("mine", mine_overrides(tiny_cfg, mined_root)))
    assert [row["status"] for row in again["summary"]] == ["skipped (up to date)"] * 2
    assert cluster_file_path(out_dir, "ShapeCls").stat().st_mtime_ns == mtime
    mtime = cluster_file_path(out_dir, "ShapeT2I").stat().st_mtime_ns
    forced = mine.run(compose_cfg("mine", mine_overrides(tiny_cfg, mined_root, ["mining.force=true",
                                                                                "data.subsets=[ShapeT2I]"])))
    assert [row["status"] for row in forced["summary"]] == ["mined"]
    assert cluster_file_path(out_dir, "ShapeT2I").stat().st_mtime_ns != mtime

    # Train two one-batch epochs with the SaHa sampler; the refresh re-mines with the model between them.
    overrides = tiny_cfg(["sampler=saha", f"sampler.mined_root={mined_root}", f"data.subsets={SUBSETS}",
                          f"data.max_per_subset={ROWS}", "callbacks=saha_refresh", "callbacks.saha_refresh.k=3",
                          "trainer.max_epochs=2", "trainer.max_steps=-1", "+trainer.limit_train_batches=1",
                          "trainer.limit_val_batches=0",
                          "~callbacks.similarity", "evaluate_before=false", "evaluate_after=false",
                          "save_embedder=false"])
    cfg = compose_cfg("train", overrides)
    with caplog.at_level(logging.INFO, logger="datamodules.samplers"):
        train.run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    refreshed = run_dir / "saha_refresh" / "epoch0001"
    header = json.loads(cluster_file_path(refreshed, "ShapeT2I").read_text())
    assert header["embedder"]["kind"] == "training" and header["stats"]["num_queries"] == ROWS
    # Held-out rows are not mined in training: only the 12 training rows of a subset can be in clusters.
    assert header["stats"]["queries_covered"] <= ROWS - 4
    built_from = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SaHa sampler (")]
    assert str(out_dir) in built_from[0] and str(refreshed) in built_from[-1]
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert metrics.count("train/loss") == 1 and len(metrics.splitlines()) >= 3  # header + one row per step


def test_mine_negatives_writes_a_dataset_training_reads(compose_cfg, tiny_cfg, bundled_root, tmp_path):
    mined_root = tmp_path / "mined"
    overrides = mine_overrides(tiny_cfg, mined_root, ["data.subsets=[ShapeT2I]", "mining.method=negatives",
                                                      "mining.num_negatives=2", "mining.select=simans",
                                                      # A random-init model scores everything alike: no
                                                      # relative cut, or nothing would survive it.
                                                      "mining.pool=10", "mining.relative=null"])
    result = mine.run(compose_cfg("mine", overrides))
    out_dir = result["out_dir"]
    assert out_dir.name == "negatives" and (out_dir / "mined.json").is_file()
    original = read_train_pairs(str(bundled_root / "train"), "ShapeT2I", "original", ROWS)
    mined = read_train_pairs(str(out_dir), "ShapeT2I", "original")
    assert rows_fingerprint(mined) == rows_fingerprint(original) and len(mined) == ROWS
    positives = {p.positive for p in original}
    without = 0
    for pair in mined:
        assert len(pair.negatives) <= 2 and len(set(pair.negatives)) == len(pair.negatives)
        assert pair.positive not in pair.negatives and set(pair.negatives) <= positives
        without += not pair.negatives
    assert result["summary"][0]["no_negative"] == without
    # Training reads it with the original image root, negatives included.
    data = MMEBDataModule(source=str(out_dir), subsets=["ShapeT2I"], image_root=str(bundled_root / "train"),
                          max_negatives_per_pair=2)
    data.setup()
    assert sum(len(p.negatives) for p in data.train_pairs) > 0
    again = mine.run(compose_cfg("mine", overrides))
    assert again["summary"][0]["status"] == "skipped (up to date)"


def synthetic_subset(num_rows=40, num_labels=12, dim=8, seed=0):
    """Rows sharing positives (like a classification subset) and embeddings where a query sits near its positive."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, size=num_rows)
    pairs = [TrainPair("S", r, Item(f"query {r}"), Item(f"label {labels[r]}")) for r in range(num_rows)]
    items, _, positive_of = unique_positives(pairs)
    cand = rng.normal(size=(len(items), dim))
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    query = cand[positive_of] + 0.8 * rng.normal(size=(num_rows, dim))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    emb = SubsetEmbeddings(query.astype(np.float32), cand.astype(np.float32), items, positive_of)
    return pairs, emb


@pytest.mark.parametrize("select", ["top", "random", "simans"])
def test_mined_negatives_exclude_the_positive_and_obey_the_filter(monkeypatch, select):
    pairs, emb = synthetic_subset()
    monkeypatch.setattr(mined_negatives, "embed_subset", lambda *args, **kwargs: emb)
    pool, relative, num = 6, 0.95, 2
    negatives, stats = mined_negatives.choose_negatives(None, pairs, None, pool=pool, num_negatives=num,
                                                        relative=relative, select=select, rng=np.random.default_rng(0))
    scores = emb.query.astype(np.float64) @ emb.candidates.astype(np.float64).T
    index = {item: i for i, item in enumerate(emb.candidate_items)}
    for q, (pair, negs) in enumerate(zip(pairs, negatives)):
        s_pos = scores[q, emb.positive_of_query[q]]
        # Naive: rank every candidate but the own positive, keep the top `pool`, then the filter.
        ranked = sorted((c for c in range(len(emb.candidate_items)) if c != emb.positive_of_query[q]),
                        key=lambda c: -scores[q, c])[:pool]
        allowed = [c for c in ranked if scores[q, c] < relative * s_pos]
        got = [index[n] for n in negs]
        assert pair.positive not in negs and len(got) == min(num, len(allowed))
        assert set(got) <= set(allowed)
        if select == "top":
            assert got == allowed[:num]
    assert stats["no_negative"] == sum(not n for n in negatives)


def test_ivf_retrieval_matches_exact_when_every_list_is_probed():
    rng = np.random.default_rng(3)
    cand = rng.normal(size=(800, 16)).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    positive_of = rng.integers(0, len(cand), size=300)
    query = cand[positive_of] + 0.5 * rng.normal(size=(300, 16)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    exact = mined_negatives.retrieve(query, cand, positive_of, pool=10)
    # 800 candidates -> nlist = min(4·sqrt(800), 800 // 39) = 20 lists; probing all of them is exhaustive.
    full = mined_negatives.retrieve(query, cand, positive_of, pool=10, index="ivf", nprobe=20)
    for a, b in zip(exact[1:], full[1:]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert np.array_equal(exact[0][exact[2]], full[0][full[2]])
    # One list per query: approximate, but still never the own positive, and valid ids are real candidates.
    ids, scores, valid = mined_negatives.retrieve(query, cand, positive_of, pool=10, index="ivf", nprobe=1)
    assert not (ids == positive_of[:, None])[valid].any() and (ids[valid] >= 0).all()
    assert (valid.sum(axis=1) <= 10).all() and 0 < valid.sum() < exact[2].sum() + 1
    recall = np.mean([len(set(ids[q][valid[q]]) & set(exact[0][q][exact[2][q]])) / 10 for q in range(300)])
    assert 0.2 < recall <= 1.0
    with pytest.raises(ValueError, match="mining.index must be"):
        mined_negatives.retrieve(query, cand, positive_of, pool=10, index="hnsw")


# slow (~20-40 s, two gloo ranks); the refresh itself is in the fast suite (test_mine_saha_then_train_with_saha_and_refresh)
@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu"])
def test_saha_refresh_under_ddp_shards_the_encoding(compose_cfg, tiny_cfg, tmp_path, trainer):
    """Two gloo processes: every rank encodes a shard at the epoch boundary, rank 0 clusters and writes,
    and the second epoch's sampler on both ranks reads the refreshed clusters. Under FSDP too (the sharded
    embedder encodes; the ranks run as many batches)."""
    import subprocess
    import sys

    mined_root = tmp_path / "mined"
    mine.run(compose_cfg("mine", mine_overrides(tiny_cfg, mined_root)))
    run_dir = tmp_path / "ddp_run"
    overrides = tiny_cfg([f"trainer={trainer}", "trainer.devices=2", "sampler=saha", f"sampler.mined_root={mined_root}",
                          f"data.subsets={SUBSETS}", f"data.max_per_subset={ROWS}", "callbacks=saha_refresh",
                          "callbacks.saha_refresh.k=3", "trainer.max_epochs=2", "trainer.max_steps=-1",
                          "+trainer.limit_train_batches=1", "trainer.limit_val_batches=0", "~callbacks.similarity",
                          "evaluate_before=false", "evaluate_after=false", "save_embedder=false",
                          f"hydra.run.dir={run_dir}"])
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    refreshed = run_dir / "saha_refresh" / "epoch0001"
    for subset in ("ShapeCls", "ShapeT2I"):
        header = json.loads(cluster_file_path(refreshed, subset).read_text())
        assert header["embedder"]["kind"] == "training" and header["stats"]["num_queries"] == ROWS
        assert 0 < header["stats"]["queries_covered"] <= ROWS - 4
    for log_file in ("train.log", "train_ddp_process_1.log"):  # rank 0's and rank 1's second-epoch samplers
        assert f"SaHa sampler ({refreshed}," in (run_dir / log_file).read_text(), log_file


def synthetic_multi_vector_subset(num_rows=24, num_labels=10, dim=6, seed=1):
    """A multi-vector subset: token vectors of varying length (zero rows = no token) whose pooled proxies are what
    `embed_subset` would return beside them."""
    import torch

    from embedders.multi_vector import pooled_proxy

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (num_rows,), generator=gen).tolist()
    pairs = [TrainPair("S", r, Item(f"query {r}"), Item(f"label {labels[r]}")) for r in range(num_rows)]
    items, _, positive_of = unique_positives(pairs)
    cand = tokens(len(items), 5, dim, seed + 1)
    query = tokens(num_rows, 4, dim, seed + 2) + 0.7 * cand[torch.from_numpy(positive_of), :4]
    query = torch.nn.functional.normalize(query, dim=-1) * (query.norm(dim=-1, keepdim=True) > 0)
    emb = SubsetEmbeddings(pooled_proxy(query).numpy(), pooled_proxy(cand).numpy(), items, positive_of, query, cand)
    return pairs, emb


@pytest.mark.parametrize("pool,mean", [(100, False), (100, True), (4, False)])
def test_multi_vector_negatives_are_rescored_by_exact_maxsim(monkeypatch, pool, mean):
    """Negative mining with a multi-vector model: the proxy retrieves the pool, exact MaxSim (or MeanMaxSim) ranks
    and filters it. With a pool of every candidate the result is exact MaxSim mining; with a small pool, the
    negatives are the MaxSim-best of the proxy's top `pool`."""
    import types

    pairs, emb = synthetic_multi_vector_subset()
    monkeypatch.setattr(mined_negatives, "embed_subset", lambda *args, **kwargs: emb)
    embedder = types.SimpleNamespace(head=types.SimpleNamespace(similarity="meanmaxsim" if mean else "maxsim"))
    relative, num = 0.9, 2
    negatives, stats = mined_negatives.choose_negatives(embedder, pairs, None, pool=pool, num_negatives=num,
                                                        relative=relative, select="top",
                                                        rng=np.random.default_rng(0))
    assert stats["scores"] == "maxsim"
    index = {item: i for i, item in enumerate(emb.candidate_items)}
    proxy = emb.query.astype(np.float64) @ emb.candidates.astype(np.float64).T
    checked = 0
    for q, negs in enumerate(negatives):
        own = emb.positive_of_query[q]
        exact = {c: naive_maxsim(emb.query_tokens[q], emb.candidate_tokens[c], mean)
                 for c in range(len(emb.candidate_items))}
        s_pos = exact[own]
        others = sorted((c for c in exact if c != own), key=lambda c: -proxy[q, c])[:pool]
        allowed = sorted((c for c in others if exact[c] <= s_pos - abs(s_pos) * (1 - relative)),
                         key=lambda c: -exact[c])
        got = [index[n] for n in negs]
        assert len(got) == min(num, len(allowed))
        assert [round(exact[c], 9) for c in got] == [round(exact[c], 9) for c in allowed[:num]]
        checked += bool(got)
    assert checked >= len(pairs) // 2   # the filter leaves most queries something to check
    assert stats["mean_positive_score"] == pytest.approx(
        np.mean([naive_maxsim(emb.query_tokens[q], emb.candidate_tokens[emb.positive_of_query[q]], mean)
                 for q in range(len(pairs))]), abs=1e-6)


def test_multi_vector_negatives_without_rescoring_use_the_proxy(monkeypatch):
    import types

    pairs, emb = synthetic_multi_vector_subset()
    monkeypatch.setattr(mined_negatives, "embed_subset",
                        lambda *args, keep_tokens=False, **kwargs: emb if keep_tokens else
                        SubsetEmbeddings(emb.query, emb.candidates, emb.candidate_items, emb.positive_of_query))
    embedder = types.SimpleNamespace(head=types.SimpleNamespace(similarity="maxsim"))
    negatives, stats = mined_negatives.choose_negatives(embedder, pairs, None, pool=100, num_negatives=1,
                                                        relative=None, select="top", rng=np.random.default_rng(0),
                                                        rescore=False)
    assert "scores" not in stats
    proxy = emb.query.astype(np.float64) @ emb.candidates.astype(np.float64).T
    index = {item: i for i, item in enumerate(emb.candidate_items)}
    for q, negs in enumerate(negatives):
        proxy[q, emb.positive_of_query[q]] = -np.inf
        assert index[negs[0]] == int(np.argmax(proxy[q]))


def test_mine_negatives_with_a_multi_vector_model(compose_cfg, tiny_cfg, bundled_root, tmp_path):
    """`mine.py mining.method=negatives` with `model.pooling=multi_vector`: the manifest records the re-scoring, the
    statistics say MaxSim, and with every candidate in the pool the chosen negative is each row's exact MaxSim
    best (naive loop over the same model's token vectors)."""
    import torch

    from embedders.loading import load_embedder
    from evaluation.encoding import encode_unique

    overrides = mine_overrides(tiny_cfg, tmp_path / "mined", ["data.subsets=[ShapeT2I]", "mining.method=negatives",
                                                             "mining.pool=1000", "mining.relative=null",
                                                             "model.pooling=multi_vector", "model.multi_vector.dim=16"])
    cfg = compose_cfg("mine", overrides)
    result = mine.run(cfg)
    manifest = json.loads((result["out_dir"] / "mined.json").read_text())
    assert manifest["settings"]["rescore"] is True
    assert manifest["subsets"]["ShapeT2I"]["stats"]["scores"] == "maxsim"
    mined = read_train_pairs(str(result["out_dir"]), "ShapeT2I", "original")
    # The same model (same seed, same random init) encodes the rows again; MaxSim by a naive loop.
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    data = MMEBDataModule(source=str(bundled_root / "train"), subsets=["ShapeT2I"],
                          image_root=str(bundled_root / "train"), max_per_subset=ROWS, val_per_subset=4)
    data.setup("fit")
    embedder = load_embedder(cfg).eval()
    pairs = sorted(data.train_pairs + data.val_pairs, key=lambda p: p.row)
    items, holders, positive_of = unique_positives(pairs)
    loader = data.image_loader
    with torch.no_grad():
        q = encode_unique(embedder, [(p.query, p.subset, p.row, "qry_image_path", loader) for p in pairs], "query", 8)
        c = encode_unique(embedder, [(p.positive, p.subset, p.row, "pos_image_path", loader) for p in holders],
                          "target", 8)
    assert q.ndim == 3
    by_row = {p.row: p for p in mined}
    index = {item: j for j, item in enumerate(items)}
    spreads = []
    for i, pair in enumerate(pairs):
        exact = [naive_maxsim(q[i], c[j]) if j != positive_of[i] else -np.inf for j in range(len(items))]
        (chosen,) = by_row[pair.row].negatives
        # the chosen negative's MaxSim is the row's best (compared by score: a random-init model nearly ties)
        assert exact[index[chosen]] == pytest.approx(max(exact), abs=1e-4)
        finite = sorted(x for x in exact if np.isfinite(x))
        spreads.append(finite[-1] - finite[len(finite) // 2])
    print("best − median MaxSim per row:", [round(x, 3) for x in spreads])
    assert min(spreads) > 1e-3   # the scores do separate the candidates: a wrong choice would fail the check

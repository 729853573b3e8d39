"""The pinned docstrings data (datamodules/builders/docstrings.py, pairs_from=snapshot): every machine builds the same rows
from the shipped pairs, whatever library versions it has; the fingerprints stated in the docs are the ones built;
a changed snapshot is refused; the larger eval's BM25 candidates are the BM25-hardest non-duplicate bodies."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datamodules.bm25 import BM25
from datamodules.builders import docstrings as ds
from datamodules.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
#: The real-text ablation's eval (conf/experiment/ablation_real.yaml).
ABLATION = {"eval_per_library": 300, "eval_candidates": 1000, "eval_negatives": "bm25"}


def test_the_default_build_from_the_snapshot_has_the_stated_fingerprint(tmp_path, monkeypatch):
    """What a fresh clone builds (`data=docstrings`), even where other library versions are installed."""
    monkeypatch.setattr(ds, "library_version", lambda lib: "0.0.0-not-what-the-snapshot-has")
    root = ds.ensure_docstrings(tmp_path / "d")
    manifest = json.loads((root / ds.MANIFEST).read_text())
    assert manifest["fingerprint"] == ds.SNAPSHOT_FINGERPRINT
    assert manifest["libraries"]["torch"]["version"] == ds.load_snapshot()[0]["libraries"]["torch"]["version"]
    assert ds.ensure_docstrings(root, fingerprint=ds.SNAPSHOT_FINGERPRINT) == root   # reused, no rebuild


def test_the_readme_and_the_evidence_page_state_the_built_fingerprints():
    """The fingerprints a reader compares their build with are the ones the tests build (the default's just above,
    the ablation's in the slow test below)."""
    for doc in ("README.md", "docs/evidence.md"):
        text = (ROOT / doc).read_text()
        assert f"`{ds.SNAPSHOT_FINGERPRINT}`" in text and f"`{ds.ABLATION_FINGERPRINT}`" in text, doc


@pytest.mark.slow
def test_the_ablation_eval_has_the_stated_fingerprint(tmp_path):
    """The real-text ablation's data (~15 s to build: BM25 candidates for 2,100 rows); its experiment config pins
    this fingerprint, so every ablation run refuses other rows."""
    root = ds.ensure_docstrings(tmp_path / "d", **ABLATION)
    manifest = json.loads((root / ds.MANIFEST).read_text())
    assert manifest["fingerprint"] == ds.ABLATION_FINGERPRINT
    assert sum(manifest["eval_rows"].values()) >= 2000
    assert set(map(tuple, manifest["eval_candidates"].values())) == {(1000,)}
    experiment = (ROOT / "conf" / "experiment" / "ablation_real.yaml").read_text()
    assert f"fingerprint: {ds.ABLATION_FINGERPRINT}" in experiment
    check_bm25_rows(root, [*ds.TRAIN_LIBRARIES, *ds.OOD_LIBRARIES], 1000)


def check_bm25_rows(root: Path, libraries: list[str], candidates: int) -> None:
    """Each row: its body first, then the BM25-hardest bodies of the whole eval pool (its own body and its
    near-duplicates skipped), in BM25 order, against a fresh index."""
    rows = {lib: pq.read_table(root / "eval" / lib / "test-00000-of-00001.parquet").to_pylist() for lib in libraries}
    pool = [r["tgt_text"][0] for lib in libraries for r in rows[lib]]
    index = BM25(pool)
    for lib in libraries:
        for row in rows[lib][:3]:
            own = pool.index(row["tgt_text"][0])
            scores = index.scores(row["qry_text"])
            negatives = row["tgt_text"][1:]
            assert row["tgt_text"][0] not in negatives and len(set(negatives)) == candidates - 1
            got = [scores[pool.index(t)] for t in negatives]
            assert got == sorted(got, reverse=True)
            taken = set(negatives)
            for i in range(len(pool)):   # a body left out outscoring the last one taken is a near-duplicate
                if i != own and pool[i] not in taken and scores[i] > got[-1]:
                    assert ds.near_duplicates(ds.DocPair(lib, "a", "", pool[own]), ds.DocPair(lib, "b", "", pool[i]),
                                              ds.shingles(pool[own]), ds.shingles(pool[i]))


def test_bm25_candidates_on_a_small_installed_build(tmp_path):
    small = {"train_libraries": ["jinja2", "fsspec"], "ood_libraries": ["tqdm"], "eval_per_library": 8,
             "train_per_library": 40, "eval_candidates": 12, "pairs_from": "installed", "eval_negatives": "bm25"}
    root = ds.ensure_docstrings(tmp_path / "d", **small)
    manifest = json.loads((root / ds.MANIFEST).read_text())
    assert manifest["settings"]["eval_negatives"] == "bm25"
    assert set(map(tuple, manifest["eval_candidates"].values())) == {(12,)}
    check_bm25_rows(root, ["jinja2", "fsspec", "tqdm"], 12)
    # the random in-library candidates of the default give other rows (and another fingerprint)
    other = ds.ensure_docstrings(tmp_path / "e", **{**small, "eval_negatives": "library"})
    assert json.loads((other / ds.MANIFEST).read_text())["fingerprint"] != manifest["fingerprint"]


def test_a_changed_snapshot_is_refused(tmp_path):
    meta, pairs = ds.load_snapshot()
    data = gzip.decompress(ds.snapshot_path().read_bytes()).replace(b"Return", b"Yield", 1)
    changed = tmp_path / "snap.jsonl.gz"
    changed.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="restore the file from git"):
        ds.load_snapshot(changed)
    assert meta["pairs"] == len(pairs) > 9000


def test_write_snapshot_round_trips_an_installed_extraction(tmp_path):
    path = tmp_path / "snap.jsonl.gz"
    digest = ds.write_snapshot(path, ["jinja2", "tqdm"])
    assert ds.write_snapshot(tmp_path / "again.jsonl.gz", ["jinja2", "tqdm"]) == digest
    assert (tmp_path / "again.jsonl.gz").read_bytes() == path.read_bytes()   # no timestamp in the gzip
    meta, pairs = ds.load_snapshot(path, sha256=digest)
    expected = [p for lib in ("jinja2", "tqdm") for p in ds.extract_library(lib, 300)[0]]
    assert pairs == expected and meta["libraries"]["tqdm"]["version"] == ds.library_version("tqdm")


def test_the_snapshot_holds_what_the_installed_sources_give_at_its_versions():
    """Where a library is installed at the snapshot's version, its extraction equals the snapshot's pairs."""
    meta, pairs = ds.load_snapshot()
    lib = "networkx"
    if ds.library_version(lib) != meta["libraries"][lib]["version"]:
        pytest.skip(f"{lib} {ds.library_version(lib)} installed, the snapshot has {meta['libraries'][lib]['version']}")
    extracted, info = ds.extract_library(lib, meta["max_body_chars"])
    assert extracted == [p for p in pairs if p.library == lib]
    assert info["source_sha256"] == meta["libraries"][lib]["source_sha256"]


def test_snapshot_limits_are_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="pairs_from=installed"):
        ds.ensure_docstrings(tmp_path / "x", train_libraries=["jinja2"], ood_libraries=["tqdm"])
    with pytest.raises(DataError, match="max_body_chars=300"):
        ds.ensure_docstrings(tmp_path / "y", max_body_chars=200)
    with pytest.raises(ValueError, match="pairs_from"):
        ds.ensure_docstrings(tmp_path / "z", pairs_from="hub")

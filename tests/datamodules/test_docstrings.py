"""The docstrings retrieval dataset (datamodules/builders/docstrings.py): filters on hand-written docstrings, a
deterministic build, no pair in both train and eval, held-out libraries never trained on, IND candidates
from one library, and refusal (or rebuild) when installed library sources or the row fingerprint differ.
Built from three small installed libraries so a build takes about a second (pairs_from=installed; the shipped
snapshot and the BM25 candidates: test_docstrings_snapshot.py)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from datamodules.builders import docstrings as ds
from datamodules.errors import DataError

CONF = Path(__file__).resolve().parents[2] / "conf"
SMALL = {"train_libraries": ["jinja2", "fsspec"], "ood_libraries": ["tqdm"], "eval_per_library": 8,
         "train_per_library": 40, "eval_candidates": 5, "pairs_from": "installed"}


def build(root: Path, **kwargs) -> Path:
    return ds.ensure_docstrings(root, **{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("docstrings") / "root")


def read_train(root: Path) -> dict[str, list[dict]]:
    return {lib: pq.read_table(root / "train" / lib / "original-00000-of-00001.parquet").to_pylist()
            for lib in SMALL["train_libraries"]}


def read_eval(root: Path) -> dict[str, list[dict]]:
    return {lib: pq.read_table(root / "eval" / lib / "test-00000-of-00001.parquet").to_pylist()
            for lib in [*SMALL["train_libraries"], *SMALL["ood_libraries"]]}


# ------------------------------------------------------------------------------------------ filters
DOC = """Return the indices of the maximum values along an axis.

In case of multiple occurrences of the maximum values, the indices corresponding to the first
occurrence are returned, which matches what most users expect from such a function.

.. versionadded:: 1.2

Parameters
----------
axis : int
    By default, the index is into the flattened array.

Examples
--------
>>> argmax([1, 3, 2])
1
"""


def test_split_docstring_hand_worked():
    summary, body = ds.split_docstring(DOC, max_body_chars=1000)
    assert summary == "Return the indices of the maximum values along an axis."
    # Cut at "Examples"; the directive line and the underline rules dropped; whitespace collapsed.
    assert body == ("In case of multiple occurrences of the maximum values, the indices corresponding to the first "
                    "occurrence are returned, which matches what most users expect from such a function. "
                    "Parameters axis : int By default, the index is into the flattened array.")
    _, short = ds.split_docstring(DOC, max_body_chars=100)  # cut at the last space before 100 characters
    assert short == "In case of multiple occurrences of the maximum values, the indices corresponding to the first"


@pytest.mark.parametrize("doc, why", [
    ("Only a summary line, no body at all here.", "no body"),
    ("Too short.\n\n" + "word " * 20, "summary under 4 words"),
    ("A summary that is long enough to pass.\n\nToo short a body.", "body under 15 words"),
    ("Return the stored value unchanged.\n\nReturn the stored value unchanged. "
     + "More words follow to reach the minimum length " * 2, "summary inside the body"),
    ("1. Numbered summary lines are not prose.\n\n" + "word " * 20, "summary not starting with a letter"),
    ("One\ntwo\nthree\nfour lines of summary text.\n\n" + "word " * 20, "summary over 3 lines"),
    (">>> f(1) gives the same value back\n\n" + "word " * 20, "doctest summary"),
])
def test_split_docstring_rejects(doc, why):
    assert ds.split_docstring(doc, 300) is None, why


def test_the_rejected_summaries_pass_every_other_rule():
    """Controls for the two cases above that must fail on their own rule, not on the word count."""
    body = "More words follow to reach the minimum length " * 2
    assert ds.split_docstring("Return the stored value unchanged.\n\n" + body, 300) is not None
    assert ds.split_docstring("f(1) gives the same value back\n\n" + body, 300) is not None


def test_shingle_jaccard_hand_worked():
    a = ds.DocPair("x", "m.a", "s", "one two three four")       # 3-grams: (one two three), (two three four)
    b = ds.DocPair("x", "m.b", "s", "One, two three FOUR five")  # (one two three), (two three four), (three four five)
    sa, sb = ds.shingles(a.body), ds.shingles(b.body)
    assert len(sa & sb) == 2 and len(sa | sb) == 3               # Jaccard 2/3 ≥ 0.3
    assert ds.near_duplicates(a, b, sa, sb)
    c = ds.DocPair("x", "m.c", "s", "four three two one zero")
    assert not ds.near_duplicates(a, c, sa, ds.shingles(c.body))  # same words, no shared 3-gram
    getter = ds.DocPair("x", "m.C.prop", "s", "alpha beta gamma delta")
    setter = ds.DocPair("x", "m.C.prop", "s", "omega psi chi phi")
    assert ds.near_duplicates(getter, setter, ds.shingles(getter.body), ds.shingles(setter.body))


def test_split_drops_near_duplicates_of_eval_rows():
    """A templated sibling of an eval row is neither a training row nor a second eval row; others are kept."""
    words = [f"w{i}" for i in range(400)]
    template = " ".join(words[:20])
    pairs = [ds.DocPair("lib", f"m.f{i}", f"summary {i}", f"{template} variant {i}") for i in range(6)]
    pairs += [ds.DocPair("lib", f"m.g{i}", f"other {i}", " ".join(words[20 + 20 * i:40 + 20 * i])) for i in range(6)]
    train, evaluation, dropped = ds.split_pairs(pairs, ["lib"], [], eval_per_library=3, train_per_library=None)
    ordered = sorted(pairs, key=lambda p: p.order_key)
    # Naive reference: walk in order; an eval row's template siblings (the other f's) are dropped.
    expected_eval, expected_drop, expected_train = [], 0, []
    for p in ordered:
        family = p.qualname.startswith("m.f")
        if any(family and e.qualname.startswith("m.f") for e in expected_eval):
            expected_drop += 1
        elif len(expected_eval) < 3:
            expected_eval.append(p)
        else:
            expected_train.append(p)
    assert evaluation["lib"] == expected_eval and train["lib"] == expected_train and dropped["lib"] == expected_drop
    assert sum(p.qualname.startswith("m.f") for p in evaluation["lib"] + train["lib"]) <= 1
    assert len(evaluation["lib"]) + len(train["lib"]) + dropped["lib"] == len(pairs)


def test_deduplicate_drops_every_copy():
    a = ds.DocPair("x", "m.a", "Compute the thing.", "body one " * 8)
    b = ds.DocPair("y", "m.b", "compute  the THING", "body two " * 8)       # same summary once normalised
    c = ds.DocPair("x", "m.c", "Another summary here.", "Body one " * 8)    # same body as a
    d = ds.DocPair("y", "m.d", "A unique summary line.", "unique body " * 8)
    assert ds.deduplicate([a, b, c, d]) == [d]


# ------------------------------------------------------------------------------------------ the build
def test_layout_and_manifest(small_root):
    manifest = json.loads((small_root / ds.MANIFEST).read_text())
    assert manifest["settings"]["train_libraries"] == SMALL["train_libraries"]
    for lib in [*SMALL["train_libraries"], *SMALL["ood_libraries"]]:
        info = manifest["libraries"][lib]
        assert info["version"] == ds.library_version(lib) and len(info["source_sha256"]) == 64
        assert {"files", "bytes"} <= set(info)
    assert manifest["eval_split"] == {"jinja2": "IND", "fsspec": "IND", "tqdm": "OOD"}
    for lib, rows in read_eval(small_root).items():
        assert len(rows) == manifest["eval_rows"][lib] == SMALL["eval_per_library"]
        for row in rows:
            assert len(row["tgt_text"]) == SMALL["eval_candidates"] == len(set(row["tgt_text"]))
            assert row["tgt_img_path"] == [""] * SMALL["eval_candidates"] and row["qry_img_path"] == ""
    for lib, rows in read_train(small_root).items():
        assert 0 < len(rows) == manifest["train_rows"][lib] <= SMALL["train_per_library"]
        assert all(r["neg_text"] == "" and r["qry_image_path"] == "" for r in rows)
    # The readers the DataModule and the evaluator use accept it.
    from datamodules.mmeb import read_eval_rows, read_train_pairs

    assert read_train_pairs(str(small_root / "train"), "jinja2")[0].positive.image is None
    assert read_eval_rows(str(small_root / "eval"), "tqdm")[0].candidates[0].text


def test_build_is_deterministic(small_root, tmp_path):
    again = build(tmp_path / "again")
    for path in sorted(small_root.rglob("*.parquet")):
        assert path.read_bytes() == (again / path.relative_to(small_root)).read_bytes(), path
    first, second = (json.loads((r / ds.MANIFEST).read_text()) for r in (small_root, again))
    assert first["fingerprint"] == second["fingerprint"]


def test_no_pair_and_no_text_in_both_train_and_eval(small_root):
    train_texts = {ds.normalise(t) for rows in read_train(small_root).values() for r in rows
                   for t in (r["qry"], r["pos_text"])}
    eval_rows = [r for rows in read_eval(small_root).values() for r in rows]
    eval_pairs = {(r["qry_text"], r["tgt_text"][0]) for r in eval_rows}
    train_pairs = {(r["qry"], r["pos_text"]) for rows in read_train(small_root).values() for r in rows}
    assert not eval_pairs & train_pairs
    # Stronger: no eval query or candidate text occurs in training at all.
    assert not {ds.normalise(t) for r in eval_rows for t in (r["qry_text"], *r["tgt_text"])} & train_texts
    # And no eval row's body is a near-duplicate (word 3-gram Jaccard ≥ 0.3) of a training body, by a naive loop.
    def trigrams(text: str) -> set:
        return set(zip(*(ds.normalise(text).split()[i:] for i in range(3))))

    train_bodies = [(t, trigrams(t)) for t in {r["pos_text"] for rows in read_train(small_root).values() for r in rows}]
    for body in {r["tgt_text"][0] for r in eval_rows}:
        a = trigrams(body)
        for other, b in train_bodies:
            assert len(a & b) / len(a | b) < ds.NEAR_DUP_JACCARD, (body, other)


def test_held_out_libraries_are_held_out_and_candidates_come_from_one_library(small_root):
    assert sorted(p.name for p in (small_root / "train").iterdir() if p.is_dir()) == sorted(SMALL["train_libraries"])
    extracted = {lib: ds.extract_library(lib, 300)[0] for lib in [*SMALL["train_libraries"], *SMALL["ood_libraries"]]}
    bodies = {lib: {p.body for p in pairs} for lib, pairs in extracted.items()}
    summaries = {lib: {p.summary for p in pairs} for lib, pairs in extracted.items()}
    for lib, rows in read_train(small_root).items():
        assert all(r["qry"] in summaries[lib] and r["pos_text"] in bodies[lib] for r in rows)
        assert not {r["pos_text"] for r in rows} & bodies["tqdm"]
    for lib, rows in read_eval(small_root).items():
        for r in rows:
            assert r["qry_text"] in summaries[lib]
            assert set(r["tgt_text"]) <= bodies[lib], "every candidate is a docstring of the row's own library"


def test_changed_library_sources_are_refused_or_rebuilt(small_root, tmp_path, monkeypatch):
    root = build(tmp_path / "root")
    real_version = ds.library_version
    monkeypatch.setattr(ds, "library_version", lambda lib: "9.9.9" if lib == "tqdm" else real_version(lib))
    with pytest.raises(DataError, match=r"tqdm .*9\.9\.9.*on_change=rebuild"):
        build(root)
    build(root, on_change="rebuild")
    assert json.loads((root / ds.MANIFEST).read_text())["libraries"]["tqdm"]["version"] == "9.9.9"
    monkeypatch.setattr(ds, "source_signature", lambda lib: {"files": 1, "bytes": 1})
    with pytest.raises(DataError, match="other library sources"):
        build(root)


def test_fingerprint_pin(small_root, tmp_path):
    fingerprint = json.loads((small_root / ds.MANIFEST).read_text())["fingerprint"]
    assert build(small_root, fingerprint=fingerprint) == small_root
    with pytest.raises(DataError, match="fingerprint"):
        build(small_root, fingerprint="0" * 32)
    with pytest.raises(DataError, match="fingerprint"):  # a fresh build is refused before it is swapped in
        build(tmp_path / "new", fingerprint="0" * 32)
    assert not (tmp_path / "new").exists()


def test_other_settings_rebuild(tmp_path):
    root = build(tmp_path / "root")
    build(root, eval_per_library=5)
    assert json.loads((root / ds.MANIFEST).read_text())["eval_rows"]["tqdm"] == 5


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(DataError, match="'no-such-lib' is not installed"):
        build(tmp_path / "a", ood_libraries=["no-such-lib"])
    with pytest.raises(ValueError, match="disjoint"):
        build(tmp_path / "b", ood_libraries=["jinja2"])
    with pytest.raises(ValueError, match="on_change"):
        build(tmp_path / "c", on_change="ignore")


# ------------------------------------------------------------------------------------------ configs
def test_config_blocks_match_the_builder_defaults():
    data = yaml.safe_load((CONF / "data" / "docstrings.yaml").read_text())
    evaluation = yaml.safe_load((CONF / "eval_data" / "docstrings.yaml").read_text())
    assert data["docstrings"] == evaluation["docstrings"]
    defaults = {k: p.default for k, p in inspect.signature(ds.ensure_docstrings).parameters.items()
                if p.default is not inspect.Parameter.empty and k != "force"}
    block = {k: v for k, v in data["docstrings"].items() if k not in ("builder", "root")}
    assert block == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    assert evaluation["eval_data"]["datasets"] == {
        **{lib: {"meta_task": "Retrieval", "split": "IND"} for lib in ds.TRAIN_LIBRARIES},
        **{lib: {"meta_task": "Retrieval", "split": "OOD"} for lib in ds.OOD_LIBRARIES}}


def test_built_on_first_use_through_the_data_config(compose_cfg, tmp_path):
    """`data=docstrings` builds the data when the DataModule is set up (through `bundled.builder`)."""
    from hydra.utils import instantiate

    overrides = [f"docstrings.root={tmp_path / 'docs'}", *(f"docstrings.{k}={v}" for k, v in SMALL.items())]
    cfg = compose_cfg("train", ["data=docstrings", *[o.replace("'", "") for o in overrides]])
    module = instantiate(cfg.data, _convert_="partial")
    module.setup("fit")
    assert (tmp_path / "docs" / ds.MANIFEST).is_file()
    assert {p.subset for p in module.train_pairs} == set(SMALL["train_libraries"])


@pytest.mark.parametrize("token", ["<image>", "<|image_pad|>", "<video>"])
def test_pairs_with_a_multimodal_models_token_are_filtered_out(token):
    """transformers documents its processors with `<image>`; the MMEB readers refuse such texts as data, so the
    builder drops the pair (summary or body) instead of producing rows that stop training."""
    body = "The processor expands every placeholder in the prompts into a span of tokens, one per patch of the image."
    assert ds.split_docstring(f"Expand the placeholders of the prompt text.\n\n{body}", 1000) is not None
    assert ds.split_docstring(f"Expand the {token} placeholders of the prompt text.\n\n{body}", 1000) is None
    assert ds.split_docstring(f"Expand the placeholders of the prompt text.\n\n{body} {token}", 1000) is None

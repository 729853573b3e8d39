"""Teacher scores (`python mine.py mining.method=teacher`, mining/teacher.py, datamodules/teacher_scores.py): a tiny
embedder teacher and a tiny cross-encoder teacher write scores that reload as training reads them and equal an
independent computation; a re-run reuses them, a resumed run scores only what is missing, stale files are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from datamodules import DataError, MMEBDataModule
from datamodules.teacher_scores import read_teacher_file, teacher_file_path
from mining import job as mine

SUBSETS = "[ShapeCls,ShapeT2I]"
ROWS = 16


def teacher_overrides(tiny_cfg, mined_root, extra=()):
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    return [*bundled, f"data.subsets={SUBSETS}", f"data.max_per_subset={ROWS}", "data.val_per_subset=4",
            f"mining.mined_root={mined_root}", "mining.method=teacher", "mining.progress=false", "device=cpu", *extra]


def test_embedder_teacher_writes_scores_training_reads_and_reuses_them(compose_cfg, tiny_cfg, bundled_root, tmp_path):
    from embedders.loading import load_embedder

    mined = tmp_path / "mined"
    cfg = compose_cfg("mine", teacher_overrides(tiny_cfg, mined, ["mining.teacher.in_batch=3"]))
    result = mine.run(cfg)
    out = result["out_dir"]
    assert out.name == "teacher" and [r["status"] for r in result["summary"]] == ["scored", "scored"]
    umask = os.umask(0)
    os.umask(umask)
    assert teacher_file_path(out, "ShapeCls").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    # Reloaded as training reads them: every row, its positive among its candidates, scores = cosine similarities.
    data = MMEBDataModule(source=str(bundled_root / "train"), subsets=["ShapeCls", "ShapeT2I"], max_per_subset=ROWS,
                          image_root=str(bundled_root / "train"), val_per_subset=4, teacher_scores=str(out))
    data.setup()
    assert len(data.teacher_scores) == 2 * ROWS
    torch.manual_seed(cfg.seed)  # the random init mine.py scored with (it seeds before loading)
    embedder = load_embedder(cfg)
    pairs = sorted(data.train_pairs + data.val_pairs, key=lambda p: (p.subset, p.row))
    by_key = {it.key: it for p in pairs for it in (p.positive, *p.negatives)}
    checked = 0
    for pair in pairs[::5]:
        keys, scores = data.teacher_scores[pair.uid]
        assert keys[0] == pair.positive.key and len(keys) == len(set(keys)) == 1 + len(pair.negatives) + 3
        image = data.image_loader.load(pair.query.image, pair.subset, pair.row, "qry_image_path") \
            if pair.query.image else None
        q = embedder.encode([pair.query.text], [image], side="query")
        items = [by_key[k] for k in keys]
        imgs = [data.image_loader.load(it.image, pair.subset, pair.row, "pos_image_path") if it.image else None
                for it in items]
        c = embedder.encode([it.text for it in items], imgs, side="target")
        want = torch.nn.functional.normalize(q.double(), dim=-1) @ torch.nn.functional.normalize(c.double(), dim=-1).T
        assert torch.allclose(torch.tensor(scores, dtype=torch.float64), want[0], atol=1e-5)
        checked += 1
    assert checked >= 6

    # The collator hands them to the loss per batch.
    batch_keys, batch_scores = __import__("datamodules.teacher_scores", fromlist=["x"]).teacher_tensors(
        pairs[:4], data.teacher_scores)
    assert batch_keys.shape == batch_scores.shape and batch_keys[0, 0] == pairs[0].positive.key

    # A re-run reuses them (files untouched); a run resumed after losing one subset scores only that one.
    stamps = {s: teacher_file_path(out, s).stat().st_mtime_ns for s in ("ShapeCls", "ShapeT2I")}
    again = mine.run(compose_cfg("mine", teacher_overrides(tiny_cfg, mined, ["mining.teacher.in_batch=3"])))
    assert [r["status"] for r in again["summary"]] == ["skipped (up to date)"] * 2
    assert {s: teacher_file_path(out, s).stat().st_mtime_ns for s in stamps} == stamps
    teacher_file_path(out, "ShapeT2I").unlink()
    resumed = mine.run(compose_cfg("mine", teacher_overrides(tiny_cfg, mined, ["mining.teacher.in_batch=3"])))
    assert [r["status"] for r in resumed["summary"]] == ["skipped (up to date)", "scored"]

    # Other settings are refused (naming what differs) unless forced.
    with pytest.raises(FileExistsError, match="in_batch"):
        mine.run(compose_cfg("mine", teacher_overrides(tiny_cfg, mined, ["mining.teacher.in_batch=1"])))
    forced = mine.run(compose_cfg("mine", teacher_overrides(tiny_cfg, mined, ["mining.teacher.in_batch=1",
                                                                            "mining.force=true"])))
    assert [r["status"] for r in forced["summary"]] == ["scored", "scored"]

    # Training on other rows than were scored is refused, naming the file and field.
    other = MMEBDataModule(source=str(bundled_root / "train"), subsets=["ShapeCls"], max_per_subset=ROWS - 2,
                           image_root=str(bundled_root / "train"), teacher_scores=str(out))
    with pytest.raises(DataError, match="ShapeCls.teacher.json.*scored from other rows"):
        other.setup()


def tiny_cross_encoder(directory: Path, words: list[str]) -> Path:
    """A random-init BERT cross-encoder (one relevance logit) with a word-level vocabulary, built offline."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def text_dataset(root: Path) -> Path:
    """A text-only MMEB-train snapshot: one subset of 12 rows, some with a negative."""
    colours = ["red", "green", "blue", "yellow"]
    rows = [{"qry": f"find the {colours[i % 4]} fruit number {i}", "qry_image_path": "",
             "pos_text": f"a {colours[i % 4]} fruit {i}", "pos_image_path": "",
             "neg_text": f"a {colours[(i + 1) % 4]} stone" if i % 2 else "", "neg_image_path": ""} for i in range(12)]
    (root / "Fruits").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "Fruits" / "original-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: Fruits\n  data_files:\n  - split: original\n"
                                    "    path: Fruits/original-*.parquet\n---\n")
    return root


def test_cross_encoder_teacher_scores_equal_its_logits(compose_cfg, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data_dir = text_dataset(tmp_path / "fruits")
    words = "find the red green blue yellow fruit number a stone".split() + [str(i) for i in range(12)]
    ce_dir = tiny_cross_encoder(tmp_path / "ce", words)
    overrides = [f"data.source={data_dir}", "data.image_root=null", "data.bundled=null", "data.subsets=[Fruits]",
                 "data.val_per_subset=2", f"mining.mined_root={tmp_path / 'mined'}", "mining.method=teacher",
                 f"mining.teacher.cross_encoder={ce_dir}", "mining.teacher.in_batch=2", "mining.progress=false",
                 "device=cpu"]
    result = mine.run(compose_cfg("mine", overrides))
    path = teacher_file_path(result["out_dir"], "Fruits")
    header = json.loads(path.read_text().splitlines()[0])
    assert header["teacher"]["kind"] == "cross_encoder" and header["prompt"] is None

    data = MMEBDataModule(source=str(data_dir), subsets=["Fruits"], val_per_subset=2,
                          teacher_scores=str(result["out_dir"]))
    data.setup()
    pairs = sorted(data.train_pairs + data.val_pairs, key=lambda p: p.row)
    table = read_teacher_file(path, "Fruits", data.subset_info["Fruits"], pairs)
    texts = {it.key: it.text for p in pairs for it in (p.positive, *p.negatives)}
    tokenizer, model = AutoTokenizer.from_pretrained(ce_dir), AutoModelForSequenceClassification.from_pretrained(ce_dir)
    for pair in pairs:
        keys, scores = table[pair.row]
        assert len(keys) == 1 + len(pair.negatives) + 2
        enc = tokenizer([pair.query.text] * len(keys), [texts[k] for k in keys], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits[:, 0].double()
        assert torch.allclose(torch.tensor(scores, dtype=torch.float64), logits, atol=1e-5)
    again = mine.run(compose_cfg("mine", overrides))
    assert again["summary"][0]["status"] == "skipped (up to date)"


def test_cross_encoder_refuses_rows_with_images(compose_cfg, tiny_cfg, tmp_path):
    ce_dir = tiny_cross_encoder(tmp_path / "ce", ["a", "shape"])
    cfg = compose_cfg("mine", teacher_overrides(tiny_cfg, tmp_path / "mined", [f"mining.teacher.cross_encoder={ce_dir}",
                                                                               "data.subsets=[ShapeCls]"]))
    with pytest.raises(ValueError, match="row .*image or video.*text only"):
        mine.run(cfg)

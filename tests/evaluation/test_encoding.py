"""Encoding many items: length keys equal the processor's token counts, sorted batches return the caller's
order with less padding, DataLoader workers change nothing (and draw from no global RNG), non-finite
embeddings and refused items are named, and the progress bar shows items/s when asked for."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import DataError
from datamodules.images import ImageLoader
from datamodules.schema import Item
from evaluation.encoding import NonFiniteEmbeddingError, encode_unique, length_keys, padding_share


def _tokens(embedder, entry, side):
    item, ds, row, field, loader = entry
    image = loader.load(item.image) if item.image else None
    return int(embedder.input_builder([item.text], [image], side)["attention_mask"].sum())


@pytest.mark.parametrize("prompt", ["plain", "hierarchical"])
def test_length_keys_follow_the_processors_token_counts(tiny, items, prompt):
    """Keys are tokens estimated from characters (one sample tokenised) plus the exact image tokens: within a
    few tokens of the processor's count, and ordering items as the counts do."""
    from embedders.prompts import PromptFormat

    builder = tiny.input_builder
    original = builder.prompt
    builder.prompt = PromptFormat.from_config(prompt)
    try:
        for side in ("query", "target"):
            keys = [k[0] for k in length_keys(items, builder, side)]
            exact = [_tokens(tiny, e, side) for e in items]
            assert all(abs(k - n) <= max(3, 0.2 * n) for k, n in zip(keys, exact)), list(zip(keys, exact))
            ranks = lambda xs: np.argsort(np.argsort(xs, kind="stable"), kind="stable")  # noqa: E731
            assert np.corrcoef(ranks(keys), ranks(exact))[0, 1] > 0.9
    finally:
        builder.prompt = original


def test_sorted_batches_return_the_callers_order_with_less_padding(tiny, items):
    stats = {"first": {}, "sorted": {}}
    first = encode_unique(tiny, items, "query", 4, sort=False, stats=stats["first"])
    ordered = encode_unique(tiny, items, "query", 4, sort=True, stats=stats["sorted"])
    assert torch.allclose(first, ordered, atol=1e-5)  # same items, other batch neighbours
    alone = encode_unique(tiny, items, "query", 1, sort=True)
    assert torch.equal(alone, encode_unique(tiny, items, "query", 1, sort=False))  # batch 1: bit-identical
    assert torch.allclose(alone, ordered, atol=1e-5)
    assert stats["sorted"]["items"] == stats["first"]["items"] == len(items)
    assert stats["sorted"]["tokens"] == stats["first"]["tokens"]  # the same real tokens…
    assert padding_share(stats["sorted"]) < padding_share(stats["first"]) / 2  # …with far less padding


def test_workers_change_nothing_and_leave_the_global_rng_alone(tiny, items):
    baseline = encode_unique(tiny, items, "target", 4, num_workers=0)
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    from evaluation.encoding import available_cpus, effective_workers

    if available_cpus() < 2:
        pytest.skip("one CPU: evaluation never starts a worker here")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a CPU left idle by the model: the only place a worker runs on a CPU-only machine
    try:
        assert effective_workers(2, items, -(-len(items) // 4)) > 0  # the run below really uses worker processes
        with_workers = encode_unique(tiny, items, "target", 4, num_workers=2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(with_workers, baseline)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_non_finite_embeddings_are_refused_naming_the_item(fake_embedder):
    loader = ImageLoader(None)
    entries = [(Item(f"text {i}"), "DocVQA", 10 + i, "qry_text", loader) for i in range(6)]
    emb = fake_embedder(nan_texts={"text 4"})
    with pytest.raises(NonFiniteEmbeddingError, match=r"dataset 'DocVQA', row 14 \(query side.*'text 4'"):
        encode_unique(emb, entries, "query", 4)


def test_a_refused_item_is_named_not_its_batch(tiny, items):
    class Refusing:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, texts, images, side):
            if any("BOOM" in t for t in texts):
                raise ValueError("aspect ratio too extreme")
            return self.inner(texts, images, side)

        def format(self, texts, images, side):
            return self.inner.format(texts, images, side)

        processor = property(lambda self: self.inner.processor)

    entries = list(items[:6])
    item, ds, row, field, loader = entries[3]
    entries[3] = (Item(item.text + " BOOM", item.image), ds, row, field, loader)
    original = tiny.input_builder
    tiny.input_builder = Refusing(original)
    try:
        with pytest.raises(DataError, match=r"dataset 'Set', row 3, field 'qry_img_path': cannot build model inputs "
                                            r"from its .*ValueError: aspect ratio too extreme"):
            encode_unique(tiny, entries, "query", 6)
    finally:
        tiny.input_builder = original


def test_an_extreme_aspect_ratio_in_evaluation_names_dataset_row_field_and_file(tiny, tmp_path):
    """A 1000x3 image (333:1; Qwen2-VL refuses beyond 200:1) in an eval dataset: the error names the dataset, row,
    field and file with the image's size, as training's collation does (issue 22: evaluation raised the processor's
    bare `ValueError: absolute aspect ratio`), whether batches are sorted by length (the length keys ask the
    processor first) or not."""
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.png")
    Image.new("RGB", (1000, 3)).save(tmp_path / "strip.png")
    loader = ImageLoader(tmp_path)
    entries = [(Item("<|image_1|> what is it", image), "ShapeVQA", row, "qry_img_path", loader)
               for row, image in ((7, "ok.png"), (8, "strip.png"), (9, "ok.png"))]
    for sort in (True, False):
        with pytest.raises(DataError) as err:
            encode_unique(tiny, entries, "query", 3, sort=sort)
        assert str(err.value).startswith(
            f"dataset 'ShapeVQA', row 8, field 'qry_img_path': cannot build model inputs from its image "
            f"{tmp_path / 'strip.png'} (1000x3 px): ValueError: absolute aspect ratio must be smaller than 200"), sort


def test_a_missing_image_is_named_before_anything_is_encoded(fake_embedder, tmp_path):
    loader = ImageLoader(tmp_path)
    entries = [(Item("<|image_1|> x", "gone.png"), "OK-VQA", 7, "qry_img_path", loader)]
    emb = fake_embedder()
    with pytest.raises(DataError, match=r"dataset 'OK-VQA', row 7, field 'qry_img_path': image file .*gone.png"):
        encode_unique(emb, entries, "query", 4)
    assert emb.calls["query"] == 0


def test_progress_bar_shows_items_per_second(fake_embedder, capsys):
    entries = [(Item(f"t{i}"), "X", i, "qry_text", ImageLoader(None)) for i in range(10)]
    encode_unique(fake_embedder(), entries, "query", 3, progress=True, desc="X queries")
    err = capsys.readouterr().err
    assert "X queries" in err and "item/s" in err and "10/10" in err
    encode_unique(fake_embedder(), entries, "query", 3, progress=False)
    assert capsys.readouterr().err == ""
    encode_unique(fake_embedder(), entries, "query", 3, progress=True)  # mining's bar: no desc given
    assert "encode queries" in capsys.readouterr().err  # not "querys" (issue 22)


def test_sharded_sorted_encoding_equals_one_process_and_a_rank_failure_reaches_every_rank(tmp_path):
    """2 gloo ranks: the sorted, strided shards gather back to the one-process matrix; a NaN embedding that
    only rank 1 sees is raised on both ranks (rank 0 names rank 1's error) instead of leaving rank 0 waiting."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    probe = Path(__file__).resolve().parent / "encode_probe.py"
    proc = subprocess.run([sys.executable, str(probe), str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["equal_to_one_process"] and r1["equal_to_one_process"]
    assert r1["raised"].startswith("NonFiniteEmbeddingError: non-finite embedding (NaN/Inf) for dataset 'Probe'")
    assert r0["raised"].startswith("RuntimeError: rank 1 failed: NonFiniteEmbeddingError")
    # Token budget 18, 4 rows (one token per character) over the ranks' strided shards of the length-sorted texts,
    # by hand: rank 0 holds 32, 10, 8, 6, 4, 2 characters -> [32] [10] [8, 6] [4, 2] = 4 batches; rank 1 holds 14, 9,
    # 7, 5, 3 -> [14] [9, 7] [5, 3] = 3. Both run 4 forwards (rank 1 repeats one batch), the matrix is the same.
    assert r0["budget_equal_to_one_process"] and r1["budget_equal_to_one_process"]
    assert r0["budget_forwards"] == r1["budget_forwards"] == 4
    # One item (over the budget: encoded alone) over 2 ranks: rank 1's shard is empty, both run one forward.
    assert r0["empty_shard_equal_to_one_process"] and r1["empty_shard_equal_to_one_process"]
    assert r0["empty_shard_forwards"] == r1["empty_shard_forwards"] == 1


def test_workers_are_used_only_where_they_can_pay_for_themselves(items):
    from evaluation.encoding import effective_workers

    text_only = [e for e in items if not e[0].image]
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert effective_workers(2, items, 6, cpus=16, device=gpu) == 2
    assert effective_workers(2, items, 3, cpus=16, device=gpu) == 0  # fewer than two batches per worker
    assert effective_workers(2, text_only, 50, cpus=16, device=gpu) == 0  # nothing to decode
    assert effective_workers(0, items, 50, cpus=16, device=gpu) == 0
    assert effective_workers(4, items, 50, cpus=2, device=gpu) == 1  # one CPU stays with the model's process
    assert effective_workers(4, items, 50, cpus=1, device=gpu) == 0
    # On the CPU the model's compute threads hold their cores: workers only get the rest.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert effective_workers(4, items, 50, cpus=2, device=cpu) == 0  # 2 cores, 2 threads: a worker cannot pay
        assert effective_workers(4, items, 50, cpus=8, device=cpu) == 4
        assert effective_workers(8, items, 50, cpus=8, device=cpu) == 6
    finally:
        torch.set_num_threads(threads)


def test_progress_is_on_for_users_and_off_under_pytest(monkeypatch):
    from evaluation.runner import _progress

    assert _progress({}) is False and _progress({"progress": "auto"}) is False  # we are under pytest
    assert _progress({"progress": True}) is True and _progress({"progress": False}) is False
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert _progress({}) is True


@pytest.mark.parametrize("slow", [False, True])
def test_image_sizes_are_read_in_this_thread_unless_the_file_system_is_slow(tmp_path, monkeypatch, slow):
    """A local disk: every header read in the calling thread (a pool only adds GIL contention); reads slower than
    `SLOW_READ_S` (network storage): the items after the probe go to a thread pool. Same sizes either way, and a
    missing file past the probe is still named."""
    import threading
    import time

    from evaluation import encoding

    loader = ImageLoader(tmp_path)
    entries = []
    for i in range(40):
        Image.new("RGB", (20 + i, 30)).save(tmp_path / f"{i}.png")
        entries.append((Item(f"<|image_1|> {i}", f"{i}.png"), "ShapeCls", i, "qry_img_path", loader))
    entries.insert(5, (Item("text only"), "ShapeCls", 99, "qry_img_path", loader))
    threads, original = [], encoding._visual_sizes

    def recording(entry):
        threads.append(threading.get_ident())
        if slow:
            time.sleep(2 * encoding.SLOW_READ_S)
        return original(entry)

    monkeypatch.setattr(encoding, "_visual_sizes", recording)
    text_only = [entries[5], entries[5]]
    assert encoding._read_sizes(text_only, [False, False]) == [None, None] and not threads  # nothing to read
    sizes = encoding._read_sizes(entries, [e[0].has_visual for e in entries])
    assert sizes[5] is None and len(threads) == 40
    assert [s for s in sizes if s is not None] == [[(20 + i, 30)] for i in range(40)]
    here = threads.count(threading.get_ident())
    assert here == (encoding.PROBE_READS if slow else 40), here
    entries.append((Item("<|image_1|> x", "gone.png"), "ShapeCls", 41, "qry_img_path", loader))
    with pytest.raises(DataError, match=r"row 41, field 'qry_img_path': image file .*gone.png"):
        encoding._read_sizes(entries, [e[0].has_visual for e in entries])


def test_header_sizes_of_an_exif_rotated_photo_are_its_stored_size(tmp_path):
    """A JPEG with EXIF orientation 6 (rotated 90°): the keys use the stored size, as the loader (no EXIF
    transpose) feeds the processor — not the displayed one."""
    from evaluation.encoding import _header_size

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (123, 45)).save(tmp_path / "r.jpg", exif=exif)
    loader = ImageLoader(tmp_path)
    assert _header_size(loader, "r.jpg", "ShapeCls", 0, "qry_img_path") == loader.load("r.jpg").size == (123, 45)


@pytest.mark.parametrize("fmt,mode,kw", [("PNG", "RGB", {}), ("PNG", "L", {}), ("JPEG", "RGB", {}),
                                         ("JPEG", "RGB", {"progressive": True}), ("JPEG", "L", {}),
                                         ("GIF", "P", {}), ("WEBP", "RGB", {}), ("BMP", "RGB", {}),
                                         ("TIFF", "RGB", {}), ("PPM", "RGB", {})])
def test_header_sizes_equal_the_decoded_image(tmp_path, fmt, mode, kw):
    """The length keys' image sizes (read from the header bytes, PIL where that reader does not know the format)
    equal the size of the decoded image the collator feeds the processor."""
    from evaluation.encoding import _header_size

    path = tmp_path / f"x.{fmt.lower()}"
    Image.new(mode, (123, 45)).save(path, fmt, **kw)
    loader = ImageLoader(tmp_path)
    assert _header_size(loader, path.name, "ShapeCls", 0, "qry_img_path") == loader.load(path.name).size == (123, 45)
    path.write_bytes(path.read_bytes()[:5])  # a header cut before its size fields: the loader's named error
    with pytest.raises(DataError, match=r"row 0, field 'qry_img_path'"):
        _header_size(loader, path.name, "ShapeCls", 0, "qry_img_path")


def test_a_worker_stuck_at_start_up_is_stopped_and_the_rest_encoded_here(tiny, items, monkeypatch, caplog):
    """A DataLoader worker that never delivers (as a child deadlocked in CPython's after-fork clean-up would):
    after `WORKER_TIMEOUT_S` the workers are killed and the remaining batches encoded in this process — the same
    embeddings as without workers, a warning, no worker left alive, no hang."""
    import logging
    import multiprocessing
    import signal
    import time

    from evaluation import encoding

    baseline = encode_unique(tiny, items, "query", 4, num_workers=0)
    real_call, real_workers = encoding._ItemCollator.__call__, encoding.effective_workers

    def stuck_in_workers(self, batch):
        if torch.utils.data.get_worker_info() is not None:
            # Like a child deadlocked before Python runs: SIGTERM (torch's terminate) does not end it.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        return real_call(self, batch)

    monkeypatch.setattr(encoding, "_workers_failed", False)
    monkeypatch.setattr(encoding._ItemCollator, "__call__", stuck_in_workers)
    monkeypatch.setattr(encoding, "effective_workers", lambda *a, **k: 1)
    monkeypatch.setattr(encoding, "WORKER_TIMEOUT_S", 2.0)
    before = {p.pid for p in multiprocessing.active_children()}
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="evaluation.encoding"):
        got = encode_unique(tiny, items, "query", 4, num_workers=1, desc="Set queries")
    assert time.perf_counter() - start < 60
    assert torch.allclose(got, baseline, atol=1e-6)
    assert "Set queries: the DataLoader workers gave no batch in 2 s" in caplog.text
    assert "remaining 6 batch(es) are encoded in this process" in caplog.text
    assert not [p for p in multiprocessing.active_children() if p.pid not in before]  # killed: SIGTERM was ignored
    # Every later encoding of this process uses no workers: each new fork could stall again.
    assert encoding._workers_failed and real_workers(4, items, 50, cpus=16, device=torch.device("cuda")) == 0


def test_a_collate_error_in_a_worker_still_names_the_item(tiny, items, monkeypatch):
    """The fallback only catches the DataLoader's time-out: a refusal raised in a worker reaches the caller, and so
    does a worker's own RuntimeError whose text mentions a time-out."""
    from evaluation import encoding

    def refusing(self, batch):
        raise DataError("cannot build model inputs from its text: boom", "Set", batch[0][2], "qry_img_path")

    def timing_out(self, batch):
        raise RuntimeError("reading the image: connection timed out")

    monkeypatch.setattr(encoding, "_workers_failed", False)
    monkeypatch.setattr(encoding._ItemCollator, "__call__", refusing)
    monkeypatch.setattr(encoding, "effective_workers", lambda *a, **k: 1)
    with pytest.raises(DataError, match="dataset 'Set', row .*boom"):
        encode_unique(tiny, items, "query", 4, num_workers=1)
    monkeypatch.setattr(encoding._ItemCollator, "__call__", timing_out)
    with pytest.raises(RuntimeError, match="connection timed out"):
        encode_unique(tiny, items, "query", 4, num_workers=1)
    assert not encoding._workers_failed

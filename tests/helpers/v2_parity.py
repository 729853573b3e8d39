"""Shared by the MMEB-V2 profile parity tests (tests/evaluation/test_*_parity.py): the bundled V2 suite read in a
prompt's composition, and what the evaluation collator gives the model for one of its items."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from datamodules.media import MediaLoader, load_visual
from evaluation.runner import build_suite

ROOT = Path(__file__).resolve().parents[2]


def bundled_v2_suite(root: Path, prompt: str) -> dict:
    """{dataset name: EvalDataset} of the bundled MMEB-V2 suite (2 queries per dataset) under `root` (generated on
    first use; the readers only read it, so one root serves every composition), read as `prompt` reads it."""
    cfg = OmegaConf.create({"eval_data": OmegaConf.load(ROOT / "conf/eval_data/mmeb_v2_bundled.yaml")})
    cfg.eval_data.bundled_v2.root = str(root)
    cfg.eval_data.bundled_v2.queries_per_dataset = 2
    eval_data = OmegaConf.to_container(cfg, resolve=True)["eval_data"]
    return {ds.name: ds for ds in build_suite(eval_data, prompt=prompt)}


def encode_inputs(embedder, ds, item, side: str, candidate: bool = False):
    """What the evaluation collator gives the model for one item (evaluation/encoding.py `_ItemCollator`): the
    formatted text, the decoded visual and the processor's batch."""
    frames = ds.candidate_num_frames if candidate and ds.candidate_num_frames else ds.num_frames
    loader = MediaLoader(ds.image_root, frames, ds.max_frames_saved, ds.frame_saving)
    visual = load_visual(loader, item, ds.name, 0, "parity") if item.image or item.video else None
    text = embedder.input_builder.format([item.text], [visual], side, [item.instruction])[0]
    batch = embedder.input_builder([item.text], [visual], side, instructions=[item.instruction])
    return text, visual, batch

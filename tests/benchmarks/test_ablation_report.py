"""`make ablation`'s report (benchmarks/ablation.py) gives the paired contrasts of compare.py: hardness-weighted −
InfoNCE within each sampler and SaHa − random within each loss, from the runs' per-query predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ablation  # noqa: E402

from evaluation.comparison import compare  # noqa: E402
from evaluation.outcomes import load_model  # noqa: E402
from evaluation.store import ScoreStore  # noqa: E402


def _job(job: Path, overrides: list[str], hits: dict[str, list[int]]) -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    per = {}
    for name, h in hits.items():
        per[name] = {"precision@1": 100 * sum(h) / len(h), "num_queries": len(h), "meta_task": "Retrieval",
                     "split": "IND"}
        ScoreStore(job / "eval").save(name, per[name], [{"row": i, "hit": bool(x)} for i, x in enumerate(h)],
                                      {"model": str(job), "data": f"data-{name}", "settings": "s"}, "m")
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("val/sim_overlap,step\n0.05,1\n")
    overall = sum(d["precision@1"] for d in per.values()) / len(per)
    (job / "eval" / "results.json").write_text(json.dumps({"overall": overall, "datasets": per}))


def test_report_has_the_paired_contrasts(tmp_path):
    rng = np.random.default_rng(1)
    truth = {"ShapeT2I": rng.random(50) < 0.4, "CaptionParaphrase": rng.random(40) < 0.5}
    sweep = tmp_path / "sweep"
    for loss, lift in (("infonce", 0.0), ("hardness_weighted", 0.2)):
        for seed in (1, 2):
            hits = {n: [int(x or rng.random() < lift) for x in t] for n, t in truth.items()}
            overrides = [f"loss={loss}", "sampler=random", f"seed={seed}"]
            _job(sweep / f"{loss}_{seed}", overrides, hits)
            _job(tmp_path / "by_arm" / loss / str(seed), overrides, hits)
    text = ablation.report(sweep, draws=1000)
    line = next(x for x in text.splitlines() if x.startswith("| hardness_weighted − infonce | random |"))
    expected = compare(load_model(tmp_path / "by_arm" / "infonce"), load_model(tmp_path / "by_arm" / "hardness_weighted"),
                       draws=1000)["overall"]
    assert f"{expected['delta']:+.2f}" in line and f"[{expected['ci95'][0]:+.2f}, {expected['ci95'][1]:+.2f}]" in line
    assert "2/2 paired" in line
    saved = json.loads((sweep / "ablation.json").read_text())
    assert len(saved["runs"]) == 4 and saved["contrasts"][0]["overall"]["delta"] == pytest.approx(expected["delta"])
    # Every line of the contrast table has as many cells as its header (the "within" arm has its own column).
    table = [x for x in text.splitlines() if x.startswith("| ") and "seeds | Overall Δ" in x or "2/2 paired" in x]
    assert table[0].startswith("| B − A | within | seeds |")
    assert len({x.count(" | ") for x in table}) == 1


def test_contrast_table_without_arms_keeps_its_columns():
    entry = {"delta": 1.0, "ci95": [0.5, 1.5], "detectable": 0.8}
    text = ablation.contrast_table([{"contrast": "B − A", "seeds": [3, 3], "paired_seeds": True, "overall": entry,
                                     "splits": {}, "claim": "c"}])
    header, rule, row = text.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|") == 8

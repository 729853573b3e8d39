"""The paired comparison of two evaluations (evaluation/outcomes.py, evaluation/comparison.py, compare.py) on
constructed prediction files written by the store itself: values against hand computations and scipy, the MMEB
aggregates, refusals of anything not comparable row by row, multirun directories (seeds as a second level), MMEB-V2
corpus tasks (per-query NDCG), and `python compare.py` end to end on two real tiny evaluations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import compare as compare_cli
from evaluation import paired
from evaluation.comparison import compare, render, verdict
from evaluation.job import run as evaluate_run
from evaluation.outcomes import NotComparable, load_model
from evaluation.store import ScoreStore
from operations.hydra_app import compose_config

ROOT = Path(__file__).resolve().parents[2]
scipy_stats = pytest.importorskip("scipy.stats")


def write_eval(directory: Path, datasets: dict, settings: str = "settings-1", model: str = "model-1",
               rows: dict | None = None) -> Path:
    """An evaluation directory as evaluate.py writes it: {name: (meta_task, split, hits, data fingerprint)}."""
    store = ScoreStore(directory)
    for name, (meta, split, hits, data_fp) in datasets.items():
        ids = (rows or {}).get(name, list(range(len(hits))))
        result = {"precision@1": 100 * sum(hits) / len(hits), "num_queries": len(hits), "meta_task": meta,
                  "split": split}
        preds = [{"row": r, "pred": 0 if h else 1, "score_gt": 0.5, "score_pred": 0.5 if h else 0.7, "hit": bool(h)}
                 for r, h in zip(ids, hits)]
        store.save(name, result, preds, {"model": model, "data": data_fp, "settings": settings}, "m")
    return directory


A_HITS = {"D1": [1, 1, 0, 0, 1, 0, 1, 1, 0, 1], "D2": [0, 0, 1, 1, 1, 0], "D3": [1, 0, 1, 0, 1, 0, 1, 0]}
B_HITS = {"D1": [1, 1, 1, 1, 1, 0, 1, 1, 1, 1], "D2": [0, 1, 1, 0, 1, 0], "D3": [1, 1, 1, 0, 1, 1, 1, 1]}
META = {"D1": ("Retrieval", "IND"), "D2": ("VQA", "OOD"), "D3": ("Retrieval", "OOD")}


def two_evals(tmp_path: Path, b_overrides: dict | None = None) -> tuple[Path, Path]:
    a = write_eval(tmp_path / "A", {n: (*META[n], h, f"data-{n}") for n, h in A_HITS.items()})
    spec = {n: (*META[n], h, f"data-{n}") for n, h in B_HITS.items()}
    spec.update(b_overrides or {})
    b = write_eval(tmp_path / "B", spec, model="model-2")
    return a, b


def test_differences_mcnemar_and_mmeb_aggregates_against_hand_computation(tmp_path):
    a, b = two_evals(tmp_path)
    r = compare(load_model(a), load_model(b), draws=2000, seed=0)
    for name in A_HITS:
        ha, hb = np.array(A_HITS[name]), np.array(B_HITS[name])
        d = r["datasets"][name]
        assert d["delta"] == pytest.approx(100 * (hb.mean() - ha.mean()))
        b_only, a_only = int(((hb == 1) & (ha == 0)).sum()), int(((ha == 1) & (hb == 0)).sum())
        assert d["discordant"] == a_only + b_only and d["n"] == len(ha)
        assert d["p_mcnemar"] == pytest.approx(scipy_stats.binomtest(min(a_only, b_only), a_only + b_only).pvalue
                                               if a_only + b_only else 1.0)
        assert d["ci95"][0] <= d["delta"] <= d["ci95"][1]
    # D1: A 6/10, B 9/10, B only on rows 2, 3, 8, A only on none: p = 2 · (1/2)^3 = 0.25
    assert r["datasets"]["D1"]["p_mcnemar"] == pytest.approx(0.25)
    deltas = {n: r["datasets"][n]["delta"] for n in A_HITS}
    assert r["overall"]["delta"] == pytest.approx(np.mean(list(deltas.values())))   # mean over datasets
    assert r["meta_tasks"]["Retrieval"]["delta"] == pytest.approx((deltas["D1"] + deltas["D3"]) / 2)
    assert r["meta_tasks"]["VQA"]["delta"] == pytest.approx(deltas["D2"])
    assert r["splits"]["OOD"]["delta"] == pytest.approx((deltas["D2"] + deltas["D3"]) / 2)
    assert r["overall"]["a"] == pytest.approx(np.mean([100 * np.mean(h) for h in A_HITS.values()]))
    text = render(r)
    assert "| D1 | 60.00 | 90.00 | +30.00" in text and "**Overall** (3)" in text


def test_overall_interval_is_the_stratified_bootstrap(tmp_path):
    """Overall's interval against a naive loop resampling each dataset's queries separately."""
    a, b = two_evals(tmp_path)
    r = compare(load_model(a), load_model(b), draws=10_000, seed=1)
    rng = np.random.default_rng(123)
    naive = []
    for _ in range(4000):
        per = []
        for name in A_HITS:
            ha, hb = np.array(A_HITS[name]), np.array(B_HITS[name])
            idx = rng.integers(0, len(ha), len(ha))
            per.append(100 * (hb[idx].mean() - ha[idx].mean()))
        naive.append(np.mean(per))
    se = np.std(naive)
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert abs(r["overall"]["ci95"][0] - lo) < 0.25 * se and abs(r["overall"]["ci95"][1] - hi) < 0.25 * se
    assert r["overall"]["detectable"] == pytest.approx(paired.detectable_difference(r["overall"]["se"]))


def test_cli_writes_the_issue_json(tmp_path, capsys):
    a, b = two_evals(tmp_path)
    out = tmp_path / "cmp.json"
    assert compare_cli.main([str(a), str(b), "--out", str(out), "--draws", "500"]) == 0
    data = json.loads(out.read_text())
    for d in data["datasets"].values():
        assert {"delta", "ci95", "p_mcnemar", "n", "discordant"} <= set(d) and len(d["ci95"]) == 2
    assert {"delta", "ci95"} <= set(data["overall"])
    assert set(data["datasets"]) == set(A_HITS)
    assert "Overall" in capsys.readouterr().out
    # more than two: each later one against the first
    c = write_eval(tmp_path / "C", {n: (*META[n], h, f"data-{n}") for n, h in A_HITS.items()}, model="model-3")
    assert compare_cli.main([str(a), str(b), str(c), "--out", str(out), "--draws", "200"]) == 0
    both = json.loads(out.read_text())["comparisons"]
    assert [x["b"] for x in both] == [str(b), str(c)] and both[1]["overall"]["delta"] == 0.0


@pytest.mark.parametrize("change, message", [
    ({"D2": ("VQA", "OOD", B_HITS["D2"], "data-OTHER")}, "different data"),
    # the same fingerprint but another row set (a hand-made inconsistency): refused all the same
    ({"D3": ("Retrieval", "OOD", B_HITS["D3"][:-1], "data-D3")}, "different queries"),
])
def test_mismatched_data_is_refused(tmp_path, capsys, change, message):
    a, b = two_evals(tmp_path, change)
    assert compare_cli.main([str(a), str(b), "--draws", "50"]) == 2
    err = capsys.readouterr().err
    assert message in err and ("D2" in err or "D3" in err)


def test_other_settings_other_datasets_and_inconsistent_files_are_refused(tmp_path):
    a, _ = two_evals(tmp_path)
    b = write_eval(tmp_path / "B", {n: (*META[n], h, f"data-{n}") for n, h in B_HITS.items()}, settings="strict")
    with pytest.raises(NotComparable, match="different settings"):
        compare(load_model(a), load_model(b), draws=10)
    fewer = write_eval(tmp_path / "F", {n: (*META[n], B_HITS[n], f"data-{n}") for n in ("D1", "D2")})
    with pytest.raises(NotComparable, match="different datasets"):
        compare(load_model(a), load_model(fewer), draws=10)
    r = compare(load_model(a), load_model(fewer), draws=10, common=True)
    assert set(r["datasets"]) == {"D1", "D2"}
    shifted = write_eval(tmp_path / "S", {"D1": (*META["D1"], B_HITS["D1"], "data-D1")},
                         rows={"D1": [r + 100 for r in range(10)]})
    with pytest.raises(NotComparable, match="different queries"):
        compare(load_model(a), load_model(shifted), draws=10, common=True)
    # a pred file that disagrees with its score file
    pred = tmp_path / "B" / "D1_pred.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(NotComparable, match="9 queries but D1_score.json says 10"):
        load_model(tmp_path / "B")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(NotComparable, match="no evaluation under"):
        load_model(tmp_path / "nothing")


def _job(path: Path, overrides: list[str], hits: dict) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    write_eval(path / "eval", {n: (*META[n], h, f"data-{n}") for n, h in hits.items()})
    write_eval(path / "eval_untrained", {n: (*META[n], [0] * len(h), f"data-{n}") for n, h in hits.items()})


def test_multirun_directories_resample_seeds_then_queries(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for model, base in (("A", A_HITS), ("B", B_HITS)):
        for seed in (1, 2, 3):
            hits = {n: [int(x) if rng.random() < 0.8 else 1 - int(x) for x in h] for n, h in base.items()}
            runs[model, seed] = hits
            _job(tmp_path / model / f"{seed - 1}_job", [f"experiment=arm_{model}", f"seed={seed}"], hits)
    ma, mb = load_model(tmp_path / "A"), load_model(tmp_path / "B")
    assert ma.runs == ["seed=1", "seed=2", "seed=3"] and ma.datasets["D1"].values.shape == (3, 10)
    r = compare(ma, mb, draws=3000, seed=0)
    assert r["paired_seeds"] is True and r["runs"]["b"] == ["seed=1", "seed=2", "seed=3"]
    for name in A_HITS:
        mean_a = np.mean([runs["A", s][name] for s in (1, 2, 3)])
        mean_b = np.mean([runs["B", s][name] for s in (1, 2, 3)])
        d = r["datasets"][name]
        assert d["delta"] == pytest.approx(100 * (mean_b - mean_a))
        assert d["p_mcnemar"] is None   # McNemar pairs single outcomes: not defined over several runs
    # the interval is the two-level one of paired.py (runs paired by seed)
    pairs = {n: (ma.datasets[n].values, mb.datasets[n].values) for n in A_HITS}
    expected = paired.bootstrap_differences(pairs, draws=3000, seed=0, paired_runs=True)
    assert r["overall"]["ci95"] == pytest.approx(
        list(paired.percentile_interval(100 * paired.mean_of(expected, sorted(A_HITS)))))
    # a directory mixing two configurations is not one model
    _job(tmp_path / "A" / "9_other", ["experiment=arm_X", "seed=4"], runs["A", 1])
    with pytest.raises(NotComparable, match="differ in experiment"):
        load_model(tmp_path / "A")


def test_v2_corpus_tasks_compare_the_per_query_metric(fake_embedder, tmp_path):
    """A corpus task's pred lines carry every metric per query (written by the evaluator); the comparison
    resamples the headline metric (NDCG@5) and its per-query values average to the stored score."""
    from datamodules.schema import CorpusTask, Item
    from evaluation.mmeb import EvalDataset
    from evaluation.retrieval import ranking_metrics
    from evaluation.runner import score

    queries = tuple(Item(f"question {i}") for i in range(6))
    corpus = tuple(Item(f"page {j}") for j in range(9))
    qrels = {f"q{i}": {f"c{i}": 2.0, f"c{(i + 3) % 9}": 1.0} for i in range(6)}
    task = CorpusTask(queries, tuple(f"q{i}" for i in range(6)), corpus, tuple(f"c{j}" for j in range(9)), qrels)

    def suite():
        return [EvalDataset("Docs", "ViDoRe-V1", "-", [], modality="visdoc", metric="ndcg_linear@5", task=task)]

    table = {f"question {i}": [float(i == k) for k in range(8)] for i in range(6)}
    table.update({f"page {j}": [float(j % 6 == k) + 0.3 * float(k == 7) for k in range(8)] for j in range(9)})
    good = fake_embedder(table=table)
    plain = fake_embedder()   # pseudo-random vectors
    ra = score(plain, suite(), {}, "plain", tmp_path / "A")
    rb = score(good, suite(), {}, "good", tmp_path / "B")
    lines = [json.loads(x) for x in (tmp_path / "B" / "Docs_pred.jsonl").read_text().splitlines()]
    ours = [p["metrics"]["ndcg_linear@5"] for p in lines]
    _, per_query = ranking_metrics([p["prediction"] for p in lines], [p["query_id"] for p in lines], qrels,
                                   return_per_query=True)
    assert ours == pytest.approx(per_query["ndcg_linear@5"].tolist())
    assert 100 * np.mean(ours) == pytest.approx(rb["datasets"]["Docs"]["score"])
    r = compare(load_model(tmp_path / "A"), load_model(tmp_path / "B"), draws=500)
    d = r["datasets"]["Docs"]
    assert d["metric"] == "ndcg_linear@5" and d["p_mcnemar"] is None
    assert d["delta"] == pytest.approx(rb["datasets"]["Docs"]["score"] - ra["datasets"]["Docs"]["score"])
    assert set(r["modalities"]) == {"visdoc"} and set(r["meta_tasks"]) == {"visdoc/ViDoRe-V1"}
    # a pred file of an older evaluator (no per-query metrics) is refused with what to do
    (tmp_path / "B" / "Docs_pred.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in p.items() if k != "metrics"}) + "\n" for p in lines))
    with pytest.raises(NotComparable, match="eval.resume=false"):
        load_model(tmp_path / "B")


def test_verdict_claims_an_effect_only_when_the_interval_excludes_zero():
    assert verdict({"delta": 1.2, "ci95": [0.3, 2.1], "detectable": 1.3}).startswith("B − A = +1.2 pp")
    text = verdict({"delta": 0.4, "ci95": [-0.8, 1.5], "detectable": 1.6})
    assert text.startswith("no effect larger than 1.5 pp") and "detectable at 80 % power: 1.6 pp" in text


def test_compare_py_end_to_end_on_two_real_tiny_evaluations(bundled_root, tmp_path, capsys):
    """Two evaluate.py runs of the tiny model (two random initialisations) on the bundled data, compared by the
    script in a subprocess; a third evaluation on other rows (max_rows) is refused with a non-zero exit."""

    base = ["device=cpu", f"bundled.root={bundled_root}", "bundled.train_per_subset=60",
            "bundled.eval_per_dataset=12", "eval.progress=false", "~eval_data.datasets"]
    three = ("+eval_data.datasets={ShapeCls:{meta_task:Classification,split:IND},CountVQA:{meta_task:VQA,split:OOD},"
             "CaptionParaphrase:{meta_task:Retrieval,split:OOD}}")
    one = "+eval_data.datasets={ShapeCls:{meta_task:Classification,split:IND}}"
    for name, extra in (("a", ["seed=1", "eval_data.max_rows=8", three]), ("b", ["seed=2", "eval_data.max_rows=8", three]),
                        ("c", ["seed=2", "eval_data.max_rows=6", one]),
                        # the same model with another index (int8 documents), then with another tie rule
                        ("q", ["seed=2", "eval_data.max_rows=8", three, "eval.quantize=int8"]),
                        ("t", ["seed=2", "eval_data.max_rows=8", three, "eval.tie_rule=strict"])):
        evaluate_run(compose_config("evaluate", [*base, *extra], tmp_path / name))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "compare.py", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                          str(tmp_path / "cmp.json")], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "cmp.json").read_text())
    ra = json.loads((tmp_path / "a" / "results.json").read_text())
    rb = json.loads((tmp_path / "b" / "results.json").read_text())
    assert set(data["datasets"]) == set(ra["datasets"])
    for name, d in data["datasets"].items():
        assert d["delta"] == pytest.approx(rb["datasets"][name]["precision@1"] - ra["datasets"][name]["precision@1"],
                                           abs=1e-3)
        assert d["n"] == 8
    assert data["overall"]["delta"] == pytest.approx(rb["overall"] - ra["overall"], abs=1e-3)
    assert set(data["meta_tasks"]) == set(ra["meta_tasks"]) == {"Classification", "VQA", "Retrieval"}
    assert "| **Overall** (3)" in out.stdout
    # another max_rows: other rows, another data fingerprint (in-process: the same main() the script runs)
    assert compare_cli.main([str(tmp_path / "a"), str(tmp_path / "c"), "--common"]) == 2
    err = capsys.readouterr().err
    assert "ShapeCls" in err and "different data" in err
    # Index options may differ (the storage/score question: int8 against float32 documents of one model) ...
    assert compare_cli.main([str(tmp_path / "b"), str(tmp_path / "q"), "--out", str(tmp_path / "q.json")]) == 0
    rq = json.loads((tmp_path / "q" / "results.json").read_text())
    assert json.loads((tmp_path / "q.json").read_text())["overall"]["delta"] == pytest.approx(
        rq["overall"] - rb["overall"], abs=1e-3)
    # ... the scoring rules may not
    assert compare_cli.main([str(tmp_path / "b"), str(tmp_path / "t")]) == 2
    assert "different settings" in capsys.readouterr().err

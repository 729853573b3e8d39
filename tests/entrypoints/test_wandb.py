"""W&B in offline mode: the run logs config, losses and the MMEB table, and a resumed run in the
same directory logs into the same W&B run (same id)."""

from __future__ import annotations

from training import job as train


def test_offline_wandb_run_and_resume_into_the_same_run(compose_cfg, tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    overrides = tiny_cfg(["logger=csv_wandb", "logger.wandb.offline=true", "trainer.max_steps=2",
                          "evaluate_before=false", "eval_data.max_rows=4"])
    train.run(compose_cfg("train", overrides))
    out = tmp_path / "run"
    run_id = (out / "wandb_id.txt").read_text().strip()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(run_id)
    assert (runs[0] / f"run-{run_id}.wandb").is_file()

    # resume: a longer run in the same directory picks up last.ckpt and the same W&B run id
    train.run(compose_cfg("train", [*overrides, "trainer.max_steps=4"]))
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)

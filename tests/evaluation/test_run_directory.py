"""`python evaluate.py` and its run directory (issue 22): one live evaluation per directory — a second one is refused
(exit 2, naming the holder) instead of both exiting 0 and the second replacing the first's score files; a failed
evaluation that wrote nothing leaves no empty run directory; one that wrote scores keeps them; the run's `.hydra/`
record is put back after a refused command rewrote it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from evaluation import job
from operations.lock import RunLock

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_evaluation_into_a_live_run_directory_is_refused(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("evaluate", ["device=cpu"])
    out = tmp_path / "run"
    out.mkdir()
    (out / "ShapeCls_score.json").write_text("the first evaluation's score\n")
    with RunLock(out):  # the first evaluation, still running
        with pytest.raises(SystemExit) as exited:
            job.evaluate_in_run_dir(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: run directory {out} is in use by another run: PID {os.getpid()} on host {socket.gethostname()}" in err
    assert (out / "ShapeCls_score.json").read_text() == "the first evaluation's score\n"  # not replaced
    assert out.is_dir()  # the running evaluation's directory is never removed


@pytest.mark.slow  # ~20 s: the start-up of `python evaluate.py`; the in-process test above covers the exit code fast
def test_two_evaluate_commands_into_one_directory_the_second_exits_2(tmp_path):
    """The command as users run it: while another process holds the run directory, `python evaluate.py` into it
    exits 2 with the holder's PID and host, without a traceback and without touching the holder's files."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "ShapeCls_score.json").write_text("first\n")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from operations.lock import RunLock
        RunLock({str(out)!r}).acquire()
        print("held", flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        second = subprocess.run([sys.executable, "evaluate.py", "device=cpu", f"hydra.run.dir={out}"], cwd=ROOT,
                                capture_output=True, text=True, timeout=300, env=env)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by another run: PID {holder.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr
    assert (out / "ShapeCls_score.json").read_text() == "first\n"


def test_the_run_record_is_put_back_after_a_refused_command_rewrote_it(tmp_path):
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    (hydra_dir / "config.yaml").write_text("embedder_dir: mine\n")
    with job.kept_hydra_files(hydra_dir):
        (hydra_dir / "config.yaml").write_text("embedder_dir: the refused command's\n")  # what Hydra does
    assert (hydra_dir / "config.yaml").read_text() == "embedder_dir: mine\n"


def _hydra_files(out: Path) -> None:
    """What Hydra puts into a run directory before the job runs."""
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("x: 1\n")
    (out / f"{HydraConfig.get().job.name}.log").write_text("")


def test_a_failed_evaluation_that_wrote_nothing_leaves_no_run_directory(compose_cfg, tmp_path, monkeypatch, caplog):
    cfg = compose_cfg("evaluate", ["device=cpu"])
    out = tmp_path / "run"
    _hydra_files(out)

    def fails(cfg):
        raise RuntimeError("out of memory while loading the model")

    monkeypatch.setattr(job, "run", fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        job.evaluate_in_run_dir(cfg)
    assert not out.exists()
    assert f"the evaluation wrote nothing, so its run directory {out} was removed" in caplog.text

    # One that wrote a score before failing keeps its directory (the same command resumes from it).
    _hydra_files(out)

    def fails_after_a_score(cfg):
        (out / "ShapeCls_score.json").write_text("{}")
        raise RuntimeError("a later dataset failed")

    monkeypatch.setattr(job, "run", fails_after_a_score)
    with pytest.raises(RuntimeError, match="a later dataset failed"):
        job.evaluate_in_run_dir(cfg)
    assert (out / "ShapeCls_score.json").is_file()

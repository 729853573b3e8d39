"""Every entry point leaves a gloo process group before the interpreter exits (a group left to the interpreter's
finalisation can abort a rank that finished its work, exit -6), and does nothing in a process without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import atexit, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist

def observe():  # registered before the handler, so it runs after it
    print("initialised at exit:", dist.is_initialized(), flush=True)

atexit.register(observe)
from operations.process_group import leave_process_group_at_exit
leave_process_group_at_exit()
leave_process_group_at_exit()  # registered once
if {init}:
    dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=0, world_size=1)
    dist.all_reduce(__import__("torch").ones(3))
"""


@pytest.mark.parametrize("init", [True, False])
def test_the_exit_handler_destroys_a_gloo_group(tmp_path, init):
    code = SCRIPT.format(root=str(ROOT), init=init, store=str(tmp_path / "store"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "initialised at exit: False", out.stdout + out.stderr
    assert "could not leave" not in out.stderr


@pytest.mark.parametrize("entry", ["train.py", "evaluate.py", "mine.py"])
def test_every_entry_point_registers_it_first(entry):
    # In the Hydra task function: every launcher runs it (submitit jobs never run the `__main__` block), and
    # Lightning's DDP children re-run the script through it.
    source = (ROOT / entry).read_text()
    task = source[source.index("def main(cfg"):].split("\n\n\n")[0]
    assert task.splitlines()[1].strip().startswith("leave_process_group_at_exit()"), task

"""Leaving torch.distributed's process group before the interpreter exits.

Lightning initialises the default process group of a multi-process run and never destroys it, and neither does
torch at exit. A gloo group (`trainer=ddp_cpu`, `trainer=fsdp_cpu`, a CPU evaluation or mining run on several
ranks) left to the interpreter's finalisation can abort a rank that has finished all its work: its worker threads
still hold tensors whose release needs the interpreter being torn down ("terminate called without an active
exception", exit status 134 / -6 after a run that succeeded; pytorch/pytorch#190489). The entry points' Hydra task
functions register `leave_process_group_at_exit` first thing (there, not in their `__main__` block, which a job
started by another launcher such as submitit never runs), so the group is destroyed while the interpreter is still
whole.
"""

from __future__ import annotations

import atexit
import sys

_registered = False


def leave_process_group_at_exit() -> None:
    """Register (once per process) an exit handler that destroys the default process group if one is still
    initialised with the gloo backend. Importing nothing here: commands that never start torch pay nothing.

    NCCL groups are left as they are: torch only warns about them at exit, and destroying one whose peer has died
    can block on its in-flight collectives; a handler that could hang a failed run's exit would be worse than
    the warning."""
    global _registered
    if not _registered:
        atexit.register(_leave)
        _registered = True


def _leave() -> None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        if dist.get_backend() != "gloo":
            return
        dist.destroy_process_group()
        # destroy_process_group drops the registry's references; a DDP reducer or a trainer in a reference cycle may
        # still hold the group: collect them now, so its backend is freed while the interpreter is whole.
        import gc

        gc.collect()
    except Exception as err:  # leaving must never turn a finished run into a failed one
        print(f"warning: could not leave the process group at exit: {type(err).__name__}: {err}", file=sys.stderr)

"""One rank of a multi-rank `train.py` run per trainer config, in the same processes: the FSDP-vs-DDP parity probe.

    launch(OUT_DIR, world, {"ddp": [overrides…], "fsdp": [overrides…], …})   # from a test

`launch` starts `world` processes of this script as torchrun would (LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT set),
each running `train.run` once per named run (`trainer.devices=<world>` appended), in order, into OUT_DIR/<name>:
Lightning finds the ranks already started (no launcher) and the process group made by the first run, so several
configurations cost one start-up. Each run records (`ParityProbe`), per rank, every step's loss, the query
modalities of the rank's batch, the optimizer groups by parameter name and the validation loss, and on rank 0 the
initial and trained weights (gathered in full under FSDP), in OUT_DIR/<name>/rank<r>.pt and weights.pt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class ParityProbe(L.Callback):
    """Losses and batch modalities per step (every rank), initial and trained weights (rank 0)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.losses: dict[int, float] = {}
        self.modalities: dict[int, list[str]] = {}
        self.initial: dict | None = None
        self.val_loss: float | None = None
        self.norms: dict[int, float] = {}
        self.with_grad: dict[int, list[str]] = {}
        self.chunks: dict[int, tuple[int, int]] = {}

    def on_train_start(self, trainer, pl_module):
        self.initial = _full_weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        visual = any(k in c for c in batch["query"] for k in ("pixel_values", "pixel_values_videos"))
        self.modalities[trainer.global_step + 1] = "image" if visual else "text"
        self.chunks[trainer.global_step + 1] = (len(batch["query"]), len(batch["target"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # The global gradient norm before clipping (FSDP: over the sharded DTensor gradients).
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.with_grad[trainer.global_step + 1] = sorted(n for n, p in pl_module.named_parameters()
                                                         if p.grad is not None)
        norm = torch.nn.utils.get_total_norm(grads)
        self.norms[trainer.global_step + 1] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[trainer.global_step] = float(loss)

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get("val/loss")
        if value is not None and not trainer.sanity_checking:
            self.val_loss = float(value)

    def on_train_end(self, trainer, pl_module):
        final = _full_weights(pl_module)
        groups = {g.get("name", str(i)): sorted(_param_names(pl_module, g["params"]))
                  for i, g in enumerate(trainer.optimizers[0].param_groups)}
        rank = trainer.global_rank
        torch.save({"losses": self.losses, "modalities": self.modalities, "groups": groups, "val_loss": self.val_loss,
                    "norms": self.norms, "with_grad": self.with_grad,
                    "chunks": self.chunks},
                   self.out / f"rank{rank}.pt")
        if rank == 0:
            torch.save({"initial": self.initial, "final": final}, self.out / "weights.pt")


def _param_names(module, params) -> list[str]:
    ids = {id(p) for p in params}
    return [n for n, p in module.named_parameters() if id(p) in ids]


def _full_weights(module) -> dict[str, torch.Tensor]:
    """Every parameter, whole, on rank 0 (a collective gather under FSDP)."""
    from embedders.strategies import full_state_dict, is_sharded

    if is_sharded(module):
        state = full_state_dict(module)
    else:
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    names = {n for n, _ in module.named_parameters()}
    return {k: v.detach().float().clone() for k, v in state.items() if k in names}


def main() -> None:
    import json

    from operations.hydra_app import compose_config
    from operations.process_group import leave_process_group_at_exit
    from training import job as train

    out_dir, runs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    world = int(os.environ["WORLD_SIZE"])
    for name, overrides in runs.items():
        out = out_dir / name
        out.mkdir(parents=True, exist_ok=True)
        cfg = compose_config("train", [*overrides, f"trainer.devices={world}",
                                       "+callbacks.parity._target_=parity_run.ParityProbe",
                                       f"+callbacks.parity.out={out}"], out)
        train.run(cfg)
    # As the entry points do: a gloo group torn down by the exit's destructors can abort a rank ('terminate called
    # without an active exception', exit -6) after every run has passed.
    leave_process_group_at_exit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, world: int, runs: dict[str, list[str]], timeout: float = 600) -> None:
    """Start `world` ranks of this script (as torchrun would) running `runs` (name → train.py overrides) and wait;
    raises with the failing ranks' stderr."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    spec = out / "runs.json"
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(world), "NODE_RANK": "0", "PYTHONPATH": f"{ROOT / 'tests' / 'helpers'}{os.pathsep}{ROOT}"}
    procs = [subprocess.Popen([sys.executable, __file__, str(out), str(spec)],
                              env={**env, "LOCAL_RANK": str(r), "RANK": str(r)}, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(world)]
    errors = []
    for r, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0:
            errors.append(f"rank {r} exited {p.returncode}:\n{err[-4000:]}")
    if errors:
        raise RuntimeError("\n".join(errors))


if __name__ == "__main__":
    main()


class PrecisionProbe(L.Callback):
    """Under FSDP: the dtype and size of every gradient reduce-scatter of each step, the dtypes of the RoPE buffers
    and of every parameter (its local shard) after training, the padded sizes of the trainable parameters."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.reductions: dict[int, list[tuple[str, int]]] = {}
        self._original = None

    def on_train_start(self, trainer, pl_module):
        import torch.distributed as dist

        name = "reduce_scatter_single" if hasattr(dist, "reduce_scatter_single") else "reduce_scatter_tensor"
        original = getattr(dist, name)

        def recording(*args, **kwargs):
            tensor = kwargs.get("input", args[1] if len(args) > 1 else None)
            self.reductions.setdefault(trainer.global_step + 1, []).append((str(tensor.dtype), tensor.numel()))
            return original(*args, **kwargs)

        self._original = (name, original)
        setattr(dist, name, recording)

    def on_train_end(self, trainer, pl_module):
        import torch.distributed as dist

        setattr(dist, *self._original)
        world = trainer.world_size

        def padded(p):
            rows = -(-p.shape[0] // world) * world
            return rows * (p.numel() // p.shape[0]) if p.numel() else 0

        torch.save({
            "reductions": self.reductions,
            "buffers": {n: str(b.dtype) for n, b in pl_module.named_buffers() if "inv_freq" in n},
            "params": {n: (str(getattr(p, "_local_tensor", p).dtype), p.requires_grad)
                       for n, p in pl_module.named_parameters()},
            "trainable_padded": sum(padded(p) for p in pl_module.parameters() if p.requires_grad),
            "all_padded": sum(padded(p) for p in pl_module.parameters()),
        }, self.out / f"precision{trainer.global_rank}.pt")

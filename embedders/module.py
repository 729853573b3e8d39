"""The LightningModule: embeds queries and targets with an `Embedder`, applies a contrastive loss,
optionally through GradCache, and validates with in-batch retrieval metrics and similarity
diagnostics.

Optimisation modes:
- GradCache off: Lightning's automatic optimisation (gradient accumulation, clipping, precision).
- GradCache on (`gradcache.chunk_size`): manual optimisation. Every chunk is first embedded
  without gradients (RNG state recorded), the loss is taken on the detached, concatenated
  embeddings (cross-device gather included), then each chunk is replayed with its RNG state and
  back-propagated with the cached embedding gradients. Under DDP all backward passes run without
  gradient sync and gradients are averaged once per step (`all_reduce_gradients`), so chunk
  counts may differ across ranks without hangs. Parameters that no rank used keep `grad=None`, as under
  plain DDP. Under FSDP every rank runs as many chunk forwards (repeats of its last chunk, back-propagating
  zeros) and the replays reduce-scatter once, in the last one. Clipping happens in `on_before_optimizer_step`, which Lightning calls after the precision
  plugin has unscaled fp16 gradients; the LR scheduler steps here.

Precision: the contrastive loss and the validation similarities are computed in fp32 whatever the autocast
context (`losses.full_precision`); trainable parameters are kept in `trainable_dtype` (fp32 master weights
by default) while `dtype` sets the frozen and inference weights (see `embedders.finetune.keep_trainable_in`).

Validation works for any number of rows on any number of ranks: the DataModule gives every rank the same
number of steps (filler batches flagged `val_padding`, skipped here; under FSDP they run the forward unscored,
since every forward all-gathers), each rank accumulates sums over its own batches, and one all-reduce at the end
gives the metrics of a single-process validation of the same rows.

FSDP (`embedders.strategies.FSDP2Strategy`) shards the model in `configure_model`; the embedder then runs every
unit on every call, and `on_before_optimizer_step` takes the gradients of towers no rank used for real away
(`_drop_unused_tower_grads`), so that an FSDP step equals a DDP step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torchmetrics.retrieval import RetrievalRecall

from losses import ContrastiveLoss, Similarity, full_precision
from losses.gather import all_gather_on_host, gather_rows, local_only

from .backbones.base import untouched_rng
from .diagnostics import similarity_overlap
from .embedder import Embedder, move_to
from .finetune import keep_trainable_in, set_dropout
from .gradcache import RngState, all_reduce_gradients
from .multi_vector import cat_padded
from .settings import check_gradcache_config

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    pass


class EmbeddingModule(L.LightningModule):
    def __init__(
        self,
        family: str,
        path: str | None = None,
        config: dict | None = None,
        pooling: str | None = None,
        normalize: bool = True,
        max_length: int = 512,
        dtype: str | None = None,
        trainable_dtype: str | None = "float32",
        image: dict | None = None,
        lora: dict | None = None,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        dropout: float | None = None,
        gradcache: dict | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        weight_decay_exclude_norm_bias: bool = True,
        temperature_lr: float | None = None,
        prompt: dict | str | None = None,
        loss: ContrastiveLoss | None = None,
        diagnostics_max_negatives: int = 4096,
        guide: dict | None = None,
        multi_vector: dict | None = None,
        packed: bool = False,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        # Hyperparameters are stored as plain containers (optimizer/scheduler as their _target_ configs),
        # so checkpoints load with torch.load(weights_only=True) and need no pickled callables.
        config, image, lora, gradcache, prompt, guide, multi_vector = map(
            _plain, (config, image, lora, gradcache, prompt, guide, multi_vector))
        optimizer, scheduler = _plain(optimizer), _plain(scheduler)
        for name, value in (("model.optimizer", optimizer), ("model.scheduler", scheduler)):
            if value is not None and not (isinstance(value, dict) and "_target_" in value):
                raise TypeError(f"{name} must be a config with _target_ (and _partial_: true), got {value!r:.80}")
        self.save_hyperparameters(ignore=["loss"])
        self.embedder = Embedder.build(
            family=family, path=path, config=config, pooling=pooling, normalize=normalize, prompt=prompt,
            max_length=max_length, dtype=dtype, image=image, lora=lora, freeze_vision=freeze_vision,
            gradient_checkpointing=gradient_checkpointing, multi_vector=multi_vector, packed=packed,
            attn_implementation=attn_implementation,
        )
        #: How query and target embeddings are scored: the dot product, or the multi-vector head's late interaction.
        self.similarity = Similarity(self.embedder.head.similarity if self.embedder.head is not None else "maxsim")
        if loss is not None:
            loss.similarity = self.similarity  # the loss scores as the model does (maxsim / meanmaxsim)
        if dropout is not None:
            # Every dropout probability of the backbone (null: the checkpoint's own, e.g. 0.1 for BERT-like
            # encoders, 0 for Qwen2-VL's language model). Dropout costs time on CPUs (MiniLM: ~1.3x per step).
            set_dropout(self.embedder, dropout)
        if loss is not None:
            # Built to train: trainable weights in trainable_dtype (fp32 master weights by default); `dtype` then
            # applies to frozen weights only. Without a loss (evaluation, export) every weight stays in `dtype`.
            keep_trainable_in(self.embedder, trainable_dtype)
        self.loss = loss
        # A frozen guide embedder (guided in-batch false-negative filtering, GISTEmbed): kept out of the module's
        # submodules, so that it is neither trained, wrapped by DDP, nor saved in checkpoints.
        object.__setattr__(self, "_guide", build_guide(guide) if guide and loss is not None else None)
        if loss is not None and getattr(loss, "uses_guide", False) and self._guide is None:
            raise ValueError("loss.guide_margin is set (guided in-batch false-negative filtering) but model.guide is "
                             "not: give the guide embedder, e.g. +model.guide.embedder_dir=<a saved Embedder>")
        # LoRA checkpoints hold only trainable weights (the frozen base reloads from model.path).
        self.strict_loading = not lora
        chunk = check_gradcache_config((gradcache or {}).get("chunk_size"))
        self.chunk_size: int | None = chunk
        self.automatic_optimization = chunk is None
        #: Set by the entry point when GradCache takes clipping over from the Trainer.
        self.manual_gradient_clip: tuple[float, str] | None = None
        # Per rank, never synced by torchmetrics: the ranks' sums are all-reduced once at the epoch end.
        self.val_recall = torch.nn.ModuleDict({f"r{k}": RetrievalRecall(top_k=k, sync_on_compute=False)
                                               for k in (1, 5)})
        self._val_pos: list[tuple[int, torch.Tensor]] = []
        self._val_neg: list[tuple[int, torch.Tensor]] = []
        self._val_query_offset = 0
        #: (finite flag, loss, step, ids) of the last training loss, checked lazily on accelerators.
        #: Finite-loss flags not read yet: [flag (on the host once `event` completes), event or None, loss, step, ids].
        self._pending_finite: list[list] = []
        self._fixed_temperature: torch.Tensor | None = None
        #: Filled at each validation end: positive/negative similarity samples and the overlap figure.
        self.last_similarity: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers
    def embed_chunks(self, chunks: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        # Multi-vector chunks differ in token count: padded with zero rows ("no token") to the widest.
        return cat_padded([self.embedder(move_to(c, self.device)) for c in chunks])

    @property
    def guide_input_builder(self):
        """The guide's input builder (for the collator), or None without a guide."""
        return self._guide.input_builder if self._guide is not None else None

    def loss_side_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The per-row tensors the loss reads besides the embeddings: teacher scores (distillation) and the frozen
        guide's embeddings of the batch (computed here, once per step, without gradients)."""
        loss = self._require_loss()
        side = {}
        if loss.uses_teacher:
            if "teacher_keys" not in batch:
                raise ValueError("loss=distill needs teacher scores in every batch: score the training rows with "
                                 "`python mine.py mining.method=teacher` and train with data.teacher_scores=<its "
                                 "output directory>")
            side["teacher_keys"] = batch["teacher_keys"].to(self.device)
            side["teacher_scores"] = batch["teacher_scores"].to(self.device)
        if loss.uses_guide:
            if "guide_query" not in batch:
                raise ValueError("the batch carries no guide inputs: the DataModule needs the guide's input builder "
                                 "(datamodule.set_input_builder(..., guide_input_builder=module.guide_input_builder))")
            guide = self._guide
            if guide.device != self.device:
                guide.to(self.device)
            with torch.no_grad():
                side["guide_query"] = torch.cat([guide(move_to(c, self.device)) for c in batch["guide_query"]])
                side["guide_target"] = torch.cat([guide(move_to(c, self.device)) for c in batch["guide_target"]])
        return side

    def embed_uniform(self, chunks: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """`embed_chunks`, except that under FSDP's uniform trace every rank runs as many forward calls as the rank
        with the most chunks (the last chunk again, its output dropped): each call all-gathers every unit."""
        if not self.embedder.uniform_trace:
            return self.embed_chunks(chunks)
        most = max(n for (n,) in all_gather_on_host([len(chunks)]))
        out = self.embed_chunks(chunks)
        for _ in range(most - len(chunks)):
            with untouched_rng(self.device):
                self.embedder(move_to(chunks[-1], self.device))
        return out

    def _require_loss(self) -> ContrastiveLoss:
        if self.loss is None:
            raise RuntimeError("EmbeddingModule was built without a loss; pass loss=… to train")
        return self.loss

    def _check_finite(self, loss: torch.Tensor, batch: dict) -> None:
        """Stop on a non-finite loss, naming the step and the batch's rows. On a GPU the flag is copied to pinned
        host memory without waiting and read once its copy has completed (polled at the next steps; waited for
        before a checkpoint is written and at the end of training): the host never waits for the device in a step.
        On the CPU there is no device queue to wait for: it is read at once."""
        self._poll_finite(wait=False)
        loss = loss.detach()
        flag, event = torch.isfinite(loss).all(), None
        if loss.device.type == "cuda":
            host = torch.empty((), dtype=torch.bool, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flag = host
        self._pending_finite.append([flag, event, loss, self.global_step, list(batch.get("ids", []))])
        if event is None:
            self._poll_finite(wait=True)

    def _raise_if_nonfinite(self) -> None:
        """Read every pending finite-loss flag, waiting for the device where needed."""
        self._poll_finite(wait=True)

    def _poll_finite(self, wait: bool) -> None:
        while self._pending_finite:
            flag, event, loss, step, ids = self._pending_finite[0]
            if event is not None and not wait and not event.query():
                return  # its copy is still in flight: read it at a later step
            if event is not None:
                event.synchronize()
            self._pending_finite.pop(0)
            if not bool(flag):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at global step {step}, batch of {len(ids)} rows with "
                    f"ids {ids[:16]}{' …' if len(ids) > 16 else ''}. Lower the learning rate, check these rows, or "
                    "use bf16-mixed instead of fp16")

    def on_train_end(self) -> None:
        self._raise_if_nonfinite()

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int):
        loss_fn = self._require_loss()
        if self.chunk_size is None:
            q = in_row_order(self.embed_chunks(batch["query"]), batch.get("query_order"))
            t = in_row_order(self.embed_chunks(batch["target"]), batch.get("target_order"))
            loss = loss_fn(q, t, batch["target_keys"].to(self.device), **self.loss_side_inputs(batch))
            self._check_finite(loss, batch)
        else:
            loss = self._gradcache_step(batch)
        self._log_train(loss, batch)
        return loss

    def _log_train(self, loss: torch.Tensor, batch: dict) -> None:
        b = batch["num_pairs"]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b, sync_dist=False)
        if self.loss is not None:
            temp = self.loss.temperature
            # Tensors on the device: Lightning reads them only when it writes the logs. A fixed τ is made a device
            # tensor once (a Python float would be copied to the device at every step).
            if temp.learnable:
                value = (1.0 / temp.scale()).detach()
            else:
                if self._fixed_temperature is None or self._fixed_temperature.device != loss.device:
                    self._fixed_temperature = torch.tensor(float(temp.value), device=loss.device)
                value = self._fixed_temperature
            self.log("train/temperature", value, batch_size=b)

    def _gradcache_step(self, batch: dict) -> torch.Tensor:
        loss_fn = self._require_loss()
        opt = self.optimizers()
        q_chunks, t_chunks = list(batch["query"]), list(batch["target"])
        sharded = self.embedder.uniform_trace  # FSDP: every rank runs as many chunk forwards, in the same order
        # Per chunk slot: the chunk, and whether it is real (False: a repeat that only keeps the ranks' FSDP
        # collectives in step; its output is dropped and its replay back-propagates zeros).
        slots = [(c, True) for c in q_chunks] + [(c, True) for c in t_chunks]
        if sharded:
            most_q, most_t = (max(col) for col in zip(*all_gather_on_host([len(q_chunks), len(t_chunks)])))
            slots = ([(c, True) for c in q_chunks] + [(q_chunks[-1], False)] * (most_q - len(q_chunks))
                     + [(c, True) for c in t_chunks] + [(t_chunks[-1], False)] * (most_t - len(t_chunks)))
        # 1. Embed every chunk without gradients, recording the RNG state before each. (FSDP: no_grad, not
        # inference_mode: FSDP's gathered weights are reused by the replay, which must not meet inference tensors.)
        states, reps = [], []
        with torch.no_grad() if sharded else torch.inference_mode():
            for chunk, real in slots:
                if real:
                    states.append(RngState(self.device))
                    reps.append(self.embedder(move_to(chunk, self.device)))
                else:
                    with untouched_rng(self.device):
                        self.embedder(move_to(chunk, self.device))
                    states.append(None)
        # Under autocast, weight casts made in the inference-mode pass may sit in autocast's cache as inference
        # tensors; torch versions before the fix of that cache (pytorch#158232, PR #165068) reuse them in the
        # replay below, which then fails ("Inference tensors cannot be saved for backward"). Clearing the cache
        # makes every version cast afresh (the cost: one more cast of each weight per step).
        torch.clear_autocast_cache()
        nq = len(q_chunks)
        # clone(): inference-mode tensors cannot enter autograd themselves
        q_chunked = cat_padded(reps[:nq]).clone().requires_grad_()
        t_chunked = cat_padded(reps[nq:]).clone().requires_grad_()
        # The loss sees row order; the cached gradients come back in chunk order (the collator may have grouped
        # rows by length): a differentiable permutation in between.
        q = in_row_order(q_chunked, batch.get("query_order"))
        t = in_row_order(t_chunked, batch.get("target_order"))
        strategy = self.trainer.strategy
        sync_ctx = getattr(strategy, "block_backward_sync", None)
        # 2. Full loss on the cached embeddings: d loss / d embedding for every row.
        loss = loss_fn(q, t, batch["target_keys"].to(self.device), **self.loss_side_inputs(batch))
        self._check_finite(loss, batch)
        with sync_ctx() if sync_ctx else contextlib.nullcontext():
            self.manual_backward(loss)
            # Per real chunk, its rows of the cached gradient (multi-vector: its own token count; the padding has none).
            grads = iter([g[offset : offset + r.shape[0], ..., : r.shape[1], :] if r.ndim == 3
                          else g[offset : offset + r.shape[0]]
                          for g, part in ((_grad_or_zeros(q_chunked), reps[:nq]), (_grad_or_zeros(t_chunked), reps[nq:]))
                          for offset, r in zip(_offsets(part), part)])
            # 3. Replay each chunk with gradients and back-propagate the surrogate (emb · cached grad). Under FSDP
            # the gradients accumulate unsharded and are reduce-scattered once, in the last replay's backward.
            for i, ((chunk, real), state) in enumerate(zip(slots, states)):
                if sharded:
                    self.embedder.set_requires_gradient_sync(i == len(slots) - 1)
                with state.replay() if real else untouched_rng(self.device):
                    emb = self.embedder(move_to(chunk, self.device))
                # Plain autograd: the cached gradients already carry any loss scaling (fp16) applied by
                # manual_backward above, and Lightning's per-call hooks would cost more than a small chunk.
                emb.backward(next(grads).to(emb.dtype) if real else torch.zeros_like(emb))
        # 4. One gradient all-reduce for the whole step (DDP; FSDP has reduce-scattered already), then step
        # (clipping: on_before_optimizer_step), schedule.
        if not sharded:
            all_reduce_gradients(self.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return loss.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        self._drop_unused_tower_grads()
        # GradCache clips here: Lightning calls this hook after the precision plugin has unscaled fp16 gradients
        # (MixedPrecision.optimizer_step: unscale_, hook, scaler.step). Clipping before opt.step() would clip
        # gradients still multiplied by the loss scale, shrinking every update by about 1/scale.
        if not self.automatic_optimization and self.manual_gradient_clip is not None:
            value, algorithm = self.manual_gradient_clip
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)

    def _drop_unused_tower_grads(self) -> None:
        """Under FSDP's uniform trace a tower without rows runs on a dummy input times 0, which leaves zero gradients
        where DDP (and one process) leave none: a tower that no rank used for real in this step gets `grad=None`, so
        AdamW's weight decay and momentum leave it alone exactly as they would without FSDP. One host exchange of
        a flag per tower (every rank calls this once per optimizer step)."""
        embedder = self.embedder
        towers = list(embedder.family.towers)
        if not embedder.uniform_trace or not towers:
            return
        used, embedder.real_towers = embedder.real_towers, set()
        flags = [max(col) for col in zip(*all_gather_on_host([int(t in used) for t in towers]))]
        unused = {seg for t, f in zip(towers, flags) if not f for seg in embedder.family.towers[t]}
        if not unused:
            return
        for name, p in embedder.backbone.named_parameters():
            if p.grad is not None and unused.intersection(name.split(".")):
                p.grad = None

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_pos, self._val_neg = [], []
        self._val_query_offset = 0
        # Σ loss·rows, rows, Σ recall@1, Σ recall@5 over this rank's queries (float64: exact sums of counts).
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for metric in self.val_recall.values():
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int):
        if batch.get("val_padding") and not self.embedder.uniform_trace:
            return  # a filler batch: it exists only so that every rank runs the same number of steps
        q = in_row_order(self.embed_uniform(batch["query"]), batch.get("query_order"))
        t = in_row_order(self.embed_uniform(batch["target"]), batch.get("target_order"))
        if batch.get("val_padding"):
            return  # under FSDP a filler batch runs the forward too (every rank all-gathers the same units), unscored
        keys = batch["target_keys"].to(self.device)
        b = q.shape[0]
        with local_only():  # validation batches differ across ranks: never gather here
            if self.loss is not None:
                self._val_sums[0] += self.loss(q, t, keys, **self.loss_side_inputs(batch)).detach().double() * b
        self._val_sums[1] += b
        with full_precision(q, t):  # fp32 whatever the autocast context
            sim = self.similarity(q.float(), t.float())
        # Relevant: the positive and any identical copy of it among the targets.
        relevant = keys[:b, None] == keys[None, :]
        idx = torch.arange(b, device=self.device) + self._val_query_offset
        self._val_query_offset += b
        flat_idx = idx[:, None].expand_as(sim).reshape(-1)
        for metric in self.val_recall.values():
            metric.update(sim.reshape(-1), relevant.reshape(-1), indexes=flat_idx)
        pos = sim[torch.arange(b), torch.arange(b)]
        neg = sim[~relevant]
        cap = self.hparams.diagnostics_max_negatives
        # The batch's global index (its place among the single-process batches) seeds the subsample and orders
        # the samples after gathering, so every world size yields the same diagnostics.
        batch_index = int(batch.get("val_batch_index", batch_idx))
        if neg.numel() > cap:
            gen = torch.Generator().manual_seed(self.global_step * 1_000_003 + batch_index)
            neg = neg[torch.randperm(neg.numel(), generator=gen).to(neg.device)[:cap]]
        self._val_pos.append((batch_index, pos.detach()))
        self._val_neg.append((batch_index, neg.detach()))

    def _gather_in_batch_order(self, parts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """Every rank's validation samples, concatenated in single-process batch order (collective)."""
        values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, device=self.device)
        order = torch.cat([torch.full((v.numel(),), i, dtype=torch.long, device=values.device) for i, v in parts]) \
            if parts else torch.zeros(0, dtype=torch.long, device=self.device)
        values, order = gather_rows(values, with_grad=False), gather_rows(order, with_grad=False)
        return values[torch.sort(order, stable=True).indices].cpu()

    def on_validation_epoch_end(self) -> None:
        sums = self._val_sums
        n_local = int(sums[1])  # host-side count; validation is not on the per-step training path
        for j, metric in enumerate(self.val_recall.values(), start=2):
            if n_local:
                sums[j] = metric.compute().double() * n_local
            metric.reset()
        if self._trainer is not None:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")  # one all-reduce for every metric
        total = float(sums[1])
        if total == 0:
            return
        # Every value logged below is already global and identical on every rank: "max" over ranks keeps it
        # exactly (a mean of equal floats need not) and tells Lightning that the epoch-level value is synced.
        if self.loss is not None:
            self.log("val/loss", float(sums[0] / total), sync_dist=True, reduce_fx="max")
        for j, k in enumerate(self.val_recall, start=2):
            self.log(f"val/recall@{k[1:]}", float(sums[j] / total) * 100, prog_bar=k == "r1", sync_dist=True,
                     reduce_fx="max")
        pos, neg = self._gather_in_batch_order(self._val_pos), self._gather_in_batch_order(self._val_neg)
        self._val_pos, self._val_neg = [], []
        if pos.numel() == 0:
            return
        stats = similarity_overlap(pos, neg)
        self.last_similarity = {"positive": pos, "negative": neg, **stats}
        for name, value in stats.items():
            self.log(f"val/{name}", value, sync_dist=True, reduce_fx="max")

    # ------------------------------------------------------------------ fitting
    def setup(self, stage: str) -> None:
        """Fitting: every submodule in train mode, as the references' trainers set it (the HF Trainer calls
        `model.train()`). `from_pretrained` returns the backbone in eval mode and Lightning keeps submodule modes as
        it finds them: without this, dropout stayed off and transformers' gradient checkpointing (active only while
        `training`) was silently skipped. Set here, before the strategy wraps the model and the model summary counts
        modes; validation and `Embedder.encode` switch to eval and restore this mode."""
        if stage == "fit":
            self.train()

    def configure_model(self) -> None:
        """Sharding strategies (FSDP2: `embedders.strategies.FSDP2Strategy`) shard the model here, after `setup`
        and before the optimizer is built; other strategies leave it whole."""
        shard = getattr(self.trainer.strategy, "shard_module", None) if self._trainer is not None else None
        if shard is not None:
            shard(self)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        if self.hparams.optimizer is None:
            raise ValueError("model.optimizer is not set: give a partial optimizer (e.g. torch.optim.AdamW)")
        from hydra.utils import instantiate

        groups = self.param_groups()
        optimizer = instantiate(self.hparams.optimizer)(groups)
        self._check_all_trainable_optimized(optimizer)
        if self.hparams.scheduler is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else None
        if total is None or not math.isfinite(total):
            raise ValueError("the LR scheduler needs a finite number of steps: set trainer.max_steps or max_epochs")
        scheduler = instantiate(self.hparams.scheduler)(optimizer, total_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_groups(self) -> list[dict]:
        """Decay / no-decay (biases, norms) groups for the embedder; the temperature in its own group. Under FSDP
        the parameters are DTensors that keep their full shapes and names, so the groups equal the unwrapped
        model's (tests/precision/test_fsdp_parity.py compares them by name)."""
        decay, no_decay = [], []
        for name, p in self.embedder.named_parameters():
            if not p.requires_grad:
                continue
            if self.hparams.weight_decay_exclude_norm_bias and (p.ndim < 2 or "norm" in name.lower()):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
        temp = [p for p in (self.loss.parameters() if self.loss is not None else []) if p.requires_grad]
        if temp:
            group = {"params": temp, "weight_decay": 0.0, "name": "temperature"}
            if self.hparams.temperature_lr is not None:
                group["lr"] = float(self.hparams.temperature_lr)
            groups.append(group)
        return [g for g in groups if g["params"]]

    def _check_all_trainable_optimized(self, optimizer: torch.optim.Optimizer) -> None:
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in in_opt]
        if missing:
            raise ValueError(
                f"{len(missing)} trainable parameter(s) are in no optimizer group, e.g. {missing[:3]}"
                + (" (a learnable temperature needs an optimizer group: use the module's param_groups())"
                   if any("temperature" in n for n in missing) else "")
            )

    # ------------------------------------------------------------------ checkpoints
    def frozen_keys(self) -> set[str]:
        """State-dict keys of parameters that never change in training (LoRA's frozen base)."""
        return {name for name, p in self.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        import random

        import numpy as np

        if self.hparams.lora and self.hparams.path:
            # The frozen base reloads from model.path; a randomly initialised base (no path) has nowhere to come from
            # and stays in the checkpoint, or an export or resume would silently re-draw it.
            frozen = self.frozen_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["embedlab_frozen_keys"] = sorted(frozen)

        self._raise_if_nonfinite()  # never write a checkpoint after a non-finite loss
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {  # tensors and Python scalars only: loadable with weights_only=True
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        # Every rank's own states (dropout masks differ per rank). Lightning calls this hook on every rank while
        # it assembles a checkpoint (rank 0 then writes it), so the gather is collective like the save itself.
        states = [state]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
        checkpoint["rng_states_per_rank"] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        import random

        import numpy as np

        if self.hparams.lora and "state_dict" in checkpoint:
            # (A sharded FSDP checkpoint has loaded its tensors already: `FSDP2Strategy.load_checkpoint`.)
            # Non-strict loading is limited to the frozen base: any other missing key is an error.
            own = self.state_dict()
            missing = set(own) - set(checkpoint["state_dict"]) - self.frozen_keys()
            if missing:
                raise KeyError(f"checkpoint lacks {len(missing)} trainable weight(s), e.g. {sorted(missing)[:3]}")
            # The frozen base was loaded from model.path when this module was built; completing the state dict with it
            # keeps Lightning's non-strict loading from listing every base weight as "missing" (it reads like an error).
            base = {k: v for k, v in own.items() if k not in checkpoint["state_dict"]}
            checkpoint["state_dict"] = {**base, **checkpoint["state_dict"]}
            if base:
                log.info("LoRA checkpoint: %d adapter tensor(s) from the checkpoint, the %d frozen base weight(s) from "
                         "model.path=%s", len(checkpoint["state_dict"]) - len(base), len(base), self.hparams.path)

        per_rank = checkpoint.get("rng_states_per_rank")
        if per_rank:
            rank, world = _world()
            if len(per_rank) != world:
                log.warning("checkpoint written by %d rank(s), resumed on %d: rank %d restores the RNG states of "
                            "rank %d; the run goes on, but not bit-identically to an uninterrupted one",
                            len(per_rank), world, rank, rank % len(per_rank))
            states = per_rank[rank % len(per_rank)]
        else:  # checkpoints written before per-rank states: rank 0's states only
            states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(states["python"])
        if states.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def build_guide(spec: dict) -> Embedder:
    """The frozen guide embedder of `model.guide`: `{embedder_dir: DIR}` (a saved Embedder) or the keyword arguments
    of `Embedder.build` (family, path or config, pooling, prompt, …). In eval mode, without gradients."""
    spec = dict(spec)
    if spec.get("embedder_dir"):
        extra = sorted(set(spec) - {"embedder_dir", "dtype"})
        if extra:
            raise ValueError(f"model.guide.embedder_dir loads a saved Embedder as it is; drop {extra}")
        guide = Embedder.from_pretrained(spec["embedder_dir"], dtype=spec.get("dtype"))
    else:
        if not spec.get("family"):
            raise ValueError(f"model.guide needs embedder_dir (a saved Embedder) or family + path/config, got {spec}")
        guide = Embedder.build(**spec)
    guide.requires_grad_(False)
    return guide.eval()


def in_row_order(embeddings: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Embeddings computed in chunk order put back in row order: `order[k]` is the row of the k-th embedding
    (datamodules.collate.grouped_chunks); None = already in row order. Differentiable."""
    if order is None:
        return embeddings
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return embeddings[inverse.to(embeddings.device)]


def _grad_or_zeros(x: torch.Tensor) -> torch.Tensor:
    return x.grad if x.grad is not None else torch.zeros_like(x)


def _offsets(parts: Sequence[torch.Tensor]) -> list[int]:
    out, total = [], 0
    for p in parts:
        out.append(total)
        total += p.shape[0]
    return out


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _plain(value):
    """OmegaConf containers → plain dicts/lists (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value

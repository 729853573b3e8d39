"""Cross-device gathering for contrastive losses (METHODS §2.3, formulation 1).

One semantics, used by every loss: each rank scores its *local* rows against the rows of
*all* ranks, gathered with an autograd-aware all-gather, with labels offset by the rank's
position. The backward of the gather sums every rank's gradient for a row and hands each rank
the slice of its own rows, so that under DDP's gradient averaging the parameter gradient equals
the gradient of the global mean loss (see `ContrastiveLoss._reduce` for the weighting that
keeps this exact when ranks hold different numbers of rows). Ranks may hold unequal numbers of
rows (the last batch of an epoch): sizes are exchanged first, on the host (a gloo group), and rows are
padded to the largest. Multi-vector embeddings ([B, L, d] token vectors) are padded with zero rows ("no token") to
the largest token count of any rank first, in the same exchange; the padding is differentiable, so each rank's
gradient comes back at its own width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

_LOCAL_ONLY = False


class local_only:
    """Context in which losses score only this rank's rows (validation, diagnostics)."""

    def __enter__(self):
        global _LOCAL_ONLY
        self._prev, _LOCAL_ONLY = _LOCAL_ONLY, True
        return self

    def __exit__(self, *exc):
        global _LOCAL_ONLY
        _LOCAL_ONLY = self._prev
        return False


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when not distributed or in `local_only`."""
    if not _LOCAL_ONLY and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_HOST_GROUP: tuple[object, object] | None = None  # (default group it belongs to, gloo group)


def _host_group():
    """The process group for exchanging row counts on the host: the default group when it is gloo, else a gloo
    group over the same ranks, made once. Counts gathered with NCCL live on the GPU, and reading them back
    (`.item()`) would make the host wait for every kernel queued before them (the whole forward) every step."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if _HOST_GROUP is None or _HOST_GROUP[0] is not world:
        _HOST_GROUP = (world, dist.new_group(backend="gloo"))  # collective: every rank reaches its first loss
    return _HOST_GROUP[1]


def _all_gather_counts(counts: list[int]) -> list[list[int]]:
    """Every rank's `counts` (host integers), exchanged on the host: no device synchronisation."""
    local = torch.tensor(counts, dtype=torch.long)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local, group=_host_group())
    return [g.tolist() for g in gathered]


def all_gather_on_host(counts: list[int]) -> list[list[int]]:
    """Every rank's list of small integers (flags, counts), exchanged on the host (no device synchronisation);
    [counts] when not distributed. Collective: every rank of the default group calls it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [list(counts)]
    return _all_gather_counts(list(counts))


def _all_gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    return [c[0] for c in _all_gather_counts([n])]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather rows of `x` whose count differs per rank (`sizes`); returns [sum(sizes), ...]."""
    max_n = max(sizes)
    if x.shape[0] < max_n:
        pad = x.new_zeros((max_n - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    buckets = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(buckets, x.contiguous())
    return torch.cat([b[:n] for b, n in zip(buckets, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns, for the local rows, the sum over ranks of their gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        # Every rank's loss depends on this rank's rows: their total gradient is the sum over ranks.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, sizes: list[int] | None = None, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order (identity when not distributed).

    `sizes` (rows per rank) is exchanged when not given. With `with_grad` the result carries
    gradients back to every rank's local rows; integer tensors are always gathered without.
    """
    rank, world = distributed_world()
    if world == 1:
        return x
    if sizes is None:
        sizes = _all_gather_sizes(x.shape[0], x.device)
    if with_grad and x.is_floating_point() and torch.is_grad_enabled():
        return _GatherWithGrad.apply(x, sizes, rank)
    return _all_gather_padded(x.detach() if x.is_floating_point() else x, sizes)


def _pad_tokens(x: torch.Tensor, width: int) -> torch.Tensor:
    """[n, L, d] → [n, width, d] with zero rows ("no token") appended; differentiable."""
    if x.shape[1] == width:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))


@dataclass
class GatheredBatch:
    """A contrastive batch seen from one rank after gathering.

    queries [N, d] and positives [N, d] hold every rank's pairs in rank order (N = Σ B_r);
    negatives [M, d] every rank's explicit hard negatives; `offset` is the index of this rank's
    first pair in N, `local` the number of its pairs. Keys (int64) identify identical targets.
    """

    queries: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    positive_keys: torch.Tensor | None
    negative_keys: torch.Tensor | None
    offset: int
    local: int
    world_size: int
    #: Pairs and explicit negatives per rank (None when not distributed): to gather per-row side inputs alike.
    pair_sizes: list[int] | None = None
    negative_sizes: list[int] | None = None

    @property
    def total(self) -> int:
        return self.queries.shape[0]


def gather_contrastive_batch(
    query: torch.Tensor, target: torch.Tensor, target_keys: torch.Tensor | None = None
) -> GatheredBatch:
    """Split `target` into positives (first B rows) and hard negatives, gather all with gradients."""
    b = query.shape[0]
    if target.shape[0] < b:
        raise ValueError(
            f"target has {target.shape[0]} rows but query has {b}: the first B target rows must be "
            "the queries' positives, followed by any hard negatives"
        )
    if target_keys is not None and target_keys.shape[0] != target.shape[0]:
        raise ValueError(f"target_keys has {target_keys.shape[0]} entries, target has {target.shape[0]} rows")
    positives, negatives = target[:b], target[b:]
    pos_keys = target_keys[:b] if target_keys is not None else None
    neg_keys = target_keys[b:] if target_keys is not None else None
    rank, world = distributed_world()
    if world == 1:
        return GatheredBatch(query, positives, negatives, pos_keys, neg_keys, 0, b, 1)
    # One host-side exchange of every rank's (pairs, negatives) counts — and token counts for token vectors: they vary
    # independently.
    widths = [query.shape[1], target.shape[1]] if query.ndim == 3 else []
    counts = _all_gather_counts([b, negatives.shape[0], *widths])
    pair_sizes, neg_sizes = [c[0] for c in counts], [c[1] for c in counts]
    if widths:
        query_width, target_width = max(c[2] for c in counts), max(c[3] for c in counts)
        query = _pad_tokens(query, query_width)
        positives, negatives = _pad_tokens(positives, target_width), _pad_tokens(negatives, target_width)
    has_negatives = sum(neg_sizes) > 0
    return GatheredBatch(
        queries=gather_rows(query, pair_sizes),
        positives=gather_rows(positives, pair_sizes),
        negatives=gather_rows(negatives, neg_sizes) if has_negatives else negatives,
        positive_keys=gather_rows(pos_keys, pair_sizes) if pos_keys is not None else None,
        negative_keys=(
            gather_rows(neg_keys, neg_sizes) if neg_keys is not None and has_negatives else neg_keys
        ),
        offset=sum(pair_sizes[:rank]),
        local=b,
        world_size=world,
        pair_sizes=pair_sizes,
        negative_sizes=neg_sizes,
    )


def gather_alongside(g: GatheredBatch, query_side: torch.Tensor, target_side: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row side inputs that travel with a batch (a guide model's embeddings of the same queries and targets),
    gathered in the batch's order without gradient: (queries [N, …], positives [N, …], negatives [M, …])."""
    b = g.local
    if query_side.shape[0] != b or target_side.shape[0] != b + (g.negatives.shape[0] if g.world_size == 1 else
                                                                 g.negative_sizes[distributed_world()[0]]):
        raise ValueError(f"side inputs of {query_side.shape[0]} queries and {target_side.shape[0]} targets do not "
                         f"match the batch's {b} pairs and its explicit negatives")
    positives, negatives = target_side[:b], target_side[b:]
    if g.world_size == 1:
        return query_side.detach(), positives.detach(), negatives.detach()
    has_negatives = sum(g.negative_sizes) > 0
    return (gather_rows(query_side, g.pair_sizes, with_grad=False), gather_rows(positives, g.pair_sizes, with_grad=False),
            gather_rows(negatives, g.negative_sizes, with_grad=False) if has_negatives else negatives.detach())

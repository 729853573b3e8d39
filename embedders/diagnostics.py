"""Similarity diagnostics: how far positive and negative cosine similarities are separated, and whether a
model's embeddings have collapsed.

The overlap figure is the share of negatives scoring above the lowest-decile positive (the 10th
percentile of positive similarities): it falls as negatives get pushed below the positives,
which is the comparison the LLaVE paper opens with.

Collapse. The spread of a set of embeddings is the largest distance of a unit-normalised embedding from
their (normalised) mean direction. A set is collapsed when it holds at least two distinct items and its
spread is at most `DEFAULT_COLLAPSE_TOLERANCE` = 2⁻⁸ ≈ 0.0039: differences that small are the rounding
noise of a bfloat16 forward pass (8 significant bits), so scores built on them rank by noise; an exactly
collapsed model (spread 0) would otherwise score 100 under the reference's first-maximum argmax. Untrained
tiny random models of the bundled configs measure spreads of 0.1 to 1.7, trained models more.
"""

from __future__ import annotations

from pathlib import Path

import torch


def similarity_overlap(positive: torch.Tensor, negative: torch.Tensor, quantile: float = 0.1) -> dict[str, float]:
    positive, negative = positive.float().flatten(), negative.float().flatten()
    if positive.numel() == 0 or negative.numel() == 0:
        return {}
    threshold = torch.quantile(positive, quantile)
    return {
        "sim_pos_mean": positive.mean().item(),
        "sim_neg_mean": negative.mean().item(),
        "sim_gap": (positive.mean() - negative.mean()).item(),
        "sim_overlap": (negative > threshold).float().mean().item(),
    }


DEFAULT_COLLAPSE_TOLERANCE = 2.0**-8


def embedding_spread(embeddings: torch.Tensor) -> float:
    """max_i ‖ê_i − m̂‖ over L2-normalised rows ê_i, m̂ = their normalised mean (0.0 for fewer than 2 rows)."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        return 0.0
    with torch.autocast(embeddings.device.type, enabled=False):
        x = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        mean = torch.nn.functional.normalize(x.mean(dim=0), dim=0)
        return float((x - mean).norm(dim=-1).max())


def is_collapsed(embeddings: torch.Tensor, tolerance: float = DEFAULT_COLLAPSE_TOLERANCE) -> bool:
    """At least two (distinct) items and every one within `tolerance` of their mean direction."""
    return embeddings.ndim == 2 and embeddings.shape[0] >= 2 and embedding_spread(embeddings) <= tolerance


def plot_similarity_histogram(positive: torch.Tensor, negative: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Write a PNG with the two distributions (densities) and the overlap figure in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = similarity_overlap(positive, negative)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    bins = torch.linspace(-1, 1, 81).tolist()
    ax.hist(negative.float().numpy(), bins=bins, density=True, alpha=0.6, label="negatives", color="tab:red")
    ax.hist(positive.float().numpy(), bins=bins, density=True, alpha=0.6, label="positives", color="tab:blue")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    overlap = stats.get("sim_overlap", float("nan"))
    ax.set_title(f"{title} overlap={overlap:.3f}".strip())
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

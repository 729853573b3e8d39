"""Similarity diagnostics: how far positive and negative cosine similarities are separated.

The overlap figure is the share of negatives scoring above the lowest-decile positive (the 10th
percentile of positive similarities): it falls as negatives get pushed below the positives,
which is the comparison the LLaVE paper opens with.
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

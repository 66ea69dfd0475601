"""Allocation plot: calibration samples per denoising step (and TDAC's density / variety)."""
from __future__ import annotations

from pathlib import Path


def allocation_figure(counts: list[int], timesteps: list[int], path: str | Path, title: str = "",
                      details: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3))
    steps = np.arange(len(counts))
    ax.bar(steps, counts, width=1.0, color="#4477aa", label="samples per step")
    ax.set_xlabel("sampler step (0 = x_T, pure noise)")
    ax.set_ylabel("calibration samples")
    if details and "density" in details:
        ax2 = ax.twinx()
        for key, color in (("density", "#cc6677"), ("variety", "#228833")):
            v = np.asarray(details[key], dtype=float)
            rng = v.max() - v.min()
            ax2.plot(steps, (v - v.min()) / rng if rng > 0 else np.zeros_like(v), color=color, lw=1.2, label=key)
        ax2.set_ylabel("normalised")
        ax2.legend(loc="upper right", fontsize=7)
    if timesteps:
        ticks = steps[:: max(1, len(steps) // 8)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{i}\n t={timesteps[i]}" for i in ticks], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

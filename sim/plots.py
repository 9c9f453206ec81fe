"""PNG plots of evaluation results (matplotlib, headless Agg backend).

``latency_histogram``: per-tick policy latency of every sampler (log-spaced bins, so pop-only ticks
and full inferences show on one axis), with p50 and p99 marks. ``success_plot``: success rate per
sampler with 95 % Wilson intervals, annotated with k/n and network calls per tick.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamdp.sim.evaluate import EvalResult


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _title(result: EvalResult) -> str:
    mode = "latency-aware" if result.latency_aware else "latency not charged"
    return f"{result.task}/{result.obs_mode}\n{result.episodes} episodes per sampler, {mode}"


def latency_histogram(result: EvalResult, path: str | Path) -> Path:
    """Histogram of milliseconds in the policy per control tick, one outline per sampler."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    series = [(r.label, np.asarray(r.tick_latencies("tick"), dtype=float)) for r in result.runs]
    values = np.concatenate([v for _, v in series if v.size]) if any(v.size for _, v in series) else np.ones(1)
    lo, hi = max(values[values > 0].min() if (values > 0).any() else 1e-3, 1e-3), max(values.max(), 1e-2)
    bins = np.geomspace(lo / 1.2, hi * 1.2, 60)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, v) in enumerate(series):
        if not v.size:
            continue
        c = colors[i % len(colors)]
        p50, p99 = np.percentile(v, [50, 99])
        ax.hist(
            np.clip(v, bins[0], bins[-1]),
            bins=bins,
            histtype="step",
            lw=1.6,
            color=c,
            label=f"{label}: p50 {p50:.2f} ms, p99 {p99:.1f} ms",
        )
        ax.axvline(p99, color=c, ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time in the policy per control tick (ms, log scale; dashed: p99)")
    ax.set_ylabel("ticks")
    ax.set_title(_title(result), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def success_plot(result: EvalResult, path: str | Path) -> Path:
    """Success rate per sampler with 95 % Wilson intervals."""
    plt = _pyplot()
    runs = result.runs
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(runs) + 2), 4.4))
    x = np.arange(len(runs))
    rates = np.array([r.success_rate for r in runs])
    ci = np.array([r.success_ci95 for r in runs]).reshape(-1, 2)
    yerr = np.stack([rates - ci[:, 0], ci[:, 1] - rates])
    ax.bar(x, rates, color="#4c72b0", alpha=0.8, width=0.6)
    ax.errorbar(x, rates, yerr=yerr, fmt="none", ecolor="k", capsize=6, lw=1.4)
    for i, r in enumerate(runs):
        ax.text(
            i,
            min(ci[i, 1] + 0.03, 1.02),
            f"{r.successes}/{r.n}\n{r.calls_per_tick:.2f} calls/tick",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x, [r.label for r in runs], fontsize=9)
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_title(_title(result), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

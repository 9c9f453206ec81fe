"""The training curve of a run: loss and closed-loop success against steps, read from ``metrics.jsonl``.

``streamdp-train`` rewrites ``<run>/training_curve.png`` after every closed-loop evaluation (each
writes a checkpoint) and at every other checkpoint, so the picture of a running job is at most one
checkpoint old. The top panel is the training loss of every step (light) and its moving average
(log scale); the bottom one the success rate of each evaluation with its mean max coverage (PushT) or
mean final distance (the arm) on a second axis, the best checkpoint marked. The PNG is replaced
atomically, so a viewer never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics(path: str | Path) -> tuple[dict[int, float], dict[int, dict[str, Any]]]:
    """(step -> loss, step -> evaluation) from ``metrics.jsonl``; later lines win, cut lines are skipped."""
    losses: dict[int, float] = {}
    evals: dict[int, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return losses, evals
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
            step = int(rec["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if "loss" in rec:
            losses[step] = float(rec["loss"])
        if isinstance(rec.get("eval"), dict):
            evals[step] = rec["eval"]
    return losses, evals


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (shorter at the start)."""
    if window <= 1 or values.size == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    n = np.minimum(np.arange(1, values.size + 1), window)
    return (c[1:] - c[np.maximum(0, np.arange(values.size) + 1 - window)]) / n


def plot_training_curve(metrics: str | Path, out: str | Path, title: str = "", best_step: int | None = None) -> Path:
    """Write the two-panel PNG of `metrics` (a ``metrics.jsonl``) to `out`; returns `out`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    losses, evals = read_metrics(metrics)
    out = Path(out)
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[3, 2])
    try:
        if losses:
            steps = np.array(sorted(losses))
            values = np.array([losses[s] for s in steps])
            positive = values > 0
            ax.plot(steps[positive], values[positive], color="tab:blue", alpha=0.25, lw=0.6, label="loss per step")
            window = max(1, len(steps) // 50)
            if window > 1:
                smooth = moving_average(values, window)
                ax.plot(steps[positive], smooth[positive], color="tab:blue", lw=1.6, label=f"mean of {window} steps")
            if positive.any():
                ax.set_yscale("log")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(title, fontsize=9)

        if evals:
            steps = np.array(sorted(evals))
            rate = np.array([evals[s]["success_rate"] for s in steps], dtype=float)
            n = evals[int(steps[-1])].get("episodes")
            bx.plot(steps, rate, "o-", color="tab:green", label=f"success rate ({n} episodes)")
            if best_step in evals:
                bx.plot([best_step], [evals[best_step]["success_rate"]], "*", ms=14, color="tab:red", label="best")
            bx.set_ylim(-0.05, 1.05)
            for key in ("mean_max_coverage", "mean_final_distance"):
                vals = [evals[s].get(key) for s in steps]
                if any(v is not None for v in vals):
                    cx = bx.twinx()
                    cx.plot(steps, [np.nan if v is None else v for v in vals], "s--", color="tab:orange", ms=4)
                    cx.set_ylabel(key.replace("_", " "), color="tab:orange")
                    if key == "mean_max_coverage":
                        cx.set_ylim(-0.05, 1.05)
                    break
            bx.legend(fontsize=8, loc="upper left")
        else:
            bx.text(0.5, 0.5, "no closed-loop evaluation (yet)", ha="center", va="center", transform=bx.transAxes)
        bx.set_ylabel("closed-loop success")
        bx.set_xlabel("optimiser step")
        bx.grid(alpha=0.3)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
    return out

"""First-run demo on the built-in two-mode task: train a small SDP, roll it out closed-loop with every
sampler on the same weights, print modes, network calls and latency, and plot the trajectories.

    python -m streamdp.policy.demo [--steps 1500] [--out outputs/demo]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from streamdp.policy.bench import count_calls  # noqa: E402
from streamdp.policy.config import PolicyConfig, UnetConfig  # noqa: E402
from streamdp.policy.policy import Policy  # noqa: E402
from streamdp.policy.synthetic import ArcTask, mode_summary, train_arc_policy  # noqa: E402


def rollouts(policy: Policy, n: int, steps: int, seed: int) -> tuple[np.ndarray, list[float], list[int]]:
    """Closed-loop rollouts, returning xy paths, ms and calls per inference (ticks that ran the net)."""
    task = ArcTask()
    rng = np.random.default_rng(seed)
    box = count_calls(policy)
    paths, ms, calls = [], [], []
    for _ in range(n):
        pos = rng.normal(0, task.start_noise, size=2).astype(np.float32)
        policy.reset(state=pos)
        path = [pos]
        for _ in range(steps):
            before, t0 = box[0], time.perf_counter()
            pos = policy.select_action({"observation.state": pos}).astype(np.float32)
            if box[0] > before:
                ms.append((time.perf_counter() - t0) * 1e3)
                calls.append(box[0] - before)
            path.append(pos)
        paths.append(np.stack(path))
    return np.stack(paths), ms, calls


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--rollouts", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # One thread: two collapse by ~10x whenever anything else shares the 2 cores (docs/architecture.md).
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    cfg = PolicyConfig(
        action_dim=2,
        state_dim=2,
        n_obs_steps=2,
        n_action_steps=4,
        horizon=16,
        primer="state",
        num_inference_steps=20,
        unet=UnetConfig(down_dims=(32, 64), step_embed_dim=32, cond_dim=64),
        joint_names=["x", "y"],
        fps=10.0,
    )
    print(
        f"[demo] training a {sum(p.numel() for p in Policy(cfg).model.parameters()) / 1e6:.2f} M-parameter SDP "
        f"U-Net on the two-mode arc task for {args.steps} steps (To={cfg.n_obs_steps}, Ta={cfg.n_action_steps}, "
        f"Tp={cfg.horizon}, h={cfg.num_chunks})"
    )
    t0 = time.perf_counter()
    policy, losses = train_arc_policy(cfg, steps=args.steps, seed=args.seed, progress=True)
    print(
        f"[demo] trained in {time.perf_counter() - t0:.0f} s; "
        f"loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-50:]):.3f}"
    )
    ckpt = policy.save_pretrained(args.out / "checkpoint")

    modes = [("ddpm", 100), ("ddim", 10), ("sdp", 100), ("sdp", 20)]
    results = []
    fig, axes = plt.subplots(1, len(modes), figsize=(4 * len(modes), 3.2), sharey=True)
    for ax, (sampler, grid) in zip(axes, modes):
        pol = Policy.from_pretrained(ckpt, sampler=sampler, num_inference_steps=grid, seed=args.seed + 1)
        paths, ms, calls = rollouts(pol, args.rollouts, 28, seed=args.seed + 2)
        summary = mode_summary(paths[:, 1:, 1])
        name = {"ddpm": "DDPM-100", "ddim": f"DDIM-{grid}"}.get(sampler, f"SDP K={grid}")
        results.append(
            {
                "sampler": name,
                "calls_per_obs": float(np.mean(calls)),
                "ms_p50": float(np.median(ms)),
                "ms_p99": float(np.percentile(ms, 99)),
                **summary,
            }
        )
        for p in paths:
            ax.plot(p[:, 0], p[:, 1], alpha=0.6)
        ax.set_title(f"{name}: {np.mean(calls):.1f} calls/obs")
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    fig.suptitle("Closed-loop rollouts on the two-mode arc task (same weights)")
    fig.tight_layout()
    fig.savefig(args.out / "rollouts.png", dpi=100)

    ref = results[0]["ms_p50"]
    print("\n| sampler | calls/obs | ms/obs p50 | ms p99 | ratio to DDPM-100 | upper | lower | neither |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['sampler']} | {r['calls_per_obs']:.1f} | {r['ms_p50']:.2f} | {r['ms_p99']:.2f} | "
            f"{r['ms_p50'] / ref:.3f} | {r['upper']:.2f} | {r['lower']:.2f} | {r['neither']:.2f} |"
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n[demo] {args.rollouts} rollouts per sampler; plot: {args.out / 'rollouts.png'}; checkpoint: {ckpt}")


if __name__ == "__main__":
    main()

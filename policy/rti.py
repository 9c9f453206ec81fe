"""RTI warm start (Real-Time Iteration for diffusion policy; Duan, Yin, Kragic, IROS 2025, arXiv 2508.05396).

Sampler ``rti``: keep the last clean trajectory A (normalised, whole Tp horizon). The first observation
samples fully on the configured grid. Later observations guess G = A shifted left by the number of
actions executed since A was made (popped from the ready queue; Ta per inference under select_action),
the tail repeating the last row; G is forward-noised to a start level k' (train timesteps) and solved on
a short descending grid [k' ... clean] of ``rti_steps`` calls (:func:`rti_grid`), every step moving to its
true previous level (k' = N-1 is full sampling: see :func:`warm_start`). Discrete action dims
(``discrete_action_dims``, e.g. a gripper) are snapped to their normalised extremes (-1/+1) before
noising and thresholded at 0 in the output. A full resample
runs every ``rti_full_every`` observations and whenever the solution's mean absolute difference from its
guess exceeds ``rti_divergence`` (recovery from a wrong mode); ``Policy.rti_stats`` counts both.

Sampler ``sdp_rti`` (the hybrid) runs SDP's rolling ladder on the grid [k' ... clean] (same spacing as
the configured K-level grid) and initialises each roll's fresh tail from the previous solution shifted
by Ta instead of pure noise; its first observation and its resamples are full solves that reseed the
buffer.

``streamdp-calibrate-rti`` picks k': on logged observations it compares, observation by observation,
the warm-started output (guess = the previous full solution shifted by Ta) with full sampling from the
same noise draws, and stores the smallest candidate k' whose mean error on the executed actions is
within tolerance (default: the spread between two full samples) in the checkpoint (``extras["rti"]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from streamdp.policy.schedule import CLEAN, sampler_grid
from streamdp.policy.streaming import shift_trajectory


def rti_grid(start_level: int, steps: int) -> list[int]:
    """Descending train timesteps of a warm solve from k' = start_level in `steps` calls ("trailing"
    spacing as in sampler_grid: the grid starts at k' and its last level steps to clean).

    rti_grid(N - 1, K) == sampler_grid(N, K). More steps than levels below k' are clamped.
    """
    if start_level < 0:
        raise ValueError(f"start level must be >= 0, got {start_level}")
    steps = max(1, min(int(steps), start_level + 1))
    return sampler_grid(start_level + 1, steps)


def snap_discrete(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Discrete dims to their normalised extremes -1/+1 (sign, 0 -> +1)."""
    if not dims:
        return x
    x = x.clone()
    x[..., dims] = torch.where(x[..., dims] >= 0, 1.0, -1.0).to(x.dtype)
    return x


threshold_discrete = snap_discrete  # the output threshold is the same map


def warm_start(schedule: Any, g: torch.Tensor, noise: torch.Tensor, start_level: int) -> torch.Tensor:
    """The guess (B, T, D) forward-noised to k'. At k' = N-1 this is the noise itself: the samplers label
    pure Gaussian with the top level (sampler_grid), where the guess would keep a weight of only
    sqrt(alpha_bar[N-1]) (~5e-4, cosine), which the x0-prediction then divides by; so k' = N-1 is
    exactly full sampling with the same draws."""
    if start_level >= schedule.num_train_steps - 1:
        return noise.clone()
    k = torch.full(g.shape[:-1], start_level, device=g.device)
    return schedule.add_noise(g, noise, k)


def guess(solution: torch.Tensor, shift: int, discrete: list[int]) -> torch.Tensor:
    """Warm-start guess: the solution moved left by `shift` executed actions, held at its last row."""
    return snap_discrete(shift_trajectory(solution, shift), discrete)


def divergence(solution: torch.Tensor, guess_: torch.Tensor, valid_rows: int, discrete: list[int]) -> float:
    """Mean |solution - guess| over the rows the guess really knew (not the held tail), continuous dims."""
    d = solution.shape[-1]
    cont = [i for i in range(d) if i not in set(discrete)] or list(range(d))
    rows = max(1, min(valid_rows, solution.shape[0]))
    return float((solution[:rows, cont] - guess_[:rows, cont]).abs().mean())


def solve(
    policy: Any,
    x: torch.Tensor,
    grid: list[int],
    cond: torch.Tensor,
    generator: torch.Generator,
    mode: str,
) -> torch.Tensor:
    """Run a chunk solve (1, Tp, D) down `grid` to clean with the policy's network and schedule."""
    sched = policy.model.schedule
    tp = x.shape[1]
    for i, k in enumerate(grid):
        k_prev = grid[i + 1] if i + 1 < len(grid) else CLEAN
        kt = torch.full((1, tp), k, device=x.device)
        eps = policy._call(x, kt, cond)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        x = sched.step(x, eps, kt, torch.full_like(kt, k_prev), mode=mode, noise=noise)
    return x


def calibrate(
    policy: Any,
    episodes: list[list[dict[str, Any]]],
    candidates: list[int] | None = None,
    steps: int | None = None,
    tol: float | str = "auto",
    max_obs: int | None = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Errors of warm starts from each candidate k' against full sampling; returns the extras["rti"] entry.

    Inference happens every Ta frames (as under select_action); the history advances every frame. For each
    inference the reference is a full solve on the policy's configured grid; the warm start uses the
    previous reference shifted by Ta as its guess and the same noise draws (common random numbers, which
    reduce but, with stochastic DDPM steps, do not remove sampling noise). `baseline` is the distance
    between two full solves with different draws: how much full sampling itself varies. tol='auto' uses it
    as the tolerance ("a warm start is as close to full sampling as another full sample is").
    """
    c = policy.config
    n_train = c.schedule.num_train_steps
    steps = int(steps or policy.rti_steps)
    if candidates is None:
        candidates = sorted(set(sampler_grid(n_train, min(10, n_train))))
    candidates = sorted({int(k) for k in candidates})
    if not candidates or candidates[0] < 0 or candidates[-1] > n_train - 1:
        raise ValueError(f"candidates must lie in [0, {n_train - 1}], got {candidates}")
    to, ta = c.n_obs_steps, c.n_action_steps
    window = slice(to - 1, to - 1 + ta)
    disc = list(c.discrete_action_dims)
    mode = policy.step_mode
    full_grid = policy.full_grid()
    sched = policy.model.schedule
    errors: dict[int, list[float]] = {k: [] for k in candidates}
    baseline: list[float] = []
    inferences = 0
    counter = 0
    for ep in episodes:
        policy.reset()
        prev = None
        for t, frame in enumerate(ep):
            policy.observe(frame)
            if t % ta:
                continue
            cond = policy._condition()
            counter += 1
            s = seed * 1_000_003 + counter
            g = torch.Generator().manual_seed(s)
            x = torch.randn(1, c.horizon, c.action_dim, generator=g).to(policy.device)
            ref = snap_discrete(solve(policy, x, full_grid, cond, g, mode)[0], disc)
            g2 = torch.Generator().manual_seed(s + 7919)
            x2 = torch.randn(1, c.horizon, c.action_dim, generator=g2).to(policy.device)
            other = snap_discrete(solve(policy, x2, full_grid, cond, g2, mode)[0], disc)
            if prev is not None:
                baseline.append(float((other[window] - ref[window]).abs().mean()))
                gs = guess(prev, ta, disc)
                for k in candidates:
                    gk = torch.Generator().manual_seed(s)
                    noise = torch.randn(1, c.horizon, c.action_dim, generator=gk).to(policy.device)
                    xk = warm_start(sched, gs[None], noise, k)
                    warm = snap_discrete(solve(policy, xk, rti_grid(k, steps), cond, gk, mode)[0], disc)
                    errors[k].append(float((warm[window] - ref[window]).abs().mean()))
            prev = ref
            inferences += 1
            if max_obs and inferences >= max_obs:
                break
        if max_obs and inferences >= max_obs:
            break
    compared = len(errors[candidates[0]])
    if compared == 0:
        raise ValueError("calibration needs at least two inferences in one episode (Ta frames apart)")
    mean_err = {k: sum(v) / len(v) for k, v in errors.items()}
    spread = sum(baseline) / len(baseline)
    tol = spread if tol == "auto" else float(tol)
    within = [k for k in candidates if mean_err[k] <= tol]
    chosen = within[0] if within else min(candidates, key=lambda k: (mean_err[k], k))
    return {
        "start_level": int(chosen),
        "within_tolerance": bool(within),
        "tolerance": float(tol),
        "steps": steps,
        "step_mode": mode,
        "full_grid_levels": len(full_grid),
        "errors": {str(k): v for k, v in mean_err.items()},
        "baseline_full_vs_full": spread,
        "inferences": inferences,
        "compared": compared,
    }


def calibrate_cli(argv: list[str] | None = None) -> dict[str, Any]:
    """streamdp-calibrate-rti checkpoint=DIR dataset=OBS [tol=0.05] [steps=4] [candidates=9,19,...]
    [max_obs=50] [any PolicyConfig field=value, e.g. num_inference_steps=16 step_mode=ddim]"""
    from streamdp.policy.calibration import CliArg, load_episodes, parse_cli
    from streamdp.policy.policy import Policy

    args, overrides = parse_cli(
        argv,
        "Pick the RTI warm-start level k' on logged observations and store it in the checkpoint (extras['rti']).",
        [
            CliArg("checkpoint", str, None, "checkpoint directory (rewritten atomically)"),
            CliArg("dataset", str, None, ".npz of logged observations or a LeRobot dataset root"),
            CliArg("tol", str, "auto", "max mean |warm - full| on executed actions (normalised); auto: full-vs-full"),
            CliArg("steps", int, 0, "warm-solve calls (0: the policy's: config, earlier calibration, or 4)"),
            CliArg("candidates", str, "", "comma-separated k' candidates (default: 10 evenly spaced levels)"),
            CliArg("max_obs", int, 50, "inferences to compare"),
            CliArg("max_frames", int, 0, "dataset frames to read (0: all)"),
            CliArg("seed", int, 0, "noise seed"),
        ],
    )
    path = Path(args.checkpoint)
    policy = Policy.from_pretrained(path, seed=args.seed, **{**overrides, "cache": "none", "cuda_graph": False})
    episodes = load_episodes(args.dataset, max_frames=args.max_frames or None)
    cands = [int(v) for v in args.candidates.split(",") if v.strip()] if args.candidates else None
    tol = args.tol if args.tol == "auto" else float(args.tol)
    entry = calibrate(policy, episodes, cands, args.steps or None, tol, args.max_obs, args.seed)
    entry["dataset"] = str(args.dataset)
    base = Policy.from_pretrained(path)
    base.save_pretrained(path, extras={"rti": entry})
    errs = ", ".join(f"k'={k}: {v:.4f}" for k, v in entry["errors"].items())
    print(f"[rti] mean |warm - full| on executed actions: {errs}")
    print(f"[rti] full vs full (sampling spread): {entry['baseline_full_vs_full']:.4f}")
    verdict = "within" if entry["within_tolerance"] else "NONE within; smallest error"
    print(
        f"[rti] tolerance {entry['tolerance']}: {verdict} -> k'={entry['start_level']}; wrote extras['rti'] to {path}"
    )
    return entry


def calibrate_main(argv: list[str] | None = None) -> None:
    """Console entry point ``streamdp-calibrate-rti`` (see :func:`calibrate_cli`)."""
    calibrate_cli(argv)

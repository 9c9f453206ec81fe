"""Per-observation latency and network calls of every sampler on the same weights.

    python -m streamdp.policy.bench --n-obs 50 --out outputs/bench_policy
    python -m streamdp.policy.bench --accel --threads 1 --out outputs/bench_accel   # inner loops x BAC

Each sampler is loaded from one saved checkpoint (so the weights are bit-identical), fed the same
observation stream, and timed per observation: observe + denoise until Ta clean actions are ready.
Calls are counted on the denoiser itself. Times are medians; compare them as ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamdp.policy.config import PolicyConfig, TransformerConfig, UnetConfig, num_chunks
from streamdp.policy.policy import Policy


@dataclass
class Row:
    denoiser: str
    sampler: str
    grid: int
    calls_median: float
    calls_mean: float
    ms_p50: float
    ms_p99: float
    n_obs: int
    ratio_ms: float = float("nan")
    ratio_calls: float = float("nan")

    @property
    def label(self) -> str:
        return {"ddpm": f"DDPM-{self.grid}", "ddim": f"DDIM-{self.grid}"}.get(self.sampler, f"SDP (K={self.grid})")


def count_calls(policy: Policy) -> list[int]:
    """Wrap the denoiser forward; returns a one-element list holding the running count."""
    box = [0]
    net = policy.model.denoiser
    orig = net.forward

    def counted(*a, **k):  # noqa: ANN002, ANN003
        box[0] += 1
        return orig(*a, **k)

    net.forward = counted
    return box


def measure(
    policy: Policy, observations: list[dict], warmup: int = 3, branches: list[int] | None = None
) -> tuple[list[float], list[int]]:
    """Milliseconds and network calls per observation (one emitted chunk each).

    Calls are the policy's own count (``nfe_total``): a wrapper around the denoiser would miss CUDA-graph
    replays and be traced into a compiled graph. With a block cache attached, the residual-branch computes
    per observation are appended to ``branches``. On CUDA each observation ends with a synchronize."""
    cuda = policy.device.type == "cuda"
    ms, calls = [], []
    for i, obs in enumerate(observations):
        before = policy.nfe_total
        b0 = policy.cache.computed if policy.cache is not None else 0
        t0 = time.perf_counter()
        policy.observe(obs)
        policy.denoise(None)
        policy.pop_ready()
        if cuda:
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            ms.append(dt)
            calls.append(policy.nfe_total - before)
            if branches is not None and policy.cache is not None:
                branches.append(policy.cache.computed - b0)
    return ms, calls


def bench_config(denoiser: str, size: str, horizon: int, n_obs_steps: int, n_action_steps: int) -> PolicyConfig:
    unet = UnetConfig(down_dims=(128, 256, 512)) if size == "default" else UnetConfig(down_dims=(32, 64, 128))
    tr = (
        TransformerConfig(d_model=256, n_heads=4, n_layers=6)
        if size == "default"
        else TransformerConfig(d_model=64, n_layers=2)
    )
    return PolicyConfig(
        action_dim=7,
        state_dim=14,
        n_obs_steps=n_obs_steps,
        n_action_steps=n_action_steps,
        horizon=horizon,
        denoiser=denoiser,
        unet=unet,
        transformer=tr,
    )


def run(
    denoisers: list[str],
    samplers: list[tuple[str, int]],
    n_obs: int,
    size: str = "default",
    horizon: int = 16,
    n_obs_steps: int = 2,
    n_action_steps: int = 4,
    seed: int = 0,
) -> list[Row]:
    rows: list[Row] = []
    rng = np.random.default_rng(seed)
    for den in denoisers:
        cfg = bench_config(den, size, horizon, n_obs_steps, n_action_steps)
        stats = {
            "action": {"min": -np.ones(cfg.action_dim), "max": np.ones(cfg.action_dim)},
            "observation.state": {"min": -np.ones(cfg.state_dim), "max": np.ones(cfg.state_dim)},
        }
        obs = [{"observation.state": rng.uniform(-1, 1, cfg.state_dim).astype(np.float32)} for _ in range(n_obs + 3)]
        with tempfile.TemporaryDirectory() as tmp:
            Policy(cfg, stats=stats, seed=seed).save_pretrained(Path(tmp) / "ckpt")
            group: list[Row] = []
            for sampler, grid in samplers:
                pol = Policy.from_pretrained(Path(tmp) / "ckpt", sampler=sampler, num_inference_steps=grid, seed=seed)
                ms, calls = measure(pol, obs)
                group.append(
                    Row(
                        den,
                        sampler,
                        grid if sampler != "ddpm" else cfg.schedule.num_train_steps,
                        float(np.median(calls)),
                        float(np.mean(calls)),
                        float(np.median(ms)),
                        float(np.percentile(ms, 99)),
                        len(ms),
                    )
                )
        ref = next((r for r in group if r.sampler == "ddpm"), group[0])
        for r in group:
            r.ratio_ms, r.ratio_calls = r.ms_p50 / ref.ms_p50, r.calls_mean / ref.calls_mean
        rows += group
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| denoiser | sampler | calls/obs (median, mean) | ms/obs p50 | ms/obs p99 "
        "| ms ratio to DDPM-100 | calls ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.denoiser} | {r.label} | {r.calls_median:g}, {r.calls_mean:.2f} | {r.ms_p50:.1f} | {r.ms_p99:.1f} "
            f"| {r.ratio_ms:.3f} | {r.ratio_calls:.3f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Inner loops x block caching (RTI / SDP / hybrid / BAC) on one trained transformer
# ----------------------------------------------------------------------------------------------
ACCEL_MODES = ("ddpm", "ddim", "sdp", "rti", "sdp_rti")


@dataclass
class AccelRow:
    sampler: str
    cache: str
    label: str
    calls_mean: float
    calls_median: float
    branches_mean: float  # transformer residual-branch computations per observation
    ms_p50: float
    ms_p99: float
    n_obs: int
    full_solves: int = 0
    resamples: int = 0
    arc_rate: float = float("nan")  # rollouts that follow one of the two arcs (quality, not speed)
    ratio_ms: float = float("nan")
    ratio_calls: float = float("nan")


def accel_config(size: str = "default", grid: int = 10, rti_steps: int = 3) -> PolicyConfig:
    """The two-mode arc task's policy with a transformer denoiser (default: d=256, 6 layers, ~6.5 M)."""
    tr = TransformerConfig(d_model=256, n_heads=4, n_layers=6) if size == "default" else TransformerConfig(64, 4, 2)
    return PolicyConfig(
        action_dim=2,
        state_dim=2,
        n_obs_steps=2,
        n_action_steps=4,
        horizon=16,
        primer="state",
        denoiser="transformer",
        transformer=tr,
        num_inference_steps=grid,
        rti_steps=rti_steps,
        joint_names=["x", "y"],
    )


def mode_overrides(sampler: str, grid: int) -> dict:
    return {"sampler": sampler} if sampler == "ddpm" else {"sampler": sampler, "num_inference_steps": grid}


def mode_label(pol: Policy) -> str:
    c = pol.config
    k = c.num_inference_steps
    return {
        "ddpm": f"DDPM-{c.schedule.num_train_steps}",
        "ddim": f"DDIM-{k}",
        "sdp": f"SDP K={k} (h={c.num_chunks})",
        "rti": f"RTI k'={pol.rti_start_level} S={len(pol.warm_grid())} (full: K={k})",
        "sdp_rti": f"SDP+RTI k'={pol.rti_start_level} K'={len(pol.hybrid_grid())}",
    }[c.sampler]


def arc_rollouts_timed(
    policy: Policy, n_inferences: int, warmup: int, episode_len: int, seed: int
) -> tuple[list[float], list[int], list[int], float]:
    """Closed-loop arc-task rollouts (perfect tracking) until n_inferences are measured after `warmup`.

    Returns ms, calls and branch computations of every inference (select_action ticks that ran the
    sampler), and the fraction of rollouts following one of the arcs."""
    from streamdp.policy.synthetic import ArcTask, mode_summary

    task = ArcTask(episode_len=episode_len)
    rng = np.random.default_rng(seed)
    n_branches = 3 * policy.config.transformer.n_layers
    ms, calls, branches, ys = [], [], [], []
    seen = 0
    while len(ms) < n_inferences:
        pos = rng.normal(0, task.start_noise, size=2).astype(np.float32)
        policy.reset(state=pos)
        path = []
        for _ in range(episode_len):
            nfe0 = policy.nfe_total
            br0 = policy.cache.computed if policy.cache is not None else 0
            t0 = time.perf_counter()
            pos = policy.select_action({"observation.state": pos}).astype(np.float32)
            dt = (time.perf_counter() - t0) * 1e3
            path.append(pos[1])
            made = policy.nfe_total - nfe0
            if made:
                seen += 1
                if seen > warmup and len(ms) < n_inferences:
                    ms.append(dt)
                    calls.append(made)
                    br = policy.cache.computed - br0 if policy.cache is not None else made * n_branches
                    branches.append(br)
        ys.append(path)
    summary = mode_summary(np.asarray(ys))
    return ms, calls, branches, summary["upper"] + summary["lower"]


def run_accel(
    n_obs: int = 50,
    size: str = "default",
    grid: int = 10,
    rti_steps: int = 3,
    train_steps: int = 400,
    calib_obs: int = 12,
    bac_ratio: float = 0.5,
    bac_top: int = 2,
    rti_tol: float | str = "auto",
    episode_len: int = 32,
    warmup: int = 3,
    seed: int = 0,
    out: Path | None = None,
    checkpoint: Path | None = None,
    log: callable = print,  # type: ignore[valid-type]
) -> tuple[list[AccelRow], dict]:
    """ONE table on the same weights: every inner loop (ddpm, ddim, sdp, rti, sdp_rti) with and without BAC.

    The transformer is trained on the built-in arc task (train_steps=0: random weights), saved once; k' is
    calibrated with the RTI tool and BAC schedules with the BAC tool (on logged expert-demo observations),
    both stored in that checkpoint; every row then loads the same checkpoint and runs closed-loop rollouts.
    `checkpoint` reuses the weights of an earlier run (e.g. <out>/checkpoint) instead of training.
    """
    from streamdp.policy.calibration import calibrate_bac, calibrate_rti, merge_bac_extras, save_observations
    from streamdp.policy.synthetic import ArcTask, train_arc_policy

    cfg = accel_config(size, grid, rti_steps)
    t0 = time.perf_counter()
    if checkpoint is not None:
        policy = Policy.from_pretrained(checkpoint)
        policy.extras = {}  # recalibrate from scratch
        log(f"[bench] reusing the weights of {checkpoint}")
    elif train_steps > 0:
        policy, losses = train_arc_policy(cfg, steps=train_steps, seed=seed)
        log(
            f"[bench] trained {size} transformer {train_steps} steps in {time.perf_counter() - t0:.0f} s; "
            f"loss {np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}"
        )
    else:
        from streamdp.policy.synthetic import make_dataset

        stats = make_dataset(ArcTask(), 8, cfg.n_obs_steps, cfg.horizon, seed=seed).stats
        policy = Policy(cfg, stats=stats, seed=seed)
    tmp = tempfile.TemporaryDirectory()
    root = Path(out) if out is not None else Path(tmp.name)
    ckpt = policy.save_pretrained(root / "checkpoint")
    # Logged observations for the calibration tools: expert demonstrations of the arc task.
    demo_rng = np.random.default_rng(seed + 1)
    task = ArcTask(episode_len=episode_len)
    episodes = [[{"observation.state": s} for s in task.demo(demo_rng)[0]] for _ in range(6)]
    save_observations(root / "calibration_obs.npz", episodes)
    info: dict = {"checkpoint": str(ckpt), "calibration": {}}
    t1 = time.perf_counter()
    entry = calibrate_rti(
        Policy.from_pretrained(ckpt, seed=seed, sampler="rti"), episodes, tol=rti_tol, max_obs=calib_obs
    )
    Policy.from_pretrained(ckpt).save_pretrained(ckpt, extras={"rti": entry})
    info["calibration"]["rti"] = entry
    log(
        f"[bench] RTI calibration: k'={entry['start_level']} (tolerance {entry['tolerance']:.4f}, within: "
        f"{entry['within_tolerance']}; full-vs-full {entry['baseline_full_vs_full']:.4f}; "
        f"errors {entry['errors']}) in {time.perf_counter() - t1:.0f} s"
    )
    for sampler in ACCEL_MODES:
        t1 = time.perf_counter()
        pol = Policy.from_pretrained(ckpt, seed=seed, **mode_overrides(sampler, grid))
        b = calibrate_bac(pol, episodes, update_ratio=bac_ratio, top_blocks=bac_top, max_obs=calib_obs)
        base = Policy.from_pretrained(ckpt)
        base.save_pretrained(ckpt, extras={"bac": merge_bac_extras(base.extras.get("bac"), b)})
        info["calibration"][f"bac/{sampler}"] = {
            k: {x: v[x] for x in ("num_steps", "num_updates", "bubbled", "branch_computes_per_solve")}
            for k, v in b["schedules"].items()
        }
        log(f"[bench] BAC calibration for {sampler}: {sorted(b['schedules'])} in {time.perf_counter() - t1:.0f} s")
    rows: list[AccelRow] = []
    for sampler in ACCEL_MODES:
        for cache in ("none", "bac"):
            t1 = time.perf_counter()
            pol = Policy.from_pretrained(ckpt, seed=seed, cache=cache, **mode_overrides(sampler, grid))
            ms, calls, branches, arc = arc_rollouts_timed(pol, n_obs, warmup, episode_len, seed + 2)
            st = pol.rti_stats
            rows.append(
                AccelRow(
                    sampler,
                    cache,
                    mode_label(pol),
                    float(np.mean(calls)),
                    float(np.median(calls)),
                    float(np.mean(branches)),
                    float(np.median(ms)),
                    float(np.percentile(ms, 99)),
                    len(ms),
                    int(st["full"]),
                    int(st["periodic_resamples"] + st["divergence_resamples"]),
                    arc,
                )
            )
            log(
                f"[bench] {rows[-1].label} cache={cache}: {rows[-1].calls_mean:.2f} calls, "
                f"{rows[-1].ms_p50:.1f} ms p50 ({time.perf_counter() - t1:.0f} s)"
            )
    ref = next(r for r in rows if r.sampler == "ddpm" and r.cache == "none")
    for r in rows:
        r.ratio_ms, r.ratio_calls = r.ms_p50 / ref.ms_p50, r.calls_mean / ref.calls_mean
    info["h"] = num_chunks(cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps)
    tmp.cleanup()
    return rows, info


def markdown_accel(rows: list[AccelRow]) -> str:
    lines = [
        "| inner loop | cache | calls/obs mean (median) | branch computes/obs | ms/obs p50 | ms/obs p99 "
        "| p50 ratio to DDPM-100 | calls ratio | full solves / resamples | on an arc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fr = f"{r.full_solves} / {r.resamples}" if r.sampler in ("rti", "sdp_rti") else "-"
        lines.append(
            f"| {r.label} | {r.cache} | {r.calls_mean:.2f} ({r.calls_median:g}) | {r.branches_mean:.1f} "
            f"| {r.ms_p50:.1f} | {r.ms_p99:.1f} | {r.ratio_ms:.3f} | {r.ratio_calls:.3f} | {fr} | {r.arc_rate:.2f} |"
        )
    return "\n".join(lines)


def hardware() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-obs", type=int, default=50)
    ap.add_argument("--size", choices=["default", "tiny"], default="default")
    ap.add_argument("--denoisers", nargs="+", default=["unet", "transformer"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sdp-grids", type=int, nargs="+", default=[100, 10])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_policy"))
    ap.add_argument("--accel", action="store_true", help="one table: ddpm/ddim/sdp/rti/sdp_rti x BAC (transformer)")
    ap.add_argument("--grid", type=int, default=10, help="--accel: K of ddim/sdp/rti full solves")
    ap.add_argument("--train-steps", type=int, default=400, help="--accel: arc-task training steps (0: random)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="--accel: reuse these weights (no training)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.accel:
        rows, info = run_accel(
            args.n_obs,
            args.size,
            grid=args.grid,
            train_steps=args.train_steps,
            out=args.out,
            checkpoint=args.checkpoint,
        )
        table = markdown_accel(rows)
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table + "\n")
        (args.out / "results.json").write_text(
            json.dumps({"hardware": hardware(), "rows": [r.__dict__ for r in rows], **info}, indent=2, default=str)
        )
        print(f"wrote {args.out / 'table.md'} and results.json")
        return
    samplers = [("ddpm", 100), ("ddim", 10)] + [("sdp", k) for k in args.sdp_grids]
    rows = run(args.denoisers, samplers, args.n_obs, args.size)
    table = markdown(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "hardware": hardware(),
                "rows": [r.__dict__ | {"label": r.label} for r in rows],
                "median_of": statistics.median([r.n_obs for r in rows]),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out / 'table.md'} and results.json")


if __name__ == "__main__":
    main()

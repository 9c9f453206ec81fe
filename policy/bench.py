"""Per-observation latency and network calls of every sampler on the same weights.

    python -m streamdp.policy.bench --n-obs 50 --out outputs/bench_policy

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

from streamdp.policy.config import PolicyConfig, TransformerConfig, UnetConfig
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


def measure(policy: Policy, observations: list[dict], warmup: int = 3) -> tuple[list[float], list[int]]:
    """Milliseconds and network calls per observation (one emitted chunk each)."""
    box = count_calls(policy)
    ms, calls = [], []
    for i, obs in enumerate(observations):
        before = box[0]
        t0 = time.perf_counter()
        policy.observe(obs)
        policy.denoise(None)
        policy.pop_ready()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            ms.append(dt)
            calls.append(box[0] - before)
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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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

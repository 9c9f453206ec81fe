"""``streamdp-bench``: every sampler mode on the same weights, in one table: speed per observation and
closed-loop success.

    streamdp-bench                                   # bundled checkpoints, 50 episodes per mode and task
    streamdp-bench --quick                           # the same table in minutes (few episodes, fewer obs)
    streamdp-bench --checkpoint arm_reach_dynamic=runs/arm/checkpoints/last/pretrained --tasks arm_reach_dynamic
    python -m streamdp.sim.bench --quick --out outputs/bench_quick

For each task the checkpoint (``--checkpoint TASK=DIR``, else the one bundled in
``streamdp/sim/assets/checkpoints/<task>``) is copied into the output folder and calibrated there on
logged expert observations of the task (RTI's start level k', BAC's per-branch schedules for every
inner loop; the source checkpoint is never touched). Then every mode loads that one copy:

- inner loops ``ddpm`` (all N train levels), ``ddim:10``, ``sdp`` (the checkpoint's K), ``rti`` and
  ``sdp_rti``;
- each without and with BAC block caching (transformer denoisers; a U-Net has no blocks to cache);
- each on the execution paths this machine has: PyTorch eager always, ``torch.compile`` with
  ``--compile``, and on CUDA the fused Triton kernels and CUDA-graph replay (``cuda_graph``).

Per mode it reports per-observation latency p50/p99 and network calls on a fixed stream of task
observations (observe + denoise until Ta clean actions, as the ROS node does), their ratios to
plain DDPM-100 and DDIM-10 (no cache, eager), and closed-loop success with a 95 % Wilson interval
from ``streamdp-eval``'s rollouts (same seeds for every mode). Output: ``table.md``,
``results.json`` (with the hardware and the load average), ``latency.png`` and ``success.png``.
Timings on a shared CPU are noisy: read the ratios within one run, never across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamdp.sim import bundled_checkpoint

INNER_LOOPS: tuple[tuple[str, int | None], ...] = (
    ("ddpm", None), ("ddim", 10), ("sdp", None), ("rti", None), ("sdp_rti", None),
)
DEFAULT_TASKS = ("arm_reach_dynamic", "pusht")
QUICK = {"episodes": 4, "latency_obs": 12, "calib_obs": 6, "calib_episodes": 2}
FULL = {"episodes": 50, "latency_obs": 50, "calib_obs": 24, "calib_episodes": 6}


@dataclass(frozen=True)
class Mode:
    """One row: an inner loop, a cache and an execution path."""

    sampler: str
    k: int | None  # grid size for ddim (None: the checkpoint's for sdp/rti; N for ddpm)
    cache: str  # none | bac
    path: str  # eager | compile | cuda_graph

    def overrides(self) -> dict[str, Any]:
        """PolicyConfig overrides of this row."""
        o: dict[str, Any] = {"sampler": self.sampler, **runtime_overrides(self.cache, self.path)}
        if self.k is not None:
            o["num_inference_steps"] = self.k
        return o


def runtime_overrides(cache: str, path: str) -> dict[str, Any]:
    """PolicyConfig overrides of a cache and an execution path (the same for every inner loop)."""
    return {"cache": cache, **({path: True} if path in ("cuda_graph", "compile") else {})}


@dataclass
class BenchRow:
    task: str
    sampler: str
    label: str
    cache: str
    path: str
    calls_per_obs: float
    branch_computes_per_obs: float | None
    ms_p50: float
    ms_p99: float
    n_obs: int
    ratio_ddpm: float = math.nan  # ms p50 / plain DDPM-100's (no cache, eager)
    ratio_ddim: float = math.nan
    calls_ratio_ddpm: float = math.nan
    calls_ratio_ddim: float = math.nan
    episodes: int = 0
    successes: int = 0
    success_rate: float = math.nan
    success_ci95: tuple[float, float] = (math.nan, math.nan)
    mean_max_coverage: float | None = None
    eval_calls_per_tick: float = math.nan
    eval_tick_ms_p99: float = math.nan


@dataclass
class TaskBench:
    task: str
    checkpoint: str
    source_checkpoint: str
    denoiser: str
    parameters: int
    rows: list[BenchRow] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def available_paths(device: str, compile_: bool) -> tuple[list[str], list[str]]:
    """Execution paths to run on `device`, and the ones skipped with the reason."""
    paths, skipped = ["eager"], []
    if compile_:
        paths.append("compile")
    else:
        skipped.append("compile: not requested (--compile; first compile costs 20-75 s per mode on a CPU)")
    if device.startswith("cuda"):
        paths.append("cuda_graph")
    else:
        skipped.append("Triton kernels and CUDA graphs: no CUDA device here (the CPU path is the PyTorch reference)")
    return paths, skipped


def calibration_episodes(task: str, n: int, seed: int = 20000) -> list[list[dict[str, np.ndarray]]]:
    """Logged observations for the calibration tools: expert episodes of the task (held-out seeds)."""
    from streamdp.sim.expert_policy import expert_episodes

    eps, _ = expert_episodes(task, n, seed=seed)
    keys = [k for k in eps[0] if k.startswith("observation.")]
    return [[{k: ep[k][t] for k in keys} for t in range(len(ep[keys[0]]))] for ep in eps]


def calibrate_copy(ckpt: Path, episodes: list, modes: Sequence[Mode], calib_obs: int, log: Callable) -> dict:
    """RTI k' and BAC schedules for every inner loop that needs them, written into the copy `ckpt`."""
    from streamdp.policy.calibration import calibrate_bac, calibrate_rti, merge_bac_extras
    from streamdp.policy.policy import Policy

    info: dict[str, Any] = {}
    base = Policy.from_pretrained(ckpt)
    if any(m.sampler in ("rti", "sdp_rti") for m in modes):
        t = time.perf_counter()
        entry = calibrate_rti(Policy.from_pretrained(ckpt, sampler="rti"), episodes, max_obs=calib_obs)
        base.save_pretrained(ckpt, extras={"rti": entry})
        info["rti"] = {k: entry[k] for k in ("start_level", "tolerance", "within_tolerance") if k in entry}
        log(f"[bench]   RTI k'={entry['start_level']} (tolerance {entry['tolerance']:.4f}) "
            f"in {time.perf_counter() - t:.0f} s")
    if base.config.denoiser == "transformer" and any(m.cache == "bac" for m in modes):
        for sampler, k in sorted({(m.sampler, m.k) for m in modes if m.cache == "bac"}, key=str):
            t = time.perf_counter()
            over = Mode(sampler, k, "none", "eager").overrides()
            b = calibrate_bac(Policy.from_pretrained(ckpt, **over), episodes, max_obs=calib_obs)
            cur = Policy.from_pretrained(ckpt)
            cur.save_pretrained(ckpt, extras={"bac": merge_bac_extras(cur.extras.get("bac"), b)})
            info[f"bac/{sampler}"] = {s: v["branch_computes_per_solve"] for s, v in b["schedules"].items()}
            log(f"[bench]   BAC schedules for {sampler}: {sorted(b['schedules'])} in {time.perf_counter() - t:.0f} s")
    return info


def latency(ckpt: Path, mode: Mode, observations: list[dict], device: str, warmup: int = 3) -> dict[str, Any]:
    """ms and calls per observation (observe + denoise to the next Ta clean actions), branch computes."""
    from streamdp.policy.bench import measure
    from streamdp.policy.policy import Policy

    pol = Policy.from_pretrained(ckpt, device=device, **mode.overrides())
    branches: list[int] = []
    ms, calls = measure(pol, observations, warmup, branches)
    c = pol.config
    k = c.num_inference_steps
    label = {"ddpm": f"DDPM-{c.schedule.num_train_steps}", "ddim": f"DDIM-{k}", "sdp": f"SDP K={k}",
             "rti": f"RTI k'={pol.rti_start_level} (K={k})", "sdp_rti": f"SDP+RTI k'={pol.rti_start_level}"}[c.sampler]
    n_branch = 3 * c.transformer.n_layers if c.denoiser == "transformer" else None
    return {
        "label": label,
        "ms_p50": float(np.median(ms)), "ms_p99": float(np.percentile(ms, 99)), "n_obs": len(ms),
        "calls": float(np.mean(calls)),
        "branches": float(np.mean(branches)) if branches else (float(np.mean(calls)) * n_branch if n_branch else None),
    }


def bench_task(
    task: str,
    checkpoint: Path,
    out: Path,
    episodes: int,
    latency_obs: int,
    calib_obs: int,
    calib_episodes: int,
    device: str = "cpu",
    compile_: bool = False,
    workers: int = 1,
    seed: int = 10000,
    loops: Sequence[tuple[str, int | None]] = INNER_LOOPS,
    log: Callable[[str], None] = print,
) -> TaskBench:
    """Calibrate a copy of `checkpoint`, then measure latency and closed-loop success of every mode."""
    from streamdp.policy.checkpoint import read_config
    from streamdp.policy.policy import Policy
    from streamdp.sim.evaluate import SamplerSpec, evaluate

    t_task = time.perf_counter()
    cfg, _ = read_config(checkpoint)
    dst = out / task / "checkpoint"
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, dst)
    paths, skipped = available_paths(device, compile_)
    caches = ["none", "bac"] if cfg.denoiser == "transformer" else ["none"]
    if cfg.denoiser != "transformer":
        skipped.append(f"bac: the {cfg.denoiser} denoiser has no transformer blocks to cache")
    modes = [Mode(s, k, c, p) for p in paths for c in caches for s, k in loops
             if not (p == "compile" and c == "bac")]
    if compile_ and "bac" in caches:
        skipped.append("compile + bac: BAC's per-step branch skipping is not compiled")
    n_params = sum(p.numel() for p in Policy.from_pretrained(checkpoint).model.parameters())
    tb = TaskBench(task, str(dst), str(checkpoint), cfg.denoiser, n_params, skipped=skipped)
    log(f"[bench] {task}: {cfg.denoiser} {n_params / 1e6:.2f} M parameters, To={cfg.n_obs_steps} "
        f"Ta={cfg.n_action_steps} Tp={cfg.horizon} K={cfg.num_inference_steps}; {len(modes)} modes")
    eps = calibration_episodes(task, calib_episodes)
    tb.calibration = calibrate_copy(dst, eps, modes, calib_obs, log)
    stream = [o for ep in eps for o in ep][: latency_obs + 3]
    while len(stream) < latency_obs + 3:
        stream += stream
    stream = stream[: latency_obs + 3]
    for m in modes:
        t = time.perf_counter()
        lat = latency(dst, m, stream, device)
        tb.rows.append(BenchRow(task, m.sampler, lat["label"], m.cache, m.path, lat["calls"], lat["branches"],
                                lat["ms_p50"], lat["ms_p99"], lat["n_obs"]))
        log(f"[bench]   {lat['label']:<24} cache={m.cache:<4} {m.path:<10} {lat['calls']:6.1f} calls "
            f"{lat['ms_p50']:8.1f} ms p50 ({time.perf_counter() - t:.0f} s)")
    for p in paths:
        for c in caches:
            group = [r for r in tb.rows if r.path == p and r.cache == c]
            if not group:
                continue
            specs = [SamplerSpec(m.sampler, m.k) for m in modes if m.path == p and m.cache == c]
            t = time.perf_counter()
            res = evaluate(dst, task, sampler=specs, episodes=episodes, seed=seed, workers=workers,
                           device=device, policy_overrides=runtime_overrides(c, p),
                           out=out / task / f"eval_{c}_{p}")
            for r, run in zip(group, res.runs):
                r.episodes, r.successes = run.n, run.successes
                r.success_rate, r.success_ci95 = run.success_rate, run.success_ci95
                r.mean_max_coverage = run.mean_max_coverage
                r.eval_calls_per_tick = run.calls_per_tick
                r.eval_tick_ms_p99 = float(run.latency_ms["tick"]["p99"] or math.nan)
            log(f"[bench]   closed loop cache={c} {p}: {episodes} episodes x {len(specs)} samplers "
                f"in {time.perf_counter() - t:.0f} s: "
                + ", ".join(f"{r.label} {r.successes}/{r.episodes}" for r in group))
    # Ratios against the plain baselines (no cache, eager PyTorch): what every speed-up is judged by.
    base = [r for r in tb.rows if r.path == "eager" and r.cache == "none"]
    ref_ddpm = next((r for r in base if r.sampler == "ddpm"), None)
    ref_ddim = next((r for r in base if r.sampler == "ddim"), None)
    for r in tb.rows:
        if ref_ddpm:
            r.ratio_ddpm, r.calls_ratio_ddpm = r.ms_p50 / ref_ddpm.ms_p50, r.calls_per_obs / ref_ddpm.calls_per_obs
        if ref_ddim:
            r.ratio_ddim, r.calls_ratio_ddim = r.ms_p50 / ref_ddim.ms_p50, r.calls_per_obs / ref_ddim.calls_per_obs
    tb.seconds = time.perf_counter() - t_task
    return tb


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown(tasks: Sequence[TaskBench]) -> str:
    """One Markdown table: every task x mode with speed, ratios and closed-loop success."""
    lines = [
        "| task | mode | cache | path | calls/obs | ms/obs p50 | ms/obs p99 | ms ratio to DDPM-100 | to DDIM-10 "
        "| calls ratio to DDPM-100 | success (95% CI) | extra |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tb in tasks:
        for r in tb.rows:
            lo, hi = r.success_ci95
            succ = (f"{r.successes}/{r.episodes} = {r.success_rate:.2f} [{lo:.2f}, {hi:.2f}]" if r.episodes else "-")
            extra = f"coverage {r.mean_max_coverage:.2f}" if r.mean_max_coverage is not None else ""
            if r.branch_computes_per_obs is not None and r.cache == "bac":
                extra = (extra + "; " if extra else "") + f"{r.branch_computes_per_obs:.0f} branch computes/obs"
            lines.append(
                f"| {tb.task} | {r.label} | {r.cache} | {r.path} | {_f(r.calls_per_obs, '.2f')} | {_f(r.ms_p50)} "
                f"| {_f(r.ms_p99)} | {_f(r.ratio_ddpm, '.3f')} | {_f(r.ratio_ddim, '.3f')} "
                f"| {_f(r.calls_ratio_ddpm, '.3f')} | {succ} | {extra} |"
            )
    return "\n".join(lines)


def plots(tasks: Sequence[TaskBench], out: Path) -> list[Path]:
    """latency.png (ms p50 per mode, log scale, calls on the bars) and success.png (rate with 95 % CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, tb in zip(axes[0], tasks):
        names = [f"{r.label}\n{r.cache}/{r.path}" for r in tb.rows]
        y = np.arange(len(tb.rows))
        ax.barh(y, [r.ms_p50 for r in tb.rows], xerr=[[0] * len(y), [r.ms_p99 - r.ms_p50 for r in tb.rows]],
                color=["C1" if r.cache == "bac" else "C0" for r in tb.rows])
        for yi, r in zip(y, tb.rows):
            ax.text(r.ms_p50, yi, f" {r.calls_per_obs:.1f} calls", va="center", fontsize=7)
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("ms per observation (p50, bar to p99)")
        ax.set_title(tb.task)
    fig.tight_layout()
    files.append(out / "latency.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, tb in zip(axes[0], tasks):
        rows = [r for r in tb.rows if r.episodes]
        x = np.arange(len(rows))
        rate = np.array([r.success_rate for r in rows])
        lo = np.array([r.success_ci95[0] for r in rows])
        hi = np.array([r.success_ci95[1] for r in rows])
        ax.bar(x, rate, yerr=[rate - lo, hi - rate], capsize=3,
               color=["C1" if r.cache == "bac" else "C0" for r in rows])
        ax.set_xticks(x, [f"{r.label}\n{r.cache}/{r.path}" for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"success ({rows[0].episodes if rows else 0} episodes, 95% Wilson CI)")
        ax.set_title(tb.task)
    fig.tight_layout()
    files.append(out / "success.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def _parse_ckpts(items: Sequence[str]) -> dict[str, Path]:
    out = {}
    for it in items:
        task, sep, path = it.partition("=")
        if not sep or not task or not path:
            raise SystemExit(f"--checkpoint {it!r}: expected TASK=DIR, e.g. arm_reach_dynamic=runs/arm/ckpt")
        out[task] = Path(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help=f"few episodes and observations: {QUICK}")
    ap.add_argument("--tasks", nargs="+", default=None, help=f"tasks to bench (default: {list(DEFAULT_TASKS)})")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="TASK=DIR",
                    help="checkpoint per task (default: the bundled one)")
    ap.add_argument("--episodes", type=int, default=None, help="closed-loop episodes per mode and task")
    ap.add_argument("--latency-obs", type=int, default=None, help="timed observations per mode")
    ap.add_argument("--calib-obs", type=int, default=None, help="inferences recorded by each calibration")
    ap.add_argument("--workers", type=int, default=1, help="evaluation processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in this process (latency timing)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (slow first compile)")
    ap.add_argument("--seed", type=int, default=10000, help="first evaluation seed (episode i: seed + i)")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    a = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from streamdp.sim.evaluate import hardware

    torch.set_num_threads(max(1, a.threads))
    preset = QUICK if a.quick else FULL
    episodes = a.episodes or preset["episodes"]
    latency_obs = a.latency_obs or preset["latency_obs"]
    calib_obs = a.calib_obs or preset["calib_obs"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    given = _parse_ckpts(a.checkpoint)
    tasks = a.tasks or (list(given) if given else list(DEFAULT_TASKS))
    ckpts = {}
    for t in tasks:
        c = given.get(t) or bundled_checkpoint(t)
        if c is None:
            raise SystemExit(f"no checkpoint for task {t!r}: pass --checkpoint {t}=DIR (none is bundled for it)")
        if not (Path(c) / "config.json").is_file():
            raise SystemExit(f"--checkpoint {t}={c}: not a checkpoint directory (no config.json)")
        ckpts[t] = Path(c)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = [bench_task(t, ckpts[t], a.out, episodes, latency_obs, calib_obs, preset["calib_episodes"],
                          device=device, compile_=a.compile, workers=a.workers, seed=a.seed) for t in tasks]
    table = markdown(results)
    files = plots(results, a.out)
    hw = hardware()
    hw["device"] = device
    if device.startswith("cuda"):
        hw["cuda_device"] = torch.cuda.get_device_name()
    doc = {"format": "streamdp-bench/1", "quick": a.quick, "episodes": episodes, "latency_obs": latency_obs,
           "seed": a.seed, "hardware": hw, "seconds": time.perf_counter() - t0,
           "tasks": [{**{k: v for k, v in asdict(tb).items() if k != "rows"},
                      "rows": [asdict(r) for r in tb.rows]} for tb in results]}
    (a.out / "table.md").write_text(table + "\n")
    (a.out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    print(table)
    for tb in results:
        for s in tb.skipped:
            print(f"[bench] {tb.task}: skipped {s}")
    print(f"[bench] {time.perf_counter() - t0:.0f} s on {hw.get('cpu') or hw.get('machine')} "
          f"({device}); wrote {a.out / 'table.md'}, results.json, " + ", ".join(f.name for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``streamdp-bench``: every sampler mode on the same weights, in one table: speed per observation and
closed-loop success.

    streamdp-bench                                   # bundled checkpoints, 50 episodes per mode and task
    streamdp-bench quick=true                        # the same table in minutes (few episodes, fewer obs)
    streamdp-bench tasks=arm_reach_dynamic +checkpoints.arm_reach_dynamic=runs/arm/checkpoints/last/pretrained
    streamdp-bench tasks=arc quick=true              # the two-mode arc task: trains a small transformer first
    python -m streamdp.sim.bench quick=true out=outputs/bench_quick

For each task the checkpoint (``+checkpoints.TASK=DIR``, else the one bundled in
``streamdp/sim/assets/checkpoints/<task>``, else one trained for ``train_steps`` on the task's expert
demos) is copied into the output folder and calibrated there on logged expert observations of the
task (RTI's start level k', BAC's per-branch schedules for every inner loop; the source checkpoint is
never touched). Then every mode loads that one copy:

- inner loops ``ddpm`` (all N train levels), ``ddim:10``, ``sdp`` (the checkpoint's K), ``rti`` and
  ``sdp_rti``;
- each without and with BAC block caching (transformer denoisers; a U-Net has no blocks to cache);
- each on the execution paths this machine has: PyTorch eager always, ``torch.compile`` with
  ``compile=true``, and on CUDA the fused Triton kernels and CUDA-graph replay (``cuda_graph``).

Per mode it reports per-observation latency p50/p99 and network calls on a fixed stream of task
observations (observe + denoise until Ta clean actions, as the ROS node does), their ratios to
plain DDPM-100 and DDIM-10 (no cache, eager), and closed-loop success with a 95 % Wilson interval
from ``streamdp-eval``'s rollouts (same seeds for every mode). Output: ``table.md``,
``results.json`` (with the hardware and the load average), ``latency.png`` and ``success.png``.
Timings on a shared CPU are noisy: read the ratios within one run, never across runs.
"""

from __future__ import annotations

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

from streamdp.policy import cli
from streamdp.policy.cli import UserError, opt
from streamdp.sim import bundled_checkpoint

INNER_LOOPS: tuple[tuple[str, int | None], ...] = (
    ("ddpm", None), ("ddim", 10), ("sdp", None), ("rti", None), ("sdp_rti", None),
)
DEFAULT_TASKS = ("arm_reach_dynamic", "pusht")
QUICK = {"episodes": 4, "latency_obs": 12, "calib_obs": 6, "calib_episodes": 2}
FULL = {"episodes": 50, "latency_obs": 50, "calib_obs": 24, "calib_episodes": 12}


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
    eval_tick_ms_mean: float = math.nan  # policy wall time per control tick, averaged over all ticks
    start_level: int | None = None  # RTI's calibrated k' (rti, sdp_rti rows)
    # BAC rows: the schedule's open-loop action error (cached vs not, same draws) and the spread between two
    # independent full samples, as streamdp-calibrate-bac measures them; error > spread: it would refuse it
    bac_error: float | None = None
    bac_spread: float | None = None
    bac_update_ratio: float | None = None  # the schedule's update ratio (the calibration's search may raise it)


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
        skipped.append("compile: not requested (compile=true; first compile costs 20-75 s per mode on a CPU)")
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
        # k' on up to 10 chained inferences of every logged episode (its bootstrap resamples episodes)
        rti = Policy.from_pretrained(ckpt, sampler="rti")
        entry = calibrate_rti(rti, episodes, max_obs=10 * len(episodes), per_episode=10)
        base.save_pretrained(ckpt, extras={"rti": entry})
        info["rti"] = {k: entry[k] for k in ("start_level", "tolerance", "within_tolerance") if k in entry}
        log(f"[bench]   RTI k'={entry['start_level']} (tolerance {entry['tolerance']:.4f}) "
            f"in {time.perf_counter() - t:.0f} s")
    if base.config.denoiser == "transformer" and any(m.cache == "bac" for m in modes):
        for sampler, k in sorted({(m.sampler, m.k) for m in modes if m.cache == "bac"}, key=str):
            t = time.perf_counter()
            over = Mode(sampler, k, "none", "eager").overrides()
            b = calibrate_bac(Policy.from_pretrained(ckpt, **over), episodes, max_obs=calib_obs, search=True)
            cur = Policy.from_pretrained(ckpt)
            cur.save_pretrained(ckpt, extras={"bac": merge_bac_extras(cur.extras.get("bac"), b)})
            info[f"bac/{sampler}"] = {
                "branch_computes_per_solve": {s: v["branch_computes_per_solve"] for s, v in b["schedules"].items()},
                "open_loop_error": b["open_loop_error"], "sample_spread": b["sample_spread"],
                "update_ratio": b["update_ratio"]}
            log(f"[bench]   BAC schedules for {sampler}: {sorted(b['schedules'])}, update ratio {b['update_ratio']:g}, "
                f"open-loop error {b['open_loop_error']:.4f} vs spread {b['sample_spread']:.4f} "
                f"in {time.perf_counter() - t:.0f} s")
    return info


def latency(ckpt: Path, mode: Mode, observations: list[dict], device: str, warmup: int = 3) -> dict[str, Any]:
    """ms and calls per observation (observe + denoise to the next Ta clean actions), branch computes."""
    from streamdp.policy.policy import Policy
    from streamdp.sim.metrics import measure, policy_label, summarize

    pol = Policy.from_pretrained(ckpt, device=device, **mode.overrides())
    c = pol.config
    n_branch = 3 * c.transformer.n_layers if c.denoiser == "transformer" else None
    start = pol.settings.rti_start_level if c.sampler in ("rti", "sdp_rti") else None
    return {"label": policy_label(pol), "start_level": start, **summarize(measure(pol, observations, warmup), n_branch)}


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
        vouch = tb.calibration.get(f"bac/{m.sampler}", {}) if m.cache == "bac" else {}
        tb.rows.append(BenchRow(task, m.sampler, lat["label"], m.cache, m.path, lat["calls"], lat["branches"],
                                lat["ms_p50"], lat["ms_p99"], lat["n_obs"], start_level=lat["start_level"],
                                bac_error=vouch.get("open_loop_error"), bac_spread=vouch.get("sample_spread"),
                                bac_update_ratio=vouch.get("update_ratio")))
        log(f"[bench]   {lat['label']:<24} cache={m.cache:<4} {m.path:<10} {lat['calls']:6.1f} calls "
            f"{lat['ms_p50']:8.1f} ms p50 ({time.perf_counter() - t:.0f} s)")
    for p in paths:
        for c in caches:
            closed_loop(tb, dst, [m for m in modes if m.path == p and m.cache == c], out, episodes, seed, workers,
                        device, log)
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


def closed_loop(tb: TaskBench, ckpt: Path, modes: Sequence[Mode], out: Path, episodes: int, seed: int,
                workers: int, device: str, log: Callable[[str], None]) -> None:
    """Closed-loop success of `modes` (one cache, one path) with streamdp-eval, into their rows of `tb`."""
    from streamdp.sim.evaluate import SamplerSpec, evaluate

    if not modes:
        return
    cache, path = modes[0].cache, modes[0].path
    group = [r for r in tb.rows if r.path == path and r.cache == cache]
    t = time.perf_counter()
    res = evaluate(ckpt, tb.task, sampler=[SamplerSpec(m.sampler, m.k) for m in modes], episodes=episodes,
                   seed=seed, workers=workers, device=device, policy_overrides=runtime_overrides(cache, path),
                   out=out / tb.task / f"eval_{cache}_{path}")
    for r, run in zip(group, res.runs):
        assert r.label == run.label, (r.label, run.label)  # one name per run (sim.metrics.sampler_label)
        r.episodes, r.successes = run.n, run.successes
        r.success_rate, r.success_ci95 = run.success_rate, run.success_ci95
        r.mean_max_coverage = run.mean_max_coverage
        r.eval_calls_per_tick = run.calls_per_tick
        r.eval_tick_ms_p99 = float(run.latency_ms["tick"]["p99"] or math.nan)
        ticks = run.tick_latencies("tick")
        r.eval_tick_ms_mean = float(np.mean(ticks)) if ticks else math.nan
    log(f"[bench]   closed loop cache={cache} {path}: {episodes} episodes x {len(modes)} samplers "
        f"in {time.perf_counter() - t:.0f} s: " + ", ".join(f"{r.label} {r.successes}/{r.episodes}" for r in group))


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown(tasks: Sequence[TaskBench]) -> str:
    """One Markdown table: every task x mode with speed, ratios and closed-loop success."""
    from streamdp.sim.metrics import markdown_table

    header = ["task", "mode", "cache", "path", "calls/obs", "ms/obs p50", "ms/obs p99", "ms ratio to DDPM-100",
              "to DDIM-10", "calls ratio to DDPM-100", "success (95% CI)", "extra"]
    return markdown_table(header, [_row_cells(tb.task, r) for tb in tasks for r in tb.rows])


def _row_cells(task: str, r: BenchRow) -> list[str]:
    lo, hi = r.success_ci95
    succ = f"{r.successes}/{r.episodes} = {r.success_rate:.2f} [{lo:.2f}, {hi:.2f}]" if r.episodes else "-"
    notes = [f"k'={r.start_level}"] if r.start_level is not None else []
    if r.mean_max_coverage is not None:
        notes.append(f"coverage {r.mean_max_coverage:.2f}")
    if r.branch_computes_per_obs is not None and r.cache == "bac":
        notes.append(f"{r.branch_computes_per_obs:.0f} branch computes/obs")
    if r.bac_error is not None and r.bac_spread is not None:
        verdict = " (not vouched for)" if r.bac_error > r.bac_spread else ""
        ratio = f"update ratio {r.bac_update_ratio:g}; " if r.bac_update_ratio is not None else ""
        notes.append(f"{ratio}open-loop error {r.bac_error:.4f} vs spread {r.bac_spread:.4f}{verdict}")
    return [task, r.label, r.cache, r.path, _f(r.calls_per_obs, ".2f"), _f(r.ms_p50), _f(r.ms_p99),
            _f(r.ratio_ddpm, ".3f"), _f(r.ratio_ddim, ".3f"), _f(r.calls_ratio_ddpm, ".3f"), succ, "; ".join(notes)]


def plots(tasks: Sequence[TaskBench], out: Path) -> list[Path]:
    """latency.png (ms p50 per mode, log scale, calls on the bars), success.png (rate with 95 % CI) and
    tradeoff.png (success against the policy's mean ms per control tick in the closed loop, one point per
    mode)."""
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
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, tb in zip(axes[0], tasks):
        rows = [r for r in tb.rows if r.episodes and math.isfinite(r.eval_tick_ms_mean)]
        for r in rows:
            lo, hi = r.success_ci95
            bac = r.cache == "bac"
            ax.errorbar(r.eval_tick_ms_mean, r.success_rate, yerr=[[r.success_rate - lo], [hi - r.success_rate]],
                        fmt="s" if bac else "o", color="C1" if bac else "C0", capsize=3)  # fmt: skip
            ax.annotate(f"{r.label}{' +BAC' if bac else ''}", (r.eval_tick_ms_mean, r.success_rate), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("policy ms per control tick (mean over all ticks, closed loop)")
        ax.set_ylabel(f"success ({rows[0].episodes if rows else 0} episodes, 95% Wilson CI)")
        ax.set_title(f"{tb.task}: success vs cost (circle: no cache, square: BAC)")
    fig.tight_layout()
    files.append(out / "tradeoff.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


@dataclass
class BenchConfig:
    """``streamdp-bench`` keys (config/bench.yaml holds presets only)."""

    quick: bool = opt(False, "presets " + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + " (else "
                      + ", ".join(f"{k}={v}" for k, v in FULL.items()) + ")")
    tasks: list[str] = opt(help="tasks to bench, e.g. tasks=arm_reach_dynamic,arc (empty: the tasks of "
                           f"`checkpoints`, else {','.join(DEFAULT_TASKS)})", factory=list)
    checkpoints: dict[str, str] = opt(help="checkpoint per task, e.g. +checkpoints.pusht=DIR (default: the bundled "
                                      "one; a task with none is trained on expert demos first)", factory=dict)
    train_steps: int = opt(1500, "training steps for a task with no checkpoint (e.g. arc: a small transformer)")
    episodes: int = opt(0, "closed-loop episodes per mode and task (0: the preset's)")
    latency_obs: int = opt(0, "timed observations per mode (0: the preset's)")
    calib_obs: int = opt(0, "inferences recorded by each BAC calibration (0: the preset's; RTI uses 10 per episode)")
    workers: int = opt(1, "evaluation processes")
    threads: int = opt(1, "torch threads in this process (latency timing)")
    device: str = opt("auto", "auto (CUDA when present) | cpu | cuda")
    compile: bool = opt(False, "add torch.compile rows (slow first compile)")
    seed: int = opt(10000, "first evaluation seed (episode i: seed + i)")
    out: str = opt("outputs/bench", "output folder")

    def preset(self, key: str) -> int:
        """An explicit value of `key`, else the quick/full preset's."""
        return int(getattr(self, key, 0) or (QUICK if self.quick else FULL)[key])


LIST_KEYS = ("tasks",)


def task_checkpoints(cfg: BenchConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """The checkpoint of every task: given, bundled, or trained now on expert demos (`train_steps`)."""
    tasks = cfg.tasks or (list(cfg.checkpoints) if cfg.checkpoints else list(DEFAULT_TASKS))
    ckpts = {}
    for t in tasks:
        c = cfg.checkpoints.get(t) or bundled_checkpoint(t)
        if c is None:
            c = train_checkpoint(t, out / t / "trained", cfg.train_steps, log)
        if not (Path(c) / "config.json").is_file():
            raise UserError(f"checkpoints.{t}={c}: not a checkpoint directory (no config.json)")
        ckpts[t] = Path(c)
    return ckpts


def train_checkpoint(task: str, out: Path, steps: int, log: Callable[[str], None] = print) -> Path:
    """A small transformer (so BAC has blocks to cache) trained on the task's expert demos."""
    from streamdp.policy.config import TransformerConfig
    from streamdp.sim.expert_policy import train_expert_policy

    if steps < 1:
        raise UserError(f"no checkpoint for task {task!r}: pass +checkpoints.{task}=DIR or train_steps>0")
    t = time.perf_counter()
    pol = train_expert_policy(task, out=out, steps=steps, denoiser="transformer", num_inference_steps=10,
                              transformer=TransformerConfig(d_model=64, n_heads=4, n_layers=2))
    log(f"[bench] {task}: no checkpoint given or bundled; trained one for {steps} steps in "
        f"{time.perf_counter() - t:.0f} s (loss {pol.extras['training']['final_loss']:.4f}) -> {out}")
    return out


def run(cfg: BenchConfig) -> list[TaskBench]:
    """The benchmark of `cfg`: table.md, results.json and the plots in ``cfg.out``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from streamdp.sim.metrics import hardware

    torch.set_num_threads(max(1, cfg.threads))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpts = task_checkpoints(cfg, out)
    episodes, latency_obs = cfg.preset("episodes"), cfg.preset("latency_obs")
    results = [bench_task(t, ckpts[t], out, episodes, latency_obs, cfg.preset("calib_obs"),
                          cfg.preset("calib_episodes"), device=device, compile_=cfg.compile, workers=cfg.workers,
                          seed=cfg.seed) for t in ckpts]
    table = markdown(results)
    files = plots(results, out)
    hw = hardware(device)
    doc = {"format": "streamdp-bench/1", "quick": cfg.quick, "episodes": episodes, "latency_obs": latency_obs,
           "seed": cfg.seed, "hardware": hw, "seconds": time.perf_counter() - t0,
           "tasks": [{**{k: v for k, v in asdict(tb).items() if k != "rows"},
                      "rows": [asdict(r) for r in tb.rows]} for tb in results]}
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    print(table)
    for tb in results:
        for s in tb.skipped:
            print(f"[bench] {tb.task}: skipped {s}")
    print(f"[bench] {time.perf_counter() - t0:.0f} s on {hw['cpu']} ({device}); wrote {out / 'table.md'}, "
          "results.json, " + ", ".join(f.name for f in files))
    return results


def load_config(overrides: Sequence[str] = ()) -> BenchConfig:
    """The validated ``streamdp-bench`` config of these ``key=value`` overrides."""
    return cli.load_config("bench", BenchConfig, overrides, LIST_KEYS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-bench [key=value ...]``."""
    return cli.run_job("streamdp-bench", "bench", BenchConfig, run, argv, doc=__doc__.split("\n\n")[0],
                       groups=(), list_keys=LIST_KEYS)


if __name__ == "__main__":
    sys.exit(main())

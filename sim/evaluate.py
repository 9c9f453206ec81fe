"""Closed-loop evaluation of a policy checkpoint in simulation: success, latency, network calls, smoothness.

    streamdp-eval checkpoint=DIR task=NAME [sampler=sdp | sampler=ddpm,ddim:10,sdp] [episodes=N]
                  [num_inference_steps=K] [seed=S] [latency_aware=true] [workers=W] [video=N] [rerun=N] [out=DIR]
    python -m streamdp.sim.evaluate checkpoint=ckpt/ task=pusht sampler=ddpm,sdp episodes=50 workers=2

Overrides are hydra ``key=value`` pairs on ``config/eval.yaml`` (``task=NAME`` picks the task card, as
in ``streamdp-collect``). Several samplers given as a list run on the *same* weights and seeds, so
their success rates and latencies compare directly. ``expert=true`` adds the task's scripted expert as
one more row on the same seeds (its own success rate, for comparison).

**Suites.** Task options naming several tasks (LIBERO's ``task.kwargs.task_id=all``) run ``episodes``
episodes of every task (episode i of each: seed + i; LIBERO's fixed initial state (seed + i) mod 50), and
the result has the success per task with 95 % intervals as well as over the suite. The env's instruction
goes to the policy as ``obs["task"]`` in every task (a multi-task policy is conditioned on it).

Python: :func:`evaluate` returns an :class:`EvalResult`; :meth:`EvalResult.save` writes ``result.json``
and the PNG plots.

**What one episode is.** Episode ``i`` resets the env with seed ``seed + i`` and the policy's
generator (and torch's global one) with the same seed, then calls ``policy.reset(state=...)`` (the
buffer primer). Every control tick the policy gets the newest observation through
``select_action``; it computes a new chunk only when its queue of Ta actions is empty. With
``threads`` fixed (default 1) the per-episode outcome depends only on the seed, not on ``workers``.

**Metrics** (per sampler; per-episode records are kept in the JSON):

- success rate with a 95 % Wilson score interval; mean max coverage where the env reports
  ``max_coverage`` / ``coverage`` (PushT); mean final ``distance`` where reported (the arm).
- latency: wall time spent in the policy per *policy tick* (``select_action``: observing, plus a
  full chunk computation on inference ticks, or only popping a queued action), p50/p95/p99 in ms,
  pooled over episodes, split into all ticks / inference ticks / pop-only ticks. The untimed
  warm-up is excluded. Env stepping and rendering are not timed.
- network calls: denoiser calls as the policy counts them (``nfe_total``: one per call, CUDA-graph
  replays and compiled calls included), per tick
  and per inference (mean, min, max).
- smoothness of the *commanded* action sequence (held steps included): mean absolute jerk
  ``|a[t+3] - 3a[t+2] + 3a[t+1] - a[t]| * fps^3`` over time and action dims, in action units / s^3
  (rad/s^3 for the arm, px/s^3 for PushT); the largest step ``max_d |a_t - a_{t-1}|`` at chunk
  boundaries (the first action of every chunk but the episode's first) versus within chunks.

**Latency-aware mode** (``latency_aware=true``). Commands take effect at tick boundaries
(zero-order hold), as in a synchronous controller: the observation of tick t is read, the policy
computes for ``d`` seconds, and a result that is ready at t + d can only be applied at the next
boundary. So when a tick computes a new chunk in ``d`` seconds, the env first executes
``n = ceil(d * fps)`` steps (with a 1e-9 tolerance, so ``d * fps`` = 2.0 gives 2) with the previous
command held, and then the chunk runs from its first action; no observation is taken while the
policy computes. Ticks that only pop a queued action cost no delay (the action already exists).
The previous command at the start of an episode is the measured joint state where actions are
position targets of the first state entries (arm, PushT), else zeros. ``d`` is the measured
wall time of that tick, or a modelled one: ``latency_s`` (fixed seconds per inference) and/or
``latency_per_call_s`` (seconds per network call, e.g. a target machine's), summed when both are
given. Measured latencies make results depend on machine load; modelled ones keep them exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must precede the first mujoco import

import numpy as np  # noqa: E402

from streamdp.policy import cli  # noqa: E402
from streamdp.policy.cli import opt  # noqa: E402
from streamdp.sim.tasks.base import TaskCard  # noqa: E402

FORMAT = "streamdp-eval/1"
Z95 = 1.959963984540054


# ---------------------------------------------------------------------------------- statistics
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for n = 0."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return min(lo, p), max(hi, p)


def delay_steps(seconds: float, fps: float) -> int:
    """Env steps with the held command while a chunk is computed for ``seconds``: ceil(d * fps)."""
    if not seconds > 0:
        return 0
    return max(0, math.ceil(seconds * fps - 1e-9))


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/mean/max and count of a sample (None entries when empty)."""
    if len(values) == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(a.mean()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def mean_abs_jerk(actions: np.ndarray, fps: float) -> float | None:
    """Mean |third difference| * fps^3 of an (T, D) action sequence (None for T < 4)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 4:
        return None
    return float(np.mean(np.abs(np.diff(a, n=3, axis=0))) * fps**3)


def chunk_jumps(actions: np.ndarray, chunk_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Step sizes max_d |a_t - a_{t-1}| at chunk boundaries and within chunks.

    ``chunk_ids[t]`` is the chunk (0, 1, ...) that commanded action t came from, -1 for a held step.
    A boundary is the first action of a chunk other than the episode's first chunk; within-chunk steps
    join two consecutive actions of the same chunk. Steps into or out of held actions are neither."""
    a = np.asarray(actions, dtype=np.float64)
    ids = np.asarray(chunk_ids)
    if len(a) < 2:
        return np.zeros(0), np.zeros(0)
    step = np.max(np.abs(np.diff(a, axis=0)), axis=1)
    first = np.zeros(len(ids), dtype=bool)
    seen: set[int] = set()
    for t, c in enumerate(ids.tolist()):
        if c >= 0 and c not in seen:
            first[t] = True
            seen.add(c)
    boundary = first[1:] & (ids[1:] >= 1)
    within = (ids[1:] >= 0) & (ids[1:] == ids[:-1])
    return step[boundary], step[within]


# ---------------------------------------------------------------------------------- latency model
@dataclass(frozen=True)
class LatencyModel:
    """Compute time charged to one inference in latency-aware mode.

    With neither field set, the measured wall time of the tick is used. Otherwise the time is
    ``fixed_s + per_call_s * calls`` (a missing field counts 0): deterministic, and a way to replay a
    target machine's speed (its seconds per network call) on this one."""

    fixed_s: float | None = None
    per_call_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("fixed_s", "per_call_s"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"latency model {name} must be a finite number >= 0, got {v}")

    @property
    def measured(self) -> bool:
        return self.fixed_s is None and self.per_call_s is None

    def compute_time(self, measured_s: float, calls: int) -> float:
        if self.measured:
            return measured_s
        return (self.fixed_s or 0.0) + (self.per_call_s or 0.0) * calls

    def describe(self) -> str:
        if self.measured:
            return "measured wall time of the inference tick"
        parts = [
            f"{self.fixed_s} s" if self.fixed_s is not None else "",
            f"{self.per_call_s} s x calls" if self.per_call_s is not None else "",
        ]
        return " + ".join(p for p in parts if p) + " per inference (modelled)"


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SamplerSpec:
    """One sampler to evaluate: a name accepted by the policy config, and its grid size K."""

    sampler: str | None  # None: the checkpoint's own
    num_inference_steps: int | None = None

    @classmethod
    def parse(cls, item: str | SamplerSpec, default_k: int | None = None) -> SamplerSpec:
        if isinstance(item, SamplerSpec):
            return item
        text = str(item).strip()
        m = re.fullmatch(r"([A-Za-z_]+)(?:[:\-](\d+))?", text)
        if not m:
            raise ValueError(f"sampler entries look like NAME or NAME:K (e.g. ddim:10), got {item!r}")
        return cls(m.group(1).lower(), int(m.group(2)) if m.group(2) else default_k)


@dataclass
class EpisodeResult:
    """One closed-loop episode."""

    index: int
    seed: int
    success: bool
    steps: int  # env steps, held ones included
    policy_ticks: int  # select_action calls
    held_steps: int  # env steps with the held command (latency-aware mode)
    inferences: int  # chunks computed
    calls: int  # network calls
    calls_per_inference: list[int]
    tick_ms: list[float]  # wall time in the policy per tick
    inference_ticks: list[int]  # indices into tick_ms of the ticks that computed a chunk
    compute_s: list[float]  # charged compute time per inference (latency-aware mode; else measured)
    max_coverage: float | None
    final_distance: float | None
    mean_abs_jerk: float | None
    boundary_jumps: list[float]
    within_jumps: list[float]
    seconds: float  # wall time of the whole episode (env included)
    video: str | None = None
    rerun: str | None = None  # the episode's rerun recording (.rrd), when one was written
    error: str | None = None  # a NonFiniteError from the policy ends the episode as a failure
    task: str = ""  # the env's instruction (its task spec's description), which the policy got as obs["task"]
    task_options: dict[str, Any] = field(default_factory=dict)  # make_task options of this episode's task
    encodes: int = 0  # observation-encoder runs (Policy.encodes_total): at most one per observation
    encode_ms: list[float] = field(default_factory=list)  # wall time of each tick's encoder run (CPU only)
    actions: list[list[float]] = field(default_factory=list, repr=False)  # commanded, per env step (not in JSON)
    chunk_ids: list[int] = field(default_factory=list, repr=False)  # chunk of each command, -1 = held

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["actions"], d["chunk_ids"]
        d["tick_ms"] = [round(x, 4) for x in self.tick_ms]
        d["encode_ms"] = [round(x, 4) for x in self.encode_ms]
        d["boundary_jump_max"] = max(self.boundary_jumps) if self.boundary_jumps else None
        d["within_jump_max"] = max(self.within_jumps) if self.within_jumps else None
        d["boundary_jumps"] = [round(x, 6) for x in self.boundary_jumps]
        d["within_jumps"] = [round(x, 6) for x in self.within_jumps]
        return d


@dataclass
class RunResult:
    """All episodes of one sampler on the checkpoint's weights, and their summary."""

    sampler: str
    num_inference_steps: int
    label: str
    policy: dict[str, Any]  # the loaded config's horizons, fps, denoiser, grid
    episodes: list[EpisodeResult]

    # -- summary -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.n, 1)

    @property
    def success_ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)

    def _mean(self, name: str) -> float | None:
        vals = [getattr(e, name) for e in self.episodes if getattr(e, name) is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_max_coverage(self) -> float | None:
        return self._mean("max_coverage")

    @property
    def mean_final_distance(self) -> float | None:
        return self._mean("final_distance")

    def tick_latencies(self, kind: str = "tick") -> list[float]:
        out: list[float] = []
        for e in self.episodes:
            inf = set(e.inference_ticks)
            if kind == "tick":
                out += e.tick_ms
            elif kind == "inference":
                out += [e.tick_ms[i] for i in e.inference_ticks]
            elif kind == "pop":
                out += [m for i, m in enumerate(e.tick_ms) if i not in inf]
            else:
                raise ValueError(f"kind must be tick | inference | pop, got {kind!r}")
        return out

    @property
    def latency_ms(self) -> dict[str, dict[str, float | int | None]]:
        return {k: percentiles(self.tick_latencies(k)) for k in ("tick", "inference", "pop")}

    @property
    def calls_per_tick(self) -> float:
        return sum(e.calls for e in self.episodes) / max(sum(e.policy_ticks for e in self.episodes), 1)

    @property
    def calls_per_inference(self) -> dict[str, float | None]:
        c = [x for e in self.episodes for x in e.calls_per_inference]
        if not c:
            return {"mean": None, "min": None, "max": None}
        return {"mean": float(np.mean(c)), "min": float(min(c)), "max": float(max(c))}

    @property
    def encoder(self) -> dict[str, Any]:
        """How often the observation encoder ran (per policy tick, per inference; the network calls each run
        served) and its wall time: the encoder runs once per observation, however many calls use it."""
        enc = sum(e.encodes for e in self.episodes)
        ticks = sum(e.policy_ticks for e in self.episodes)
        infs = sum(e.inferences for e in self.episodes)
        return {"encodes": enc, "per_tick": enc / max(ticks, 1), "per_inference": enc / max(infs, 1),
                "calls_per_encode": sum(e.calls for e in self.episodes) / enc if enc else None,
                "ms": percentiles([x for e in self.episodes for x in e.encode_ms])}

    @property
    def smoothness(self) -> dict[str, Any]:
        b = [x for e in self.episodes for x in e.boundary_jumps]
        w = [x for e in self.episodes for x in e.within_jumps]
        return {
            "mean_abs_jerk": self._mean("mean_abs_jerk"),
            "jerk_units": "action units / s^3 (third difference x fps^3, mean over ticks and dims)",
            "boundary_jump_max": max(b) if b else None,
            "boundary_jump_mean": float(np.mean(b)) if b else None,
            "within_jump_max": max(w) if w else None,
            "within_jump_mean": float(np.mean(w)) if w else None,
            "jump_units": "action units per tick (max over action dims of |a_t - a_{t-1}|)",
        }

    def per_task(self) -> list[dict[str, Any]]:
        """Success per task (in order of first appearance), with 95 % Wilson intervals."""
        groups: dict[str, list[EpisodeResult]] = {}
        for e in self.episodes:
            groups.setdefault(e.task, []).append(e)
        out = []
        for task, eps in groups.items():
            k = sum(e.success for e in eps)
            out.append({"task": task, "task_options": eps[0].task_options, "episodes": len(eps), "successes": k,
                        "success_rate": k / len(eps), "success_ci95": list(wilson_interval(k, len(eps)))})
        return out

    def summary(self) -> dict[str, Any]:
        lo, hi = self.success_ci95
        return {
            "sampler": self.sampler,
            "num_inference_steps": self.num_inference_steps,
            "label": self.label,
            "policy": self.policy,
            "episodes": self.n,
            "successes": self.successes,
            "errors": sum(e.error is not None for e in self.episodes),
            "success_rate": self.success_rate,
            "success_ci95": [lo, hi],
            "mean_max_coverage": self.mean_max_coverage,
            "mean_final_distance": self.mean_final_distance,
            "mean_steps": float(np.mean([e.steps for e in self.episodes])) if self.episodes else None,
            "held_steps_per_episode": float(np.mean([e.held_steps for e in self.episodes])) if self.episodes else 0.0,
            "latency_ms": self.latency_ms,
            "calls_per_tick": self.calls_per_tick,
            "calls_per_inference": self.calls_per_inference,
            "compute_s_per_inference": percentiles([x for e in self.episodes for x in e.compute_s]),
            "encoder": self.encoder,
            "smoothness": self.smoothness,
            "per_task": self.per_task(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_episode": [e.to_dict() for e in self.episodes]}


@dataclass
class EvalResult:
    """Everything an evaluation produced; ``runs`` holds one :class:`RunResult` per sampler."""

    checkpoint: str
    task: str
    obs_mode: str
    task_kwargs: dict[str, Any]
    episodes: int
    seed: int
    max_steps: int
    fps: float
    latency_aware: bool
    latency_model: LatencyModel
    workers: int
    threads: int
    device: str
    runs: list[RunResult]
    hardware: dict[str, Any]
    started: str
    seconds: float
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.episodes)]

    @property
    def run(self) -> RunResult:
        """The only run (a single sampler); several runs: pick one from ``runs`` or ``by_label``."""
        if len(self.runs) != 1:
            raise ValueError(f"{len(self.runs)} samplers were evaluated: use result.runs or result.by_label()")
        return self.runs[0]

    def by_label(self) -> dict[str, RunResult]:
        return {r.label: r for r in self.runs}

    # single-sampler conveniences
    @property
    def success_rate(self) -> float:
        return self.run.success_rate

    @property
    def success_ci95(self) -> tuple[float, float]:
        return self.run.success_ci95

    def to_dict(self) -> dict[str, Any]:
        lm = self.latency_model
        return {
            "format": FORMAT,
            "checkpoint": self.checkpoint,
            "task": self.task,
            "obs_mode": self.obs_mode,
            "task_kwargs": self.task_kwargs,
            "episodes": self.episodes,
            "seed": self.seed,
            "seeds": self.seeds,
            "max_steps": self.max_steps,
            "fps": self.fps,
            "latency_aware": self.latency_aware,
            "latency_model": {
                "fixed_s": lm.fixed_s,
                "per_call_s": lm.per_call_s,
                "description": lm.describe() if self.latency_aware else "off",
                "rule": "held env steps per inference = ceil(d * fps - 1e-9)",
            },
            "workers": self.workers,
            "threads": self.threads,
            "device": self.device,
            "hardware": self.hardware,
            "started": self.started,
            "seconds": self.seconds,
            "runs": [r.to_dict() for r in self.runs],
            "files": self.files,
        }

    def table(self) -> str:
        """Markdown summary, one row per sampler."""
        head = (
            "| sampler | success (95% CI) | ms/tick p50 / p95 / p99 | ms/inference p50 | calls/tick "
            "| calls/inference | jerk | max jump boundary / within | extra |"
        )
        lines = [head, "|" + "---|" * 9]
        for r in self.runs:
            lo, hi = r.success_ci95
            t, i = r.latency_ms["tick"], r.latency_ms["inference"]
            s = r.smoothness
            extra = []
            if r.mean_max_coverage is not None:
                extra.append(f"max cov {r.mean_max_coverage:.3f}")
            if r.mean_final_distance is not None:
                extra.append(f"final dist {r.mean_final_distance:.3f}")
            if self.latency_aware:
                extra.append(f"held {np.mean([e.held_steps for e in r.episodes]):.1f}/ep")
            if r.policy.get("camera_names"):
                enc = r.encoder
                extra.append(f"encoder {enc['per_tick']:.2f}/tick, {_f(enc['calls_per_encode'], 1)} calls/run, "
                             f"{_f(enc['ms']['p50'])} ms p50")
            lines.append(
                f"| {r.label} | {r.successes}/{r.n} = {r.success_rate:.2f} [{lo:.2f}, {hi:.2f}] "
                f"| {_f(t['p50'])} / {_f(t['p95'])} / {_f(t['p99'])} | {_f(i['p50'])} | {r.calls_per_tick:.2f} "
                f"| {_f(r.calls_per_inference['mean'], 1)} | {_f(s['mean_abs_jerk'], 1)} "
                f"| {_f(s['boundary_jump_max'], 3)} / {_f(s['within_jump_max'], 3)} | {', '.join(extra)} |"
            )
        return "\n".join(lines + self.task_table())

    def task_table(self) -> list[str]:
        """Markdown rows of success per task (a column per sampler), for a suite; [] for one task."""
        per = [r.per_task() for r in self.runs]
        if not per or len(per[0]) < 2:
            return []
        lines = ["", "| task | " + " | ".join(r.label for r in self.runs) + " |", "|" + "---|" * (1 + len(self.runs))]
        for row in per[0]:
            cells = []
            for p in per:
                t = next((x for x in p if x["task"] == row["task"]), None)
                if t is None:
                    cells.append("n/a")
                    continue
                lo, hi = t["success_ci95"]
                cells.append(f"{t['successes']}/{t['episodes']} = {t['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]")
            lines.append(f"| {row['task']} | " + " | ".join(cells) + " |")
        return lines

    def save(self, out: str | Path, plots: bool = True) -> Path:
        """Write ``result.json`` (and ``latency_hist.png``, ``success.png``) under ``out``."""
        import json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            from streamdp.sim.plots import latency_histogram, success_plot

            self.files["latency_hist"] = str(latency_histogram(self, out / "latency_hist.png"))
            self.files["success"] = str(success_plot(self, out / "success.png"))
        self.files["json"] = str(out / "result.json")
        videos = [e.video for r in self.runs for e in r.episodes if e.video]
        if videos:
            self.files["videos"] = videos
        recordings = [e.rerun for r in self.runs for e in r.episodes if e.rerun]
        if recordings:
            self.files["rerun"] = recordings
        (out / "result.json").write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        return out / "result.json"


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------- one episode
@dataclass(frozen=True)
class _Job:
    """Picklable description of one episode for a worker process."""

    checkpoint: str
    spec: SamplerSpec
    task: str
    obs_mode: str
    task_kwargs: tuple[tuple[str, Any], ...]
    policy_overrides: tuple[tuple[str, Any], ...]
    index: int
    seed: int
    max_steps: int
    latency_aware: bool
    latency_model: LatencyModel
    device: str
    warmup: bool
    video_path: str | None
    video_size: int | None
    rerun_path: str | None = None
    rename_map: tuple[tuple[str, str], ...] = ()  # env key -> policy key (checkpoint's and the run's)


_CACHE: dict[Any, Any] = {}  # per process: loaded policies (with their call counters) and envs


def clear_cache() -> None:
    """Forget this process's loaded policies and close its envs: their GL contexts are freed now, while EGL
    is still up (a LIBERO env dropped unclosed is freed at exit, after EGL's teardown, with a traceback)."""
    for key, obj in list(_CACHE.items()):
        if key[0] == "env":
            with contextlib.suppress(Exception):
                obj.close()
    _CACHE.clear()


EXPERT = "expert"  # the run label (and job "sampler") of the task's scripted expert (expert=true)


def with_task(obs: dict[str, Any], spec: Any) -> dict[str, Any]:
    """The env's observation with its instruction as ``obs["task"]`` (what a multi-task policy is conditioned
    on, as in LeRobot's frames and its evaluation loop); unchanged for a task without a description."""
    return {**obs, "task": spec.description} if spec.description else obs


def _hold_action(spec: Any, state: np.ndarray) -> np.ndarray:
    """The command that keeps the robot where it is: the joint state for position-target actions."""
    da = spec.action_dim
    targets = [n.replace("target_", "") for n in spec.action_names]
    if len(state) >= da and list(spec.state_names[:da]) == targets:
        return np.asarray(state[:da], dtype=np.float32).copy()
    return np.zeros(da, dtype=np.float32)


def _get_env(task: str, obs_mode: str, kwargs: tuple, video_size: int | None) -> Any:
    from streamdp.sim.tasks import make_task

    key = ("env", task, obs_mode, kwargs, video_size)
    if key not in _CACHE:
        # another task of a suite: close its envs first (one task's envs per process bounds the memory;
        # the jobs run task by task, so each env is built once per process)
        for old in [k for k in _CACHE if k[0] == "env" and k[1] == task and k[3] != kwargs]:
            with contextlib.suppress(Exception):
                _CACHE.pop(old).close()
        kw = dict(kwargs)
        env = None
        if video_size and "render_size" not in kw:
            try:
                env = make_task(task, obs_mode, **kw, render_size=video_size)
            except TypeError:
                env = None
        _CACHE[key] = env if env is not None else make_task(task, obs_mode, **kw)
    return _CACHE[key]


def load_policy(
    checkpoint: str | Path, spec: SamplerSpec, device: str = "cpu", overrides: dict[str, Any] | None = None
) -> Any:
    """Policy.from_pretrained with the sampler (and K) replaced; the weights are the checkpoint's."""
    from streamdp.policy.policy import Policy

    kw = dict(overrides or {})
    if spec.sampler is not None:
        kw["sampler"] = spec.sampler
    if spec.num_inference_steps is not None:
        kw["num_inference_steps"] = spec.num_inference_steps
    return Policy.from_pretrained(checkpoint, device=device, **kw)


def _get_policy(job: _Job, env: Any) -> Any:
    key = ("policy", job.checkpoint, job.spec, job.policy_overrides, job.rename_map, job.device)
    if key not in _CACHE:
        overrides = {**dict(job.policy_overrides), **({"rename_map": dict(job.rename_map)} if job.rename_map else {})}
        policy = load_policy(job.checkpoint, job.spec, job.device, overrides)
        if job.warmup:  # first calls pay lazy initialisation (allocator, compile): keep them untimed
            obs, _ = env.reset(seed=job.seed)
            policy.reset(state=obs["observation.state"])
            obs = with_task(obs, env.task_spec) if hasattr(env, "task_spec") else obs
            for _ in range(policy.config.n_action_steps + 1):
                policy.select_action(obs)
        _CACHE[key] = policy
    return _CACHE[key]


class _Rollout:
    """The env side of one episode: steps the env, records the commands, success, coverage and frames."""

    def __init__(self, env: Any, obs: dict[str, Any], info: dict[str, Any], max_steps: int, video: bool,
                 recording: Any = None) -> None:
        self.env, self.obs, self.info, self.max_steps = env, obs, info, max_steps
        self.frames = [env.render()] if video else None
        self.recording = recording  # a streamdp.sim.rerun_log.EpisodeRecording, or None
        if recording is not None:
            recording.observation(0, obs, env.render)
        self.actions: list[np.ndarray] = []
        self.chunk_ids: list[int] = []  # chunk of each command, -1 = held
        self.steps, self.success, self.done = 0, False, False
        self.max_cov: float | None = None

    def step(self, a: np.ndarray, cid: int) -> None:
        if self.recording is not None:
            self.recording.command(self.steps, a, cid < 0)
        self.obs, _, terminated, truncated, self.info = self.env.step(a)
        self.steps += 1
        if self.recording is not None:
            self.recording.observation(self.steps, self.obs, self.env.render)
        self.actions.append(np.asarray(a, dtype=np.float64).copy())
        self.chunk_ids.append(cid)
        self.success = self.success or bool(self.info.get("is_success", False))
        cov = self.info.get("max_coverage", self.info.get("coverage"))
        if cov is not None:
            self.max_cov = max(float(cov), self.max_cov if self.max_cov is not None else -math.inf)
        if self.frames is not None:
            self.frames.append(self.env.render())
        self.done = bool(terminated or truncated) or self.steps >= self.max_steps


def run_episode(job: _Job, clock: Callable[[], float] = time.perf_counter) -> EpisodeResult:
    """One seeded closed-loop episode (see the module docstring for the exact tick and delay model)."""
    import torch

    from streamdp.policy.policy import NonFiniteError
    from streamdp.sim.metrics import timed
    from streamdp.sim.tasks import task_spec as get_spec

    t_start = time.perf_counter()
    spec = get_spec(job.task, job.obs_mode, **dict(job.task_kwargs))
    env = _get_env(job.task, job.obs_mode, job.task_kwargs,
                   job.video_size if job.video_path or job.rerun_path else None)
    if job.spec.sampler == EXPERT:
        return _expert_episode(job, env, spec, t_start)
    policy = _get_policy(job, env)
    fps = float(spec.fps)
    torch.manual_seed(job.seed)
    policy.generator.manual_seed(job.seed)
    obs, info = env.reset(seed=job.seed)
    state = np.asarray(obs["observation.state"], dtype=np.float32)
    policy.reset(state=state)
    held = _hold_action(spec, state)

    recording = None
    if job.rerun_path:
        from streamdp.sim.rerun_log import EpisodeRecording

        recording = EpisodeRecording(job.rerun_path, spec, Path(job.rerun_path).stem)
    ro = _Rollout(env, obs, info, job.max_steps, bool(job.video_path), recording)
    tick_ms: list[float] = []
    inference_ticks: list[int] = []
    calls_per_inference: list[int] = []
    compute_s: list[float] = []
    held_steps = total_calls = encodes = 0
    encode_ms: list[float] = []
    chunk = -1

    error = None
    while not ro.done:
        need = policy.num_ready == 0
        try:
            a, cost = timed(policy, lambda: policy.select_action(with_task(ro.obs, spec)), clock)
        except NonFiniteError as e:  # the policy reset itself; count the episode as failed, keep going
            error = f"{type(e).__name__}: {e}"
            break
        total_calls += cost.calls
        tick_ms.append(cost.ms)
        encodes += cost.encodes
        if cost.encodes and cost.encode_seconds is not None:
            encode_ms.append(cost.encode_seconds * 1e3)
        if recording is not None:
            recording.noise_levels(ro.steps, policy.noise_levels())
        if need:
            chunk += 1
            inference_ticks.append(len(tick_ms) - 1)
            calls_per_inference.append(cost.calls)
            d = job.latency_model.compute_time(cost.seconds, cost.calls)
            compute_s.append(d)
            if job.latency_aware:
                for _ in range(delay_steps(d, fps)):
                    ro.step(held, -1)
                    held_steps += 1
                    if ro.done:
                        break
                if ro.done:
                    break
        a = np.asarray(a, dtype=np.float32)
        ro.step(a, chunk)
        held = a
    if ro.frames is not None and job.video_path:
        _write_video(job.video_path, ro.frames, fps)
    if recording is not None:
        recording.close()

    acts = np.stack(ro.actions) if ro.actions else np.zeros((0, spec.action_dim))
    boundary, within = chunk_jumps(acts, ro.chunk_ids)
    dist = ro.info.get("distance")
    return EpisodeResult(
        index=job.index, seed=job.seed, success=ro.success, steps=ro.steps, policy_ticks=len(tick_ms),
        held_steps=held_steps, inferences=len(calls_per_inference), calls=total_calls,
        calls_per_inference=calls_per_inference, tick_ms=tick_ms, inference_ticks=inference_ticks,
        compute_s=compute_s, max_coverage=ro.max_cov, final_distance=float(dist) if dist is not None else None,
        mean_abs_jerk=mean_abs_jerk(acts, fps), boundary_jumps=boundary.tolist(), within_jumps=within.tolist(),
        seconds=time.perf_counter() - t_start, video=job.video_path, rerun=job.rerun_path, error=error,
        task=spec.description, task_options=dict(job.task_kwargs), encodes=encodes, encode_ms=encode_ms,
        actions=acts.tolist(), chunk_ids=ro.chunk_ids,
    )


def _expert_episode(job: _Job, env: Any, spec: Any, t_start: float) -> EpisodeResult:
    """One episode of the task's scripted expert from the same seed (the ``expert`` row): success, steps,
    coverage and distance as for a policy; no policy, so no latency or network calls."""
    from streamdp.sim.tasks import make_expert

    obs, info = env.reset(seed=job.seed)
    expert = make_expert(job.task, env)
    expert.reset()
    ro = _Rollout(env, obs, info, job.max_steps, bool(job.video_path))
    error = None
    while not ro.done:
        try:
            a = np.asarray(expert.act(ro.obs, env), dtype=np.float32)
        except ValueError as e:  # e.g. the arm expert's IK finds no in-limits solution: a failed episode
            error = f"{type(e).__name__}: {e}"
            break
        ro.step(a, 0)
    if ro.frames is not None and job.video_path:
        _write_video(job.video_path, ro.frames, float(spec.fps))
    acts = np.stack(ro.actions) if ro.actions else np.zeros((0, spec.action_dim))
    dist = ro.info.get("distance")
    return EpisodeResult(
        index=job.index, seed=job.seed, success=ro.success, steps=ro.steps, policy_ticks=0, held_steps=0,
        inferences=0, calls=0, calls_per_inference=[], tick_ms=[], inference_ticks=[], compute_s=[],
        max_coverage=ro.max_cov, final_distance=float(dist) if dist is not None else None,
        mean_abs_jerk=mean_abs_jerk(acts, float(spec.fps)), boundary_jumps=[], within_jumps=[],
        seconds=time.perf_counter() - t_start, video=job.video_path, error=error, task=spec.description,
        task_options=dict(job.task_kwargs), actions=acts.tolist(), chunk_ids=ro.chunk_ids,
    )


def _write_video(path: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16, quality=7) as w:
        for f in frames:
            w.append_data(np.asarray(f, dtype=np.uint8))


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(job: _Job) -> EpisodeResult:
    return run_episode(job)


# ---------------------------------------------------------------------------------- evaluate
def _policy_summary(checkpoint: str, spec: SamplerSpec, overrides: dict[str, Any]) -> tuple[str, int, dict]:
    from streamdp.policy.checkpoint import read_config
    from streamdp.policy.config import PolicyConfig

    cfg, _ = read_config(Path(checkpoint))
    d = cfg.to_dict()
    if spec.sampler is not None:
        d["sampler"] = spec.sampler
    if spec.num_inference_steps is not None:
        d["num_inference_steps"] = spec.num_inference_steps
    cfg = PolicyConfig.from_dict({**d, **overrides})
    info = {
        "denoiser": cfg.denoiser,
        "n_obs_steps": cfg.n_obs_steps,
        "n_action_steps": cfg.n_action_steps,
        "horizon": cfg.horizon,
        "fps": cfg.fps,
        "primer": cfg.primer,
        "cache": cfg.cache,
        "num_train_steps": cfg.schedule.num_train_steps,
        "camera_names": cfg.camera_names,
        "rename_map": cfg.rename_map,
    }
    return cfg.sampler, cfg.num_inference_steps, info


def evaluate(
    checkpoint: str | Path,
    task: str,
    sampler: str | SamplerSpec | Sequence[str | SamplerSpec] | None = None,
    episodes: int = 50,
    num_inference_steps: int | None = None,
    seed: int = 10000,
    obs_mode: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    latency_aware: bool = False,
    latency_model: LatencyModel | None = None,
    workers: int = 1,
    threads: int = 1,
    device: str = "cpu",
    warmup: bool = True,
    video: int = 0,
    video_size: int = 256,
    rerun: int = 0,
    out: str | Path | None = None,
    policy_overrides: dict[str, Any] | None = None,
    rename_map: dict[str, str] | None = None,
    progress: bool = False,
    start_method: str = "forkserver",
    clock: Callable[[], float] | None = None,
    expert: bool = False,
) -> EvalResult:
    """Run ``episodes`` seeded closed-loop episodes per sampler and summarise them (long only by its options).

    ``sampler``: None (the checkpoint's), a name, ``"ddpm,sdp"`` or a list; ``"ddim:10"`` sets K for that
    entry, ``num_inference_steps`` for the others. ``latency_model`` without ``latency_aware`` is an
    error. ``out``: also write result.json, the plots, (``video`` > 0) MP4s of the first episodes and (``rerun``
    > 0) rerun recordings of the first episodes (:mod:`streamdp.sim.rerun_log`).
    ``clock`` (seconds, serial runs only) replaces ``time.perf_counter`` for the policy timing, so tests
    can inject compute times into the measured latency-aware path. ``rename_map`` (env key -> policy key,
    e.g. ``{"observation.images.top": "observation.images.image"}``) feeds the task's observations to a
    policy that names them otherwise, on top of the checkpoint's own ``rename_map``. ``task_kwargs`` naming
    several tasks (LIBERO's ``task_id="all"``) run ``episodes`` episodes of each; ``expert`` adds the scripted
    expert's row.
    """

    from streamdp.policy.checkpoint import read_config
    from streamdp.policy.config import check_rename_map, merge_rename_maps
    from streamdp.sim.metrics import hardware, sampler_label
    from streamdp.sim.tasks import task_spec as get_spec
    from streamdp.sim.tasks import task_variants

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got workers={workers}, threads={threads}")
    if clock is not None and workers != 1:
        raise ValueError("an injected clock works only in serial runs (workers=1)")
    if latency_model is not None and not latency_model.measured and not latency_aware:
        raise ValueError("a latency model only acts in latency-aware mode: pass latency_aware=True")
    latency_model = latency_model or LatencyModel()
    checkpoint = str(Path(checkpoint).resolve())
    cfg, _ = read_config(Path(checkpoint))
    if obs_mode is None:
        obs_mode = "image" if cfg.camera_names else "state"
    task_kwargs = dict(task_kwargs or {})
    variants = task_variants(task, **task_kwargs)
    specs = [get_spec(task, obs_mode, **v) for v in variants]
    check_rename_map(dict(rename_map or {}), "rename_map")
    rename = merge_rename_maps(cfg.rename_map, dict(rename_map or {}))
    for sp_ in specs:
        _check_fits(cfg, sp_, rename)
        if cfg.tasks:
            cfg.task_index(sp_.description)  # a task the policy was not trained on: fail before any episode
    spec = specs[0]
    limit = int(max_steps or spec.max_episode_steps)
    overrides = dict(policy_overrides or {})

    out_dir = Path(out) if out is not None else None
    template = _Job(checkpoint, SamplerSpec(None, None), task, obs_mode, (), tuple(sorted(overrides.items())), 0,
                    seed, limit, latency_aware, latency_model, device, warmup, None, video_size,
                    rename_map=tuple(sorted(rename.items())))  # fmt: skip
    runs: list[RunResult] = []
    for sp in sampler_specs(sampler, num_inference_steps):
        name, k, pinfo = _policy_summary(checkpoint, sp, {**overrides, "rename_map": rename})
        label = sampler_label(name, k, pinfo["num_train_steps"])
        if any(r.label == label for r in runs):
            raise ValueError(f"sampler {label} is listed twice")
        runs.append(RunResult(name, k, label, pinfo, []))
    if expert:
        runs.append(RunResult(EXPERT, 0, EXPERT, {}, []))
    tags = _variant_tags(variants)
    jobs: list[_Job] = []
    for v, tag in zip(variants, tags):  # task by task: a worker keeps one env of a suite at a time
        for r in runs:
            slug = re.sub(r"[^a-z0-9]+", "_", r.label.lower()).strip("_") + tag
            for i in range(episodes):
                stem = f"{slug}_ep{i:03d}_seed{seed + i}"
                video_path = out_dir / "videos" / f"{stem}.mp4" if i < video and out_dir else None
                rerun_path = (out_dir / "rerun" / f"{stem}.rrd" if i < rerun and out_dir and r.sampler != EXPERT
                              else None)  # fmt: skip
                jobs.append(dataclasses.replace(template, spec=SamplerSpec(r.sampler, r.num_inference_steps),
                                                task_kwargs=tuple(sorted(v.items())), index=i, seed=seed + i,
                                                video_path=str(video_path) if video_path else None,
                                                rerun_path=str(rerun_path) if rerun_path else None))  # fmt: skip

    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    hw = hardware(str(device))
    t0 = time.perf_counter()
    results = _run_jobs(jobs, workers, threads, progress, start_method, clock or time.perf_counter)
    for job, res in zip(jobs, results):
        next(
            r for r in runs if r.sampler == job.spec.sampler and r.num_inference_steps == job.spec.num_inference_steps
        ).episodes.append(res)
    try:
        hw["loadavg_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    hw["threads_per_process"] = threads
    result = EvalResult(
        checkpoint=checkpoint, task=task, obs_mode=obs_mode, task_kwargs=task_kwargs, episodes=episodes, seed=seed,
        max_steps=limit, fps=float(spec.fps), latency_aware=latency_aware, latency_model=latency_model,
        workers=workers, threads=threads, device=str(device), runs=runs, hardware=hw, started=started,
        seconds=time.perf_counter() - t0,
    )
    if out_dir is not None:
        result.save(out_dir)
    return result


def _variant_tags(variants: list[dict[str, Any]]) -> list[str]:
    """File-name tags telling the tasks of a suite apart (``_task_id3``); empty for one task."""
    if len(variants) < 2:
        return [""]
    keys = [k for k in variants[0] if len({repr(v.get(k)) for v in variants}) > 1]
    return ["_" + "_".join(re.sub(r"[^a-z0-9]+", "", f"{k}{v[k]}".lower()) for k in keys) for v in variants]


def sampler_specs(
    sampler: str | SamplerSpec | Sequence[str | SamplerSpec] | None, num_inference_steps: int | None
) -> list[SamplerSpec]:
    """The runs of ``sampler`` (None: the checkpoint's; ``"ddpm,sdp"``; a list); K for entries without :K."""
    items: list[Any]
    if sampler is None:
        items = [None]
    elif isinstance(sampler, str):
        items = [s for s in sampler.split(",") if s.strip()]
    elif isinstance(sampler, SamplerSpec):
        items = [sampler]
    else:
        items = list(sampler)
    return [
        SamplerSpec(None, num_inference_steps) if s is None else SamplerSpec.parse(s, num_inference_steps)
        for s in items
    ]


def _check_fits(cfg: Any, spec: Any, rename: dict[str, str]) -> None:
    from streamdp.policy.encoders import IMAGE_PREFIX

    cams = [rename.get(IMAGE_PREFIX + c, IMAGE_PREFIX + c) for c in spec.camera_names]  # as the policy reads them
    cams = [k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k for k in cams]
    problems = []
    if cfg.state_dim != spec.state_dim:
        problems.append(f"state dim {spec.state_dim} (task) != {cfg.state_dim} (checkpoint)")
    if cfg.action_dim != spec.action_dim:
        problems.append(f"action dim {spec.action_dim} (task) != {cfg.action_dim} (checkpoint)")
    if abs(float(cfg.fps) - float(spec.fps)) > 1e-6:
        problems.append(f"fps {spec.fps} (task) != {cfg.fps} (checkpoint)")
    if sorted(cfg.camera_names) != sorted(cams):
        seen = f"{spec.camera_names} read as {cams}" if cams != spec.camera_names else f"{spec.camera_names}"
        hint = ""
        if len(spec.camera_names) == 1 and len(cfg.camera_names) == 1:
            hint = (f" (feed the task's camera to the policy with rename_map={{{IMAGE_PREFIX}{spec.camera_names[0]}:"
                    f"{IMAGE_PREFIX}{cfg.camera_names[0]}}})")
        problems.append(f"cameras {seen} (task) != {cfg.camera_names} (checkpoint){hint}")
    if problems:
        from streamdp.policy.checkpoint import CheckpointMismatchError

        what = f"checkpoint does not fit task {spec.name}/{spec.obs_mode}: "
        raise CheckpointMismatchError(what + "; ".join(problems))


def _run_jobs(
    jobs: list[_Job], workers: int, threads: int, progress: bool, start_method: str, clock: Callable[[], float]
) -> list[EpisodeResult]:
    import torch
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="eval", unit="ep", disable=not progress)
    try:
        if workers == 1:
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                out = []
                for job in jobs:
                    out.append(run_episode(job, clock))
                    bar.update(1)
                return out
            finally:
                torch.set_num_threads(prev)
                clear_cache()
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        methods = mp.get_all_start_methods()
        ctx = mp.get_context(start_method if start_method in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            # workers fork from a server that imported these once (torch alone is seconds per process)
            ctx.set_forkserver_preload(
                ["torch", "streamdp.policy.policy", "streamdp.sim.tasks", "streamdp.sim.evaluate"]
            )
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init, initargs=(threads,)
        ) as ex:
            out = []
            for res in ex.map(_run_job, jobs, chunksize=1):
                out.append(res)
                bar.update(1)
            return out
    finally:
        bar.close()


# ---------------------------------------------------------------------------------- CLI
@dataclass
class EvalConfig:
    """``streamdp-eval`` keys (config/eval.yaml holds presets only)."""

    checkpoint: str = opt("???", "checkpoint directory (Policy.from_pretrained)")
    task: TaskCard = opt(help="task preset", factory=TaskCard)
    sampler: Any = opt(None, "null: the checkpoint's; several on the same weights: sampler=ddpm,ddim:10,sdp "
                       "(NAME:K sets num_inference_steps for that entry)")
    num_inference_steps: int | None = opt(None, "grid size K for ddim / sdp / rti entries without their own :K")
    episodes: int = opt(50, "per sampler (and per task of a suite, e.g. task.kwargs.task_id=all); episode i "
                        "resets env and policy with seed + i")
    seed: int = opt(10000, "held out from demo collection (seeds 0..) and streamdp-sim-measure (1000..)")
    obs_mode: str | None = opt(None, "null: image if the checkpoint has cameras, else state")
    max_steps: int | None = opt(None, "cap on env steps per episode (null: the task's max_episode_steps)")
    latency_aware: bool = opt(False, "hold the previous action for ceil(d * fps) env steps while a chunk is computed")
    latency_s: float | None = opt(None, "latency-aware with a fixed compute time per inference (s)")
    latency_per_call_s: float | None = opt(None, "latency-aware with this many seconds per network call")
    workers: int = opt(1, "episodes in parallel processes (forkserver); results do not depend on it")
    threads: int = opt(1, "torch threads per process (1: the policy shares the CPU with the simulator)")
    device: str = opt("cpu", "torch device")
    warmup: bool = opt(True, "one untimed inference per process and sampler before the first episode")
    video: int = opt(0, "record the first N episodes of each sampler as MP4 (env.render())")
    video_size: int = opt(256, "render size for tasks whose env takes render_size")
    rerun: int = opt(0, "write the first N episodes of each sampler as rerun recordings (<out>/rerun/*.rrd): "
                     "cameras, state, the SDP buffer's noise levels and the commanded actions on one timeline")
    out: str | None = opt(None, "output folder (null: outputs/eval/<task>-<YYYYmmdd-HHMMSS>)")
    progress: bool = opt(True, "tqdm bar")
    expert: bool = opt(False, "also run the task's scripted expert on the same seeds (the row 'expert')")
    policy: dict[str, Any] = opt(help="extra policy config overrides at load time, e.g. +policy.cache=bac",
                                 factory=dict)
    # Any, not dict[str, str]: omegaconf 2.3 cannot override a typed null mapping (see ZarrConfig.images)
    rename_map: Any = opt(None, "task keys fed to the policy under its names, task key -> policy key, e.g. "
                          "{observation.images.top: observation.images.image}; added to the checkpoint's rename_map")

    def latency_model(self) -> LatencyModel | None:
        """The modelled compute time, when latency_s or latency_per_call_s is given."""
        if self.latency_s is None and self.latency_per_call_s is None:
            return None
        return LatencyModel(self.latency_s, self.latency_per_call_s)


LIST_KEYS = ("sampler",)


def load_config(overrides: Sequence[str] = ()) -> EvalConfig:
    """The validated ``streamdp-eval`` config of these ``key=value`` overrides."""
    return cli.load_config("eval", EvalConfig, overrides, LIST_KEYS)


def run(c: EvalConfig) -> EvalResult:
    """Evaluate as `c` says; prints the table and writes result.json and the plots."""
    sampler = c.sampler
    if isinstance(sampler, (int, float)):
        sampler = str(sampler)
    latency_model = c.latency_model()
    result = evaluate(
        checkpoint=c.checkpoint,
        task=c.task.name,
        sampler=sampler,
        episodes=c.episodes,
        num_inference_steps=c.num_inference_steps,
        seed=c.seed,
        obs_mode=c.obs_mode,
        task_kwargs=dict(c.task.kwargs),
        max_steps=c.max_steps,
        latency_aware=c.latency_aware or latency_model is not None,
        latency_model=latency_model,
        workers=c.workers,
        threads=c.threads,
        device=c.device,
        warmup=c.warmup,
        video=c.video,
        video_size=c.video_size,
        rerun=c.rerun,
        out=c.out or f"outputs/eval/{c.task.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}",
        policy_overrides=dict(c.policy),
        rename_map=dict(c.rename_map or {}),
        progress=c.progress,
        expert=c.expert,
    )
    print(result.table())
    n_tasks = len(result.runs[0].per_task()) if result.runs else 1
    tasks = f" x {n_tasks} tasks" if n_tasks > 1 else ""
    print(
        f"[eval] {result.task}: {len(result.runs)} sampler(s){tasks} x {result.episodes} episodes in "
        f"{result.seconds:.1f}s -> {result.files.get('json')}"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-eval checkpoint=DIR task=NAME [key=value ...]``."""
    return cli.run_job("streamdp-eval", "eval", EvalConfig, run, argv, doc=__doc__.split("\n\n")[0],
                       list_keys=LIST_KEYS)


if __name__ == "__main__":
    raise SystemExit(main())

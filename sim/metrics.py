"""What the benchmark, the evaluator and the main job measure, measured one way.

- :func:`timed` / :func:`measure`: the cost of a policy call: wall ms, the network calls the policy
  itself counts (``nfe_total``: compiled and CUDA-graph calls included, which a wrapper around the
  denoiser would miss) and, with a block cache, the residual-branch computes (``cache.computed``).
- :func:`sampler_label`: one name per sampler run ("SDP K=16"), so a results file never names one run
  two ways.
- :func:`hardware`: where the numbers were measured (timings depend on the CPU, the threads, the load).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Cost:
    """What one policy call cost."""

    seconds: float
    calls: int
    branches: int | None  # residual-branch computes; None without a block cache
    encodes: int = 0  # observation-encoder runs inside the call (Policy.encodes_total)
    encode_seconds: float | None = 0.0  # their wall time; None on CUDA (the host sees only the launches)

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


def timed(policy: Any, fn: Callable[[], T], clock: Callable[[], float] = time.perf_counter) -> tuple[T, Cost]:
    """Run ``fn()`` (a call into `policy`) and return its result and :class:`Cost`.

    On CUDA the call ends with a synchronize, so the time covers the queued kernels. `clock` (seconds)
    is read exactly twice, so tests can inject compute times."""
    cache = getattr(policy, "cache", None)
    calls0 = policy.nfe_total
    branches0 = cache.computed if cache is not None else 0
    enc0, enc_s0 = getattr(policy, "encodes_total", 0), getattr(policy, "encode_s_total", 0.0)
    cuda = getattr(getattr(policy, "device", None), "type", "cpu") == "cuda"
    t0 = clock()
    out = fn()
    if cuda:
        import torch

        torch.cuda.synchronize()
    dt = clock() - t0
    branches = cache.computed - branches0 if cache is not None else None
    encodes = getattr(policy, "encodes_total", 0) - enc0
    enc_s = None if cuda else getattr(policy, "encode_s_total", 0.0) - enc_s0
    return out, Cost(dt, policy.nfe_total - calls0, branches, encodes, enc_s)


def observe_and_denoise(policy: Any, obs: Mapping[str, Any]) -> None:
    """One observation as the ROS node handles it: observe, denoise until Ta clean actions are ready."""
    policy.observe(obs)
    policy.denoise(None)
    policy.pop_ready()


def measure(policy: Any, observations: Iterable[Mapping[str, Any]], warmup: int = 3) -> list[Cost]:
    """Cost per observation of a stream (observe + denoise to the next chunk); the first `warmup`
    observations pay lazy initialisation and are not returned."""
    costs = []
    for i, obs in enumerate(observations):
        _, cost = timed(policy, lambda o=obs: observe_and_denoise(policy, o))
        if i >= warmup:
            costs.append(cost)
    return costs


def summarize(costs: list[Cost], branches_per_call: int | None = None) -> dict[str, Any]:
    """ms p50/p99, mean calls and mean branch computes per observation (``branches_per_call`` x calls
    when no cache counted them, e.g. 3 x layers for an uncached transformer; None for a U-Net)."""
    ms = [c.ms for c in costs]
    calls = [c.calls for c in costs]
    counted = [c.branches for c in costs if c.branches is not None]
    if counted:
        branches: float | None = float(np.mean(counted))
    else:
        branches = float(np.mean(calls)) * branches_per_call if branches_per_call else None
    return {
        "ms_p50": float(np.median(ms)),
        "ms_p99": float(np.percentile(ms, 99)),
        "n_obs": len(ms),
        "calls": float(np.mean(calls)),
        "branches": branches,
    }


SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "sdp": "SDP", "rti": "RTI", "sdp_rti": "SDP+RTI"}


def sampler_label(sampler: str, k: int | None, num_train_steps: int) -> str:
    """The one name of a sampler run: ``DDPM-100`` (all N train levels), ``DDIM-10``, ``SDP K=16``,
    ``RTI K=16``, ``SDP+RTI K=16`` (K: the grid size of a full solve)."""
    if sampler == "ddpm":
        return f"DDPM-{num_train_steps}"
    if sampler == "ddim":
        return f"DDIM-{k}"
    return f"{SAMPLER_NAMES.get(sampler, sampler.upper())} K={k}"


def policy_label(policy: Any) -> str:
    """:func:`sampler_label` of a loaded policy."""
    c = policy.config
    return sampler_label(c.sampler, c.num_inference_steps, c.schedule.num_train_steps)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (the benchmark's and the main job's result tables)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def hardware(device: str | None = None) -> dict[str, Any]:
    """Where the numbers were measured: CPU model, cores, torch threads, load, the device used."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    hw = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_at_start": load,
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }
    if device is not None:
        hw["device"] = device
    return hw

"""Measure each task's scripted-expert success rate and simulator speed.

    python -m streamdp.sim.measure [tasks=arm_reach_dynamic,pusht,libero] [episodes=20] [obs_mode=state]
                                   [seed=1000] [libero_tasks=libero_object:0,libero_spatial:0]

Prints one line per task: success rate over seeded episodes, mean episode length, env steps/s (time
inside ``env.step`` only) and total steps/s (env + expert + reset), plus env creation time.
Seeds default to 1000+ so the numbers are not measured on the seeds the tests use.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .tasks import make_expert, make_task


@dataclass
class Measurement:
    """Expert success and speed of one task."""

    task: str
    obs_mode: str
    episodes: int
    successes: int
    mean_length: float
    env_steps_per_s: float
    total_steps_per_s: float
    create_s: float
    extra: str = ""

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)

    def line(self) -> str:
        return (
            f"{self.task:<34} {self.obs_mode:<5} success {self.successes:>3}/{self.episodes:<3} "
            f"({100 * self.success_rate:5.1f}%)  len {self.mean_length:6.1f}  "
            f"env {self.env_steps_per_s:7.0f} steps/s  total {self.total_steps_per_s:7.0f} steps/s  "
            f"create {self.create_s:5.1f}s {self.extra}"
        )


def measure_task(
    task: str,
    episodes: int = 20,
    obs_mode: str = "state",
    seed: int = 1000,
    task_kwargs: dict[str, Any] | None = None,
    label: str | None = None,
) -> Measurement:
    """Roll out the expert for ``episodes`` episodes (seeds ``seed..seed+episodes-1``) and time it."""
    t0 = time.perf_counter()
    env = make_task(task, obs_mode, **(task_kwargs or {}))
    create_s = time.perf_counter() - t0
    expert = make_expert(task, env)
    successes, steps, env_time, lengths, extra = 0, 0, 0.0, [], []
    t_start = time.perf_counter()
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            expert.reset()
            n = 0
            while True:
                action = expert.act(obs, env)
                ts = time.perf_counter()
                obs, _, terminated, truncated, info = env.step(action)
                env_time += time.perf_counter() - ts
                n += 1
                if terminated or truncated:
                    break
            successes += bool(info.get("is_success", False))
            steps += n
            lengths.append(n)
            if "max_coverage" in info:
                extra.append(info["max_coverage"])
    finally:
        env.close()
    total = time.perf_counter() - t_start
    note = f"mean max coverage {np.mean(extra):.3f}" if extra else ""
    return Measurement(
        task=label or task,
        obs_mode=obs_mode,
        episodes=episodes,
        successes=successes,
        mean_length=float(np.mean(lengths)),
        env_steps_per_s=steps / max(env_time, 1e-9),
        total_steps_per_s=steps / max(total, 1e-9),
        create_s=create_s,
        extra=note,
    )


def _parse(argv: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in argv:
        if "=" not in a:
            raise SystemExit(f"expected key=value arguments, got {a!r}")
        k, v = a.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; see the module docstring."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = _parse(sys.argv[1:] if argv is None else argv)
    known = {"tasks", "episodes", "obs_mode", "seed", "libero_tasks", "libero_episodes"}
    unknown = set(args) - known
    if unknown:
        raise SystemExit(f"unknown arguments {sorted(unknown)}; known: {sorted(known)}")
    tasks = args.get("tasks", "arm_reach_dynamic,pusht,libero").split(",")
    episodes = int(args.get("episodes", 20))
    obs_mode = args.get("obs_mode", "state")
    seed = int(args.get("seed", 1000))
    results = []
    for task in tasks:
        if task == "libero":
            for item in args.get("libero_tasks", "libero_object:0,libero_spatial:0").split(","):
                suite, tid = item.split(":")
                kw = {"suite": suite, "task_id": int(tid)}
                n = int(args.get("libero_episodes", min(episodes, 10)))
                m = measure_task(task, n, obs_mode, seed, kw, label=f"libero/{suite}:{tid}")
                print(m.line(), flush=True)
                results.append(m)
        else:
            m = measure_task(task, episodes, obs_mode, seed)
            print(m.line(), flush=True)
            results.append(m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure each task's scripted-expert success rate and simulator speed.

    streamdp-sim-measure [tasks=arm_reach_dynamic,pusht,libero] [episodes=20] [obs_mode=state]
                         [seed=1000] [libero_tasks=libero_object:0,libero_spatial:0]

Prints one line per task: success rate over seeded episodes, mean episode length, env steps/s (time
inside ``env.step`` only) and total steps/s (env + expert + reset), plus env creation time.
Seeds default to 1000+ so the numbers are not measured on the seeds the tests use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamdp.policy import cli
from streamdp.policy.cli import opt

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


@dataclass
class MeasureConfig:
    """``streamdp-sim-measure`` keys (config/sim_measure.yaml holds presets only)."""

    tasks: list[str] = opt(help="tasks to measure; libero expands to libero_tasks",
                           factory=lambda: ["arm_reach_dynamic", "pusht", "libero"])
    episodes: int = opt(20, "expert episodes per task (seeds seed..seed+episodes-1)")
    obs_mode: str = opt("state", "state | image")
    seed: int = opt(1000, "first seed (1000+: not the seeds the tests use)")
    libero_tasks: list[str] = opt(help="SUITE:TASK_ID items for libero",
                                  factory=lambda: ["libero_object:0", "libero_spatial:0"])
    libero_episodes: int = opt(0, "episodes per LIBERO task (0: min(episodes, 10))")


LIST_KEYS = ("tasks", "libero_tasks")


def run(cfg: MeasureConfig) -> list[Measurement]:
    """Measure every task of `cfg`, printing one line each."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    results = []
    for task in cfg.tasks:
        if task == "libero":
            for item in cfg.libero_tasks:
                suite, tid = item.split(":")
                kw = {"suite": suite, "task_id": int(tid)}
                n = cfg.libero_episodes or min(cfg.episodes, 10)
                results.append(measure_task(task, n, cfg.obs_mode, cfg.seed, kw, label=f"libero/{suite}:{tid}"))
                print(results[-1].line(), flush=True)
        else:
            results.append(measure_task(task, cfg.episodes, cfg.obs_mode, cfg.seed))
            print(results[-1].line(), flush=True)
    return results


def load_config(overrides: Sequence[str] = ()) -> MeasureConfig:
    """The validated ``streamdp-sim-measure`` config of these ``key=value`` overrides."""
    return cli.load_config("sim_measure", MeasureConfig, overrides, LIST_KEYS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-sim-measure [key=value ...]``."""
    return cli.run_job("streamdp-sim-measure", "sim_measure", MeasureConfig, run, argv,
                       doc=__doc__.split("\n\n")[0], groups=(), list_keys=LIST_KEYS)


if __name__ == "__main__":
    raise SystemExit(main())

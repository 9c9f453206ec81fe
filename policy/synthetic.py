"""A built-in synthetic task with two modes, for tests and the first-run demo.

A point starts near the origin and must reach (1, 0) along either an upper or a lower arc; the choice
is made at random per demonstration and is invisible at t = 0. A policy that averages the modes drives
straight through y = 0 — exactly the failure diffusion policies exist to avoid — so the task checks
multimodality with no simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamdp.policy.config import PolicyConfig
from streamdp.policy.policy import Policy
from streamdp.policy.train.config import TrainConfig
from streamdp.policy.train.data import EpisodeWindows, Window
from streamdp.policy.train.trainer import train_in_memory


@dataclass(frozen=True)
class ArcTask:
    episode_len: int = 32
    amplitude: float = 0.5
    start_noise: float = 0.01

    def demo(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One demonstration: states (T, 2) and actions (T, 2) = next position targets."""
        sign = 1.0 if rng.random() < 0.5 else -1.0
        t = np.arange(self.episode_len + 1) / self.episode_len
        path = np.stack([t, sign * self.amplitude * np.sin(np.pi * t)], axis=-1)
        path = path + rng.normal(0, self.start_noise, size=(1, 2))
        return path[:-1].astype(np.float32), path[1:].astype(np.float32)

    def rollout_y(self, act: callable, steps: int, start: np.ndarray) -> np.ndarray:  # type: ignore[valid-type]
        """Closed loop with perfect tracking: the point moves to each commanded target."""
        pos = start.astype(np.float32).copy()
        ys = []
        for _ in range(steps):
            pos = np.asarray(act(pos), dtype=np.float32)
            ys.append(pos[1])
        return np.asarray(ys)


def make_dataset(task: ArcTask, episodes: int, to: int, tp: int, seed: int = 0) -> EpisodeWindows:
    """Training windows (To observations, Tp actions) over `episodes` demonstrations, with their stats."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        s, a = task.demo(rng)
        eps.append({"observation.state": s, "action": a})
    return EpisodeWindows(eps, Window(to, tp), source="arc task")


def train_arc_policy(
    cfg: PolicyConfig, steps: int = 400, episodes: int = 64, seed: int = 0, progress: bool = False
) -> tuple[Policy, list[float]]:
    """Train a policy on ArcTask demonstrations; returns the policy (EMA weights) and the loss curve."""
    task = ArcTask()
    data = make_dataset(task, episodes, cfg.n_obs_steps, cfg.horizon, seed=seed)
    return train_in_memory(cfg, data, TrainConfig.in_memory(steps=steps, seed=seed, progress=progress))


def arc_rollouts(policy: Policy, n: int, steps: int = 28, seed: int = 0) -> np.ndarray:
    """Closed-loop rollouts from the (ambiguous) start; returns the y coordinate per step, (n, steps)."""
    task = ArcTask()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.normal(0, task.start_noise, size=2)
        policy.reset(state=start)
        out.append(task.rollout_y(lambda p: policy.select_action({"observation.state": p}), steps, start))
    return np.stack(out)


def mode_summary(ys: np.ndarray, amplitude: float = 0.5) -> dict[str, float]:
    """Fractions of rollouts that follow the upper arc, the lower arc, or neither (an average)."""
    peak = ys[:, ys.shape[1] // 4 : 3 * ys.shape[1] // 4].mean(1)
    up = float((peak > 0.5 * amplitude).mean())
    down = float((peak < -0.5 * amplitude).mean())
    return {"upper": up, "lower": down, "neither": 1.0 - up - down}

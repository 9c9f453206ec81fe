"""``arc``: a synthetic two-mode task with no simulator, for tests, multimodality checks and benchmarks.

A point starts near the origin and must reach (1, 0) along either an upper or a lower arc; the choice
is made at random per episode and is invisible at t = 0. A policy that averages the modes drives
straight through y = 0, exactly the failure diffusion policies exist to avoid. Actions are the next
position, tracked perfectly. Success: the episode ends within ``tolerance`` of (1, 0) after following
an arc (mean |y| over the middle half above half the amplitude).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .base import STATE_KEY, TaskEntry, TaskEnv, TaskSpec, check_obs_mode, register_task

NAME = "arc"
FPS = 10


@dataclass(frozen=True)
class ArcTask:
    """The arc geometry and its demonstrations."""

    episode_len: int = 32
    amplitude: float = 0.5
    start_noise: float = 0.01

    def path(self, sign: float, start: np.ndarray) -> np.ndarray:
        """The (episode_len + 1, 2) way points of one arc, shifted by the start offset."""
        t = np.arange(self.episode_len + 1) / self.episode_len
        return np.stack([t, sign * self.amplitude * np.sin(np.pi * t)], axis=-1) + start.reshape(1, 2)

    def demo(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One demonstration: states (T, 2) and actions (T, 2) = next position targets."""
        sign = 1.0 if rng.random() < 0.5 else -1.0
        path = self.path(sign, rng.normal(0, self.start_noise, size=(1, 2)))
        return path[:-1].astype(np.float32), path[1:].astype(np.float32)


def mode_summary(ys: np.ndarray, amplitude: float = 0.5) -> dict[str, float]:
    """Fractions of rollouts (rows of y per step) that follow the upper arc, the lower arc, or neither."""
    peak = ys[:, ys.shape[1] // 4 : 3 * ys.shape[1] // 4].mean(1)
    up = float((peak > 0.5 * amplitude).mean())
    down = float((peak < -0.5 * amplitude).mean())
    return {"upper": up, "lower": down, "neither": 1.0 - up - down}


def arc_spec(obs_mode: str = "state", episode_len: int = 32, tolerance: float = 0.1, **_: Any) -> TaskSpec:
    """Spec of the arc task (state only: there is nothing to see)."""
    check_obs_mode(obs_mode)
    if obs_mode != "state":
        raise ValueError("the arc task has no cameras: obs_mode must be 'state'")
    return TaskSpec(
        name=NAME, obs_mode=obs_mode, fps=FPS, joint_names=["x", "y"],
        state_names=["x", "y"], action_names=["target_x", "target_y"], camera_names=[], image_shape=None,
        max_episode_steps=episode_len,
        success=f"ends within {tolerance:g} of (1, 0) after following the upper or the lower arc",
        robot_type="point_2d", description="Reach (1, 0) along one of two arcs.",
    )  # fmt: skip


class ArcEnv(TaskEnv):
    """Gymnasium env of the arc task; the arc of an episode (privileged) is drawn from the reset seed."""

    def __init__(self, obs_mode: str = "state", seed: int | None = None, episode_len: int = 32,
                 tolerance: float = 0.1, **_: Any) -> None:  # fmt: skip
        self.init_spaces(arc_spec(obs_mode, episode_len, tolerance), 0, gym.spaces.Box(-2.0, 2.0, (2,), np.float32))
        self.task = ArcTask(episode_len=episode_len)
        self.tolerance = tolerance
        self._rng = np.random.default_rng(seed)
        self.pos = np.zeros(2, np.float32)
        self.sign, self.t, self.ys = 1.0, 0, []
        self.waypoints = self.task.path(1.0, self.pos)

    def _obs(self) -> dict[str, np.ndarray]:
        return {STATE_KEY: self.pos.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.pos = self._rng.normal(0, self.task.start_noise, size=2).astype(np.float32)
        self.sign = 1.0 if self._rng.random() < 0.5 else -1.0
        self.waypoints = self.task.path(self.sign, self.pos)
        self.t, self.ys = 0, []
        return self._obs(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.pos = np.asarray(action, dtype=np.float32).reshape(2).copy()
        self.t += 1
        self.ys.append(float(self.pos[1]))
        done = self.t >= self.task.episode_len
        success = done and self._on_an_arc() and bool(np.linalg.norm(self.pos - (1.0, 0.0)) < self.tolerance)
        reward = float(success)
        return self._obs(), reward, done, False, {"is_success": success}

    def _on_an_arc(self) -> bool:
        return mode_summary(np.asarray([self.ys]), self.task.amplitude)["neither"] == 0.0

    def render(self) -> np.ndarray:
        """A 64x64 image with the point drawn (enough for the evaluator's videos)."""
        img = np.full((64, 64, 3), 255, np.uint8)
        x, y = int(np.clip(self.pos[0] * 48 + 8, 0, 63)), int(np.clip(32 - self.pos[1] * 48, 0, 63))
        img[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = (200, 0, 0)
        return img

    def close(self) -> None:
        pass


class ArcExpert:
    """Follows the episode's arc (it reads the privileged sign from the env)."""

    def __init__(self, env: ArcEnv, **_: Any) -> None:
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, np.ndarray], env: Any = None) -> np.ndarray:
        e = env or self.env
        return e.waypoints[min(e.t + 1, len(e.waypoints) - 1)].astype(np.float32)


# ---------------------------------------------------------------------------------- in-memory training
def make_dataset(task: ArcTask, episodes: int, to: int, tp: int, seed: int = 0) -> Any:
    """Training windows (To observations, Tp actions) over `episodes` demonstrations, with their stats
    (an ``EpisodeWindows`` of the one training package)."""
    from streamdp.policy.train.data import EpisodeWindows, Window

    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        s, a = task.demo(rng)
        eps.append({"observation.state": s, "action": a})
    return EpisodeWindows(eps, Window(to, tp), source="arc task")


def train_arc_policy(
    cfg: Any, steps: int = 400, episodes: int = 64, seed: int = 0, progress: bool = False
) -> tuple[Any, list[float]]:
    """Train a policy on ArcTask demonstrations with the one Trainer; returns the policy (EMA weights) and
    the loss curve."""
    from streamdp.policy.train.config import TrainConfig
    from streamdp.policy.train.trainer import train_in_memory

    data = make_dataset(ArcTask(), episodes, cfg.n_obs_steps, cfg.horizon, seed=seed)
    return train_in_memory(cfg, data, TrainConfig.in_memory(steps=steps, seed=seed, progress=progress))


def arc_rollouts(policy: Any, n: int, steps: int = 28, seed: int = 0) -> np.ndarray:
    """Closed-loop rollouts from the (ambiguous) start; the y coordinate per step, (n, steps)."""
    task = ArcTask()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.normal(0, task.start_noise, size=2)
        policy.reset(state=start)
        out.append(_follow(lambda p: policy.select_action({STATE_KEY: p}), steps, start))
    return np.stack(out)


def _follow(act: Callable[[np.ndarray], np.ndarray], steps: int, start: np.ndarray) -> np.ndarray:
    pos = start.astype(np.float32).copy()
    ys = []
    for _ in range(steps):
        pos = np.asarray(act(pos), dtype=np.float32)
        ys.append(pos[1])
    return np.asarray(ys)


register_task(NAME, TaskEntry(spec=arc_spec, make=ArcEnv, expert=ArcExpert))

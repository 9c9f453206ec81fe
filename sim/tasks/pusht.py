"""``pusht``: gym-pusht's PushT-v0 behind the common task API, plus a scripted pushing expert.

Observation keys: ``state`` mode -> ``observation.state`` = [agent x, agent y, block x, block y,
cos(block angle), sin(block angle)] (the angle as cos/sin so the vector has no 2*pi jump);
``image`` mode -> ``observation.state`` = [agent x, agent y] and ``observation.images.top`` (the
env's own 96x96 top-down rendering). Actions: the agent's target position in pixels, [0, 512]^2.
Success is the env's own: the block covers more than 95 % of the goal T (the episode terminates).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from .base import STATE_KEY, TaskEntry, TaskEnv, TaskSpec, check_obs_mode, register_task

NAME = "pusht"
FPS = 10
MAX_STEPS = 300
CAMERA = "top"
AGENT_RADIUS = 15.0

# T outline in the block's local frame (counter-clockwise), as built by gym_pusht's add_tee(scale=30).
T_OUTLINE = np.array(
    [(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], dtype=np.float64
)


def _import_gym_pusht() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)
        import gym_pusht.envs  # noqa: F401  (imports pygame now, inside this filter, not in gym.make)


def pusht_spec(
    obs_mode: str = "state", image_size: int = 96, max_episode_steps: int = MAX_STEPS, **_: Any
) -> TaskSpec:
    """Spec of the PushT task."""
    check_obs_mode(obs_mode)
    state_names = ["agent.x", "agent.y"]
    if obs_mode == "state":
        state_names += ["block.x", "block.y", "block.cos_theta", "block.sin_theta"]
    return TaskSpec(
        name=NAME,
        obs_mode=obs_mode,
        fps=FPS,
        joint_names=["agent.x", "agent.y"],
        state_names=state_names,
        action_names=["agent.target_x", "agent.target_y"],
        camera_names=[CAMERA] if obs_mode == "image" else [],
        image_shape=(image_size, image_size, 3) if obs_mode == "image" else None,
        max_episode_steps=max_episode_steps,
        success="T block covers > 95% of the goal T (gym-pusht's own success)",
        robot_type="pusht_point_agent",
        description="Push the T-shaped block onto the green goal T.",
    )


class PushTTask(TaskEnv):
    """gym-pusht with LeRobot observation keys; ``info`` adds ``max_coverage`` over the episode."""

    def __init__(
        self,
        obs_mode: str = "state",
        seed: int | None = None,
        image_size: int = 96,
        max_episode_steps: int = MAX_STEPS,
        render_size: int = 384,
    ) -> None:
        _import_gym_pusht()
        self.init_spaces(pusht_spec(obs_mode, image_size=image_size, max_episode_steps=max_episode_steps),
                         image_size, gym.spaces.Box(0.0, 512.0, (2,), np.float32))
        self.max_episode_steps = max_episode_steps
        self._env = gym.make(
            "gym_pusht/PushT-v0",
            obs_type="state" if obs_mode == "state" else "pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=image_size,
            observation_height=image_size,
            visualization_width=render_size,
            visualization_height=render_size,
            max_episode_steps=max_episode_steps,
            disable_env_checker=True,
        )
        self._seed = seed
        self.max_coverage = 0.0

    @property
    def sim(self) -> Any:
        """The underlying gym_pusht PushTEnv (pymunk bodies: ``agent``, ``block``; ``goal_pose``)."""
        return self._env.unwrapped

    def _convert(self, raw: Any) -> dict[str, np.ndarray]:
        sim = self.sim
        agent = np.asarray(sim.agent.position, dtype=np.float64)
        if self.obs_mode == "state":
            th = float(sim.block.angle)
            bx, by = sim.block.position
            state = np.array([agent[0], agent[1], bx, by, np.cos(th), np.sin(th)])
            return {STATE_KEY: state.astype(np.float32)}
        return {
            STATE_KEY: np.asarray(raw["agent_pos"], dtype=np.float32),
            self.task_spec.image_keys[0]: np.ascontiguousarray(raw["pixels"], dtype=np.uint8),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        raw, info = self._env.reset(seed=seed, options=options)
        self.max_coverage = 0.0
        info = dict(info, is_success=False, coverage=0.0, max_coverage=0.0)
        return self._convert(raw), info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,):
            raise ValueError(f"{NAME}: action must have shape (2,), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{NAME}: non-finite action {a}")
        raw, reward, terminated, truncated, info = self._env.step(np.clip(a, 0.0, 512.0))
        self.max_coverage = max(self.max_coverage, float(info["coverage"]))
        info = dict(info, is_success=bool(info["is_success"]), max_coverage=self.max_coverage)
        return self._convert(raw), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _rot(th: float) -> np.ndarray:
    c, s = np.cos(th), np.sin(th)
    return np.array([[c, -s], [s, c]])


def _seg_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points ``p`` (N, 2) to segment ab."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def _outline_dist(p: np.ndarray) -> np.ndarray:
    """Unsigned distance from local-frame points (N, 2) to the T outline."""
    edges = zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0), strict=True)
    return np.min(np.stack([_seg_dist(p, a, b) for a, b in edges]), axis=0)


def _nearest_outline_point(p: np.ndarray) -> np.ndarray:
    """Closest point of the T outline to the local-frame point ``p`` (2,)."""
    best, best_d = T_OUTLINE[0], np.inf
    for a, b in zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0), strict=True):
        ab = b - a
        q = a + np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0) * ab
        d = np.linalg.norm(p - q)
        if d < best_d:
            best, best_d = q, d
    return best


def _inside_t(p: np.ndarray) -> np.ndarray:
    bar = (np.abs(p[:, 0]) <= 60) & (p[:, 1] >= 0) & (p[:, 1] <= 30)
    stem = (np.abs(p[:, 0]) <= 15) & (p[:, 1] >= 30) & (p[:, 1] <= 120)
    return bar | stem


def _candidate_contacts(spacing: float = 7.5) -> tuple[np.ndarray, np.ndarray]:
    """Local-frame contact points on the T outline and their outward normals where the round agent
    can touch that face alone (its disk clears every other face)."""
    pts, normals = [], []
    for a, b in zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0), strict=True):
        d = b - a
        length = np.linalg.norm(d)
        n = np.array([d[1], -d[0]]) / length  # outward for a counter-clockwise outline
        for t in np.arange(spacing / 2, length, spacing) / length:
            pts.append(a + t * d)
            normals.append(n)
    pts_a, normals_a = np.array(pts), np.array(normals)
    centers = pts_a + AGENT_RADIUS * normals_a
    ok = (_outline_dist(centers) >= AGENT_RADIUS - 0.5) & ~_inside_t(centers)
    return pts_a[ok], normals_a[ok]


@dataclass(eq=False)
class PushTExpert:
    """Quasi-static pushing expert on privileged block pose.

    gym-pusht's block keeps no velocity between physics steps (space damping 0) and touches the agent
    without friction, so pushing the contact point at local ``r`` by ``d`` along the inward face normal
    ``f`` moves the block's centre of gravity by ``d f / k`` and turns it by ``d (r x f) / (I k)``, with
    ``k = 1 + m (r x f)^2 / I``. Each tick the expert scores every contact on the T outline that the
    round agent can reach by how well that motion aligns with the remaining pose error (position plus
    ``rho``-weighted angle), walks around the block to the best one (with hysteresis, so it does not
    dither), and pushes by the least-squares displacement, so pushes shrink near the goal.
    """

    env: PushTTask | None = None
    rho: float = 60.0
    gap: float = 8.0
    max_push: float = 30.0
    min_push: float = 1.0
    switch_ratio: float = 1.25

    def __post_init__(self) -> None:
        self.contacts, self.normals = _candidate_contacts()
        self.waypoints = _waypoints(self.gap + 6.0)
        self._current: int | None = None
        self._pushing = False

    def reset(self) -> None:
        self._current = None
        self._pushing = False

    def _twists(self, block: Any) -> np.ndarray:
        """(N, 3) block motion [dx, dy, rho * dtheta] per unit agent displacement, per contact."""
        cog = np.asarray(block.center_of_gravity, dtype=np.float64)
        f = -self.normals
        r = self.contacts - cog
        rxf = r[:, 0] * f[:, 1] - r[:, 1] * f[:, 0]
        inertia = float(block.moment)
        k = 1.0 + float(block.mass) * rxf**2 / inertia
        f_world = f @ _rot(float(block.angle)).T
        return np.concatenate([f_world, (self.rho * rxf / inertia)[:, None]], axis=1) / k[:, None]

    def act(self, obs: dict[str, np.ndarray], env: PushTTask | None = None) -> np.ndarray:
        env = env or self.env
        if env is None:
            raise ValueError("PushTExpert needs the env (privileged block pose)")
        sim = env.sim if isinstance(env, PushTTask) else env.unwrapped
        block = sim.block
        agent = np.asarray(sim.agent.position, dtype=np.float64)
        th = float(block.angle)
        rot = _rot(th)
        pos = np.asarray(block.position, dtype=np.float64)
        cog_local = np.asarray(block.center_of_gravity, dtype=np.float64)
        goal = np.asarray(sim.goal_pose, dtype=np.float64)
        err_xy = goal[:2] + _rot(goal[2]) @ cog_local - (pos + rot @ cog_local)
        want = np.array([err_xy[0], err_xy[1], self.rho * _wrap(goal[2] - th)])

        tw = self._twists(block)
        scores = (tw @ want) / (np.linalg.norm(tw, axis=1) * max(float(np.linalg.norm(want)), 1e-9))
        # Agent targets are limited to [0, 512]^2: contacts whose approach point lies outside are unusable.
        approach_all = pos + (self.contacts + (AGENT_RADIUS + self.gap) * self.normals) @ rot.T
        scores[~np.all((approach_all >= 1.0) & (approach_all <= 511.0), axis=1)] = -np.inf
        best = int(np.argmax(scores))
        cur = self._current
        if cur is None or scores[cur] <= 0.2 or scores[best] > self.switch_ratio * scores[cur]:
            if cur != best:
                self._pushing = False
            cur = self._current = best

        n_world = rot @ self.normals[cur]
        touch = pos + rot @ (self.contacts[cur] + AGENT_RADIUS * self.normals[cur])
        local_agent = rot.T @ (agent - pos)
        agent_gap = float(_outline_dist(local_agent[None])[0])
        if self._pushing or np.linalg.norm(agent - (touch + self.gap * n_world)) < 4.0:
            self._pushing = True
            if agent_gap > AGENT_RADIUS + 2 * self.gap and not _inside_t(local_agent[None])[0]:
                self._pushing = False  # lost contact (the block turned away): re-approach next tick
            # least-squares agent displacement along f that cancels the error
            depth = float(tw[cur] @ want) / float(tw[cur] @ tw[cur])
            target = touch - float(np.clip(depth, self.min_push, self.max_push)) * n_world
            return np.clip(target, 0.0, 512.0).astype(np.float32)
        if agent_gap < AGENT_RADIUS + self.gap - 2.0:
            # Too close to the block to plan a detour: back straight off the nearest face first.
            away = local_agent - _nearest_outline_point(local_agent)
            away = away / max(float(np.linalg.norm(away)), 1e-6)
            return np.clip(agent + rot @ away * 2 * self.gap, 0.0, 512.0).astype(np.float32)
        waypoint = self._navigate(agent, touch + self.gap * n_world, pos, rot)
        return np.clip(waypoint, 0.0, 512.0).astype(np.float32)

    def _clear(
        self, a: np.ndarray, b: np.ndarray, pos: np.ndarray, rot: np.ndarray, exempt_end: float
    ) -> bool:
        """Whether the agent can travel a -> b without touching the block (world frame)."""
        length = float(np.linalg.norm(b - a))
        n = max(int(length / 3.0), 2)
        t = np.linspace(0.0, 1.0, n)[:, None]
        pts = a + t * (b - a)
        d_end = np.linalg.norm(pts - b, axis=1)
        d_start = np.linalg.norm(pts - a, axis=1)
        keep = (d_end > exempt_end) & (d_start > 6.0)
        if not np.any(keep):
            return True
        local = (pts[keep] - pos) @ rot
        return bool(
            np.all(_outline_dist(local) >= AGENT_RADIUS + self.gap - 2.0) and not np.any(_inside_t(local))
        )

    def _navigate(self, agent: np.ndarray, goal: np.ndarray, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """Next waypoint of the shortest collision-free path to ``goal`` through a small visibility
        graph of points around the block (offset corners and the two pockets under the bar)."""
        if self._clear(agent, goal, pos, rot, exempt_end=self.gap + 2.0):
            return goal
        nodes = [agent, goal] + [w for w in (pos + self.waypoints @ rot.T) if np.all((w >= 0) & (w <= 512))]
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        done = np.zeros(n, dtype=bool)
        for _ in range(n):
            u = int(np.argmin(np.where(done, np.inf, dist)))
            if not np.isfinite(dist[u]) or u == 1:
                break
            done[u] = True
            for v in range(1, n):
                if done[v]:
                    continue
                w = float(np.linalg.norm(nodes[v] - nodes[u]))
                if dist[u] + w < dist[v] and self._clear(
                    nodes[u], nodes[v], pos, rot, self.gap + 2.0 if v == 1 else 0.0
                ):
                    dist[v] = dist[u] + w
                    prev[v] = u
        v = 1
        if prev[1] < 0:
            # No full path (block against a wall): get as close as the graph allows, else go straight.
            reached = [i for i in range(2, n) if np.isfinite(dist[i])]
            if not reached:
                return goal
            v = min(reached, key=lambda i: float(np.linalg.norm(nodes[i] - goal)))
        while prev[v] != 0:
            v = int(prev[v])
        return nodes[v]


def _waypoints(margin: float) -> np.ndarray:
    """Local-frame detour points: each convex corner of the T pushed out diagonally, plus the two
    pockets between bar and stem."""
    d = AGENT_RADIUS + margin
    corners = [
        (-60, 0, -1, -1),
        (60, 0, 1, -1),
        (60, 30, 1, 1),
        (15, 120, 1, 1),
        (-15, 120, -1, 1),
        (-60, 30, -1, 1),
    ]
    pts = [(x + sx * d, y + sy * d) for x, y, sx, sy in corners]
    pts += [(37.5, 30 + d), (-37.5, 30 + d)]
    return np.array(pts, dtype=np.float64)


register_task(NAME, TaskEntry(spec=pusht_spec, make=PushTTask, expert=PushTExpert))

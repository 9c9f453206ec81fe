"""``arm_reach_dynamic``: a planar 3-link MuJoCo arm reaching a target that jumps mid-episode.

Why a 3-link planar arm: it simulates at thousands of steps/s on one core (the collector and the
closed-loop evaluator run hundreds of episodes on a 2-core machine), its inverse kinematics is
closed-form (so the expert is exact and cheap), and one redundant joint plus a target that jumps to
a new random place at a random moment is enough to show whether a policy *reacts* to new
observations while executing a chunk, which is the point of streaming diffusion policies.

Control: actions are target joint positions (rad) for the three position servos, at 20 Hz; each
control tick runs 25 physics steps of 2 ms. The target jumps once, at a random tick in the middle
third of the episode, to a random position at least ``min_jump`` away. Success: the end effector is
within ``tolerance`` of the *final* target for ``hold_steps`` consecutive ticks (the episode then
terminates).
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import gymnasium as gym
import numpy as np

from .base import STATE_KEY, TaskEntry, TaskEnv, TaskSpec, check_obs_mode, register_task

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first mujoco import
import mujoco  # noqa: E402

NAME = "arm_reach_dynamic"
JOINT_NAMES = ["joint1", "joint2", "joint3"]
LINK_LENGTHS = np.array([0.30, 0.25, 0.15])
FPS = 20
PHYSICS_DT = 0.002
CAMERA = "top"


def _joint_limits(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
    ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in JOINT_NAMES]
    rng = model.jnt_range[ids]
    return rng[:, 0].copy(), rng[:, 1].copy()


def arm_spec(
    obs_mode: str = "state",
    image_size: int = 96,
    max_episode_steps: int = 120,
    tolerance: float = 0.03,
    hold_steps: int = 5,
    **_: Any,
) -> TaskSpec:
    """Spec of the arm task; state mode appends the target xy to the joint state."""
    check_obs_mode(obs_mode)
    state_names = [f"{j}.pos" for j in JOINT_NAMES] + [f"{j}.vel" for j in JOINT_NAMES]
    if obs_mode == "state":
        state_names += ["target.x", "target.y"]
    return TaskSpec(
        name=NAME,
        obs_mode=obs_mode,
        fps=FPS,
        joint_names=list(JOINT_NAMES),
        state_names=state_names,
        action_names=[f"{j}.target_pos" for j in JOINT_NAMES],
        camera_names=[CAMERA] if obs_mode == "image" else [],
        image_shape=(image_size, image_size, 3) if obs_mode == "image" else None,
        max_episode_steps=max_episode_steps,
        success=(
            f"end effector within {100 * tolerance:g} cm of the final (post-jump) target "
            f"for {hold_steps} consecutive ticks"
        ),
        robot_type="planar_arm_3dof",
        description="Reach the red target with the arm tip; the target jumps once mid-episode.",
    )


class ArmReachDynamicEnv(TaskEnv):
    """MuJoCo env of the task described in the module docstring."""

    def __init__(
        self,
        obs_mode: str = "state",
        seed: int | None = None,
        image_size: int = 96,
        max_episode_steps: int = 120,
        tolerance: float = 0.03,
        hold_steps: int = 5,
        min_jump: float = 0.25,
        target_radius: tuple[float, float] = (0.25, 0.62),
        target_angle: float = 2.0,
        render_size: int | None = None,
    ) -> None:
        spec = arm_spec(obs_mode, image_size, max_episode_steps, tolerance, hold_steps)
        self.max_episode_steps = max_episode_steps
        self.tolerance = tolerance
        self.hold_steps = hold_steps
        self.min_jump = min_jump
        self.target_radius = target_radius
        self.target_angle = target_angle
        self.image_size = image_size
        self.render_size = render_size or image_size

        xml = resources.files("streamdp.sim").joinpath("assets", "arm_reach_dynamic.xml").read_text()
        self.model = mujoco.MjModel.from_xml_string(xml)
        # Small frames render in a few ms without shadows and multisampling (~50 ms with shadows).
        self.model.vis.quality.shadowsize = 0
        self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (FPS * self.model.opt.timestep))
        self.q_low, self.q_high = _joint_limits(self.model)
        self._ee = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "ee")
        self._mocap = self.model.body_mocapid[
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "target")
        ]
        self._renderers: dict[int, mujoco.Renderer] = {}

        self.init_spaces(spec, image_size,
                         gym.spaces.Box(self.q_low.astype(np.float32), self.q_high.astype(np.float32)))

        self.target = np.zeros(2)
        self.target_history: list[np.ndarray] = []
        self.jump_step = 0
        self.t = 0
        self._held = 0
        self._rng = np.random.default_rng(seed)

    # -- task logic ----------------------------------------------------------------------------
    def _sample_target(self, avoid: np.ndarray | None = None) -> np.ndarray:
        for _ in range(1000):
            r = self._rng.uniform(*self.target_radius)
            a = self._rng.uniform(-self.target_angle, self.target_angle)
            p = np.array([r * np.cos(a), r * np.sin(a)])
            if avoid is None or np.linalg.norm(p - avoid) >= self.min_jump:
                return p
        raise RuntimeError("could not sample a target far enough from the previous one")

    def _set_target(self, p: np.ndarray) -> None:
        self.target = p.copy()
        self.data.mocap_pos[self._mocap, :2] = p

    @property
    def ee_pos(self) -> np.ndarray:
        """End-effector (x, y) in the world frame."""
        return self.data.site_xpos[self._ee, :2].copy()

    @property
    def qpos(self) -> np.ndarray:
        return self.data.qpos[:3].copy()

    def _obs(self) -> dict[str, np.ndarray]:
        parts = [self.data.qpos[:3], self.data.qvel[:3]]
        if self.obs_mode == "state":
            parts.append(self.target)
        obs = {STATE_KEY: np.concatenate(parts).astype(np.float32)}
        for key in self.task_spec.image_keys:
            obs[key] = self._render(self.image_size)
        return obs

    def _info(self, success: bool) -> dict[str, Any]:
        dist = float(np.linalg.norm(self.ee_pos - self.target))
        return {
            "is_success": success,
            "distance": dist,
            "target": self.target.copy(),
            "ee_pos": self.ee_pos,
            "jumped": self.t >= self.jump_step,
            "jump_step": self.jump_step,
            "step": self.t,
        }

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        q0 = np.array(
            [self._rng.uniform(-1.0, 1.0), self._rng.uniform(-1.5, 1.5), self._rng.uniform(-1.0, 1.0)]
        )
        self.data.qpos[:3] = q0
        self.data.ctrl[:3] = q0
        self._set_target(self._sample_target())
        self.target_history = [self.target.copy()]
        third = self.max_episode_steps // 3
        self.jump_step = int(self._rng.integers(third, 2 * third))
        self.t = 0
        self._held = 0
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (3,):
            raise ValueError(f"{NAME}: action must have shape (3,), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{NAME}: non-finite action {a}")
        self.data.ctrl[:3] = np.clip(a, self.q_low, self.q_high)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.t += 1
        if self.t == self.jump_step:
            self._set_target(self._sample_target(avoid=self.target))
            self.target_history.append(self.target.copy())
            mujoco.mj_forward(self.model, self.data)
        dist = float(np.linalg.norm(self.ee_pos - self.target))
        close = self.t > self.jump_step and dist < self.tolerance
        self._held = self._held + 1 if close else 0
        success = self._held >= self.hold_steps
        truncated = not success and self.t >= self.max_episode_steps
        return self._obs(), -dist, success, truncated, self._info(success)

    def _render(self, size: int) -> np.ndarray:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, size, size)
            self.close_at_exit()
        r = self._renderers[size]
        r.update_scene(self.data, camera=CAMERA)
        return r.render().copy()

    def render(self) -> np.ndarray:
        """Top-down RGB frame (``render_size`` square)."""
        return self._render(self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


WRIST_RATIO = 0.5  # the expert's posture synergy: joint3 = WRIST_RATIO * joint2


def _chain_tip(q2: np.ndarray | float, ratio: float, lengths: np.ndarray) -> np.ndarray:
    """Tip (complex) of the arm with joint1 = 0, joint2 = q2, joint3 = ratio * q2."""
    l1, l2, l3 = lengths
    return l1 + l2 * np.exp(1j * q2) + l3 * np.exp(1j * (1 + ratio) * q2)


def planar_ik(
    target: np.ndarray,
    q_low: np.ndarray,
    q_high: np.ndarray,
    lengths: np.ndarray = LINK_LENGTHS,
    ratio: float = WRIST_RATIO,
) -> np.ndarray:
    """IK of the planar 3-link arm with its redundancy fixed by a posture synergy (joint3 = ratio * joint2).

    The reach |tip| then falls monotonically as the elbow bends, so the elbow angle for a target's
    radius is unique (bisection) and joint1 follows from the bearing: the goal posture is a smooth
    function of the target alone. That is what a demonstrator a policy can learn from must be; an
    IK that resolves the redundancy by the current pose switches branches at unpredictable moments.
    The elbow bends the positive way, or the negative way where joint1 would leave its limits.
    Raises if the target is unreachable.
    """
    target = np.asarray(target, dtype=np.float64)
    r, bearing = float(np.hypot(*target)), float(np.arctan2(target[1], target[0]))
    top = float(min(q_high[1], q_high[2] / ratio if ratio > 0 else np.inf, np.pi) - 0.05)
    if not abs(_chain_tip(top, ratio, lengths)) <= r <= float(np.sum(lengths)):
        raise ValueError(f"target {target} is out of reach of the arm")
    lo, hi = 0.0, top  # |tip| decreases in q2 on [0, top]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if abs(_chain_tip(mid, ratio, lengths)) > r else (lo, mid)
    q2 = 0.5 * (lo + hi)
    for sign in (1.0, -1.0):
        q1 = bearing - float(np.angle(_chain_tip(sign * q2, ratio, lengths)))
        q1 = (q1 + np.pi) % (2 * np.pi) - np.pi
        q = np.array([q1, sign * q2, sign * ratio * q2])
        if np.all(q >= q_low + 0.05) and np.all(q <= q_high - 0.05):
            return q
    raise ValueError(f"target {target} is out of reach of the arm within its joint limits")


class ArmReachExpert:
    """IK expert: step toward the closed-form IK solution of the *current* target, at most
    ``max_step`` rad per joint per tick, so demos are smooth yet react to the jump at once."""

    def __init__(self, env: ArmReachDynamicEnv | None = None, max_step: float = 0.25) -> None:
        self.env = env
        self.max_step = max_step

    def reset(self) -> None:
        """Stateless: nothing to clear."""

    def act(self, obs: dict[str, np.ndarray], env: ArmReachDynamicEnv | None = None) -> np.ndarray:
        env = env or self.env
        if env is None:
            raise ValueError("ArmReachExpert needs the env (privileged target position)")
        env = getattr(env, "unwrapped", env)
        q = np.asarray(obs[STATE_KEY][:3], dtype=np.float64)
        q_star = planar_ik(env.target, env.q_low, env.q_high)
        dq = np.clip(q_star - q, -self.max_step, self.max_step)
        return (q + dq).astype(np.float32)


register_task(NAME, TaskEntry(spec=arm_spec, make=ArmReachDynamicEnv, expert=ArmReachExpert))

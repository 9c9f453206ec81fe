"""How each simulated task looks as a ROS robot (no rclpy): topics, joint names, state layout, commands.

``sim_bridge_node`` publishes a task through this description and ``policy_node`` (or the recorder) reads
it back through its observation adapter (:class:`~streamdp.ros_nodes.observation.StateLayout`), so one
table says both sides. The contract, checked by ``tests/ros/test_sim_robots.py`` for every task and mode:
the adapter fed with the bridge's messages of a tick assembles exactly the ``observation.state`` the
task's env returned for that tick, which is what ``streamdp-collect`` writes into a dataset; and the
joints are those a checkpoint trained on that dataset names (:func:`streamdp.policy.train.data.joint_names_from`).

* ``/joint_states`` (``sensor_msgs/JointState``): the robot's joints with measured positions and
  velocities (PushT: the point agent's x and y, in pixels).
* ``geometry_msgs/PointStamped`` per privileged or non-joint state entry (the arm's target, PushT's
  block position and heading as (cos, sin), LIBERO's end-effector position, rotation vector and finger
  positions, the object's and the container's positions), stamped like the joint state of the tick.
* ``sensor_msgs/Image`` per camera (image mode).
* Commands: one value per entry of ``command_names``, by name in a ``JointTrajectory`` or in that order
  in a ``Float64MultiArray``. For the arm and PushT they are position targets of the joints (the last one
  keeps being tracked: a hold); LIBERO's are end-effector deltas plus the gripper (a command acts once;
  without a new one the arm stops, the gripper keeps its last command).

LIBERO's actions are not joint positions, so ``policy_node`` (which streams position targets seeded from
the measured joints) does not deploy a LIBERO checkpoint; the bridge, the expert teleop and the
observation adapter work for it all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamdp.sim.tasks import TaskSpec

Reader = Callable[[Any], Sequence[float]]


@dataclass(frozen=True)
class ExtraTopic:
    """One ``PointStamped`` topic: the state entries it carries (in ``fields`` order) and how to read them."""

    name: str  # the state-layout entry (policy_node's extra_state_names)
    topic: str
    fields: str  # PointStamped components, e.g. "xy"
    state_names: tuple[str, ...]  # the observation.state names it holds (one per field)
    read: Reader = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.state_names):
            raise ValueError(f"extra {self.name!r}: fields {self.fields!r} for {len(self.state_names)} state names")


@dataclass(frozen=True)
class SimRobot:
    """A task in one observation mode as a ROS robot (see the module docstring)."""

    task: str
    obs_mode: str
    joint_names: tuple[str, ...]
    command_names: tuple[str, ...]
    position_commands: bool  # commands are joint position targets (a hold repeats the last one)
    joint_state_fields: tuple[str, ...]  # joint_state.<field> entries of the layout, in order
    joint_state_names: tuple[tuple[str, ...], ...]  # the state names each of those entries holds
    extras: tuple[ExtraTopic, ...]  # every PointStamped topic the bridge publishes
    layout_extras: tuple[str, ...]  # the extras in observation.state, in order (after the joint entries)
    cameras: tuple[str, ...]
    camera_topic_format: str = "/camera/{camera}/image_raw"
    read_joints: Callable[[Any], tuple[np.ndarray, np.ndarray]] = field(default=None, compare=False, repr=False)
    hold: Callable[[Any, np.ndarray | None], np.ndarray] = field(default=None, compare=False, repr=False)

    @property
    def state_layout(self) -> list[str]:
        """``policy_node``'s ``state_layout`` parameter for this robot."""
        return [f"joint_state.{f}" for f in self.joint_state_fields] + list(self.layout_extras)

    @property
    def state_names(self) -> list[str]:
        """The observation.state names the layout assembles, in order (== the task spec's)."""
        by_name = {e.name: e for e in self.extras}
        names = [n for group in self.joint_state_names for n in group]
        return names + [n for e in self.layout_extras for n in by_name[e].state_names]

    def camera_topic(self, camera: str) -> str:
        return self.camera_topic_format.format(camera=camera)

    def policy_params(self) -> dict[str, Any]:
        """Parameters that make ``policy_node`` (and the recorder's adapter) read this robot's topics."""
        used = [e for e in self.extras if e.name in self.layout_extras]
        return {
            "joint_names": list(self.joint_names),
            "state_layout": self.state_layout,
            "extra_state_names": [e.name for e in used],
            "extra_state_topics": [e.topic for e in used],
            "extra_state_fields": [e.fields for e in used],
            "camera_names": list(self.cameras),
            "camera_topics": [self.camera_topic(c) for c in self.cameras],
        }


# ---------------------------------------------------------------------------------------------- tasks
def _arm(spec: TaskSpec) -> SimRobot:
    joints = tuple(spec.joint_names)
    n = len(joints)
    target = ExtraTopic("target", "/target", "xy", ("target.x", "target.y"), lambda u: u.target[:2])
    return SimRobot(
        task=spec.name, obs_mode=spec.obs_mode, joint_names=joints, command_names=joints, position_commands=True,
        joint_state_fields=("position", "velocity"),
        joint_state_names=(tuple(f"{j}.pos" for j in joints), tuple(f"{j}.vel" for j in joints)),
        extras=(target,), layout_extras=("target",) if spec.obs_mode == "state" else (),
        cameras=tuple(spec.camera_names),
        read_joints=lambda u: (np.array(u.data.qpos[:n], dtype=np.float64),
                               np.array(u.data.qvel[:n], dtype=np.float64)),
        hold=lambda u, last: np.array(u.data.ctrl[:n], dtype=np.float64) if last is None else last,
    )


def _pusht(spec: TaskSpec) -> SimRobot:
    def angle(u: Any) -> float:
        return float(u.sim.block.angle)

    block = ExtraTopic("block", "/block/position", "xy", ("block.x", "block.y"),
                       lambda u: np.asarray(u.sim.block.position, dtype=np.float64))
    heading = ExtraTopic("block_heading", "/block/heading", "xy", ("block.cos_theta", "block.sin_theta"),
                         lambda u: np.array([np.cos(angle(u)), np.sin(angle(u))]))
    joints = tuple(spec.joint_names)  # agent.x, agent.y: the point agent's position (px) is its joint state
    return SimRobot(
        task=spec.name, obs_mode=spec.obs_mode, joint_names=joints, command_names=joints, position_commands=True,
        joint_state_fields=("position",), joint_state_names=(joints,),
        extras=(block, heading), layout_extras=("block", "block_heading") if spec.obs_mode == "state" else (),
        cameras=tuple(spec.camera_names),
        read_joints=lambda u: (np.asarray(u.sim.agent.position, dtype=np.float64),
                               np.asarray(u.sim.agent.velocity, dtype=np.float64)),
        hold=lambda u, last: np.asarray(u.sim.agent.position, dtype=np.float64) if last is None else last,
    )


FINGERS = ("gripper0_finger_joint1", "gripper0_finger_joint2")


def _libero(spec: TaskSpec) -> SimRobot:
    from streamdp.sim.tasks.libero_tasks import _quat2axisangle

    joints = (*spec.joint_names, *FINGERS)
    extras = (
        ExtraTopic("eef_position", "/eef/position", "xyz", ("eef.x", "eef.y", "eef.z"),
                   lambda u: u.raw_obs["robot0_eef_pos"]),
        ExtraTopic("eef_rotation", "/eef/rotation_vector", "xyz", ("eef.ax", "eef.ay", "eef.az"),
                   lambda u: _quat2axisangle(u.raw_obs["robot0_eef_quat"])),
        ExtraTopic("gripper", "/gripper/fingers", "xy", ("gripper.left", "gripper.right"),
                   lambda u: u.raw_obs["robot0_gripper_qpos"]),
        ExtraTopic("object", "/task/object", "xyz", ("object.x", "object.y", "object.z"),
                   lambda u: u.body_pos(u.object_name)),
        ExtraTopic("container", "/task/container", "xyz", ("container.x", "container.y", "container.z"),
                   lambda u: u.body_pos(u.container_name)),
    )
    layout = ("eef_position", "eef_rotation", "gripper") + (("object", "container") if spec.obs_mode == "state" else ())

    def read_joints(u: Any) -> tuple[np.ndarray, np.ndarray]:
        d = u.sim.data
        return (np.array([float(d.get_joint_qpos(j)) for j in joints]),
                np.array([float(d.get_joint_qvel(j)) for j in joints]))

    def hold(u: Any, last: np.ndarray | None) -> np.ndarray:
        a = np.zeros(len(spec.action_names))
        a[-1] = -1.0 if last is None else last[-1]  # stop moving; the gripper keeps its command (open at first)
        return a

    return SimRobot(
        task=spec.name, obs_mode=spec.obs_mode, joint_names=joints, command_names=tuple(spec.action_names),
        position_commands=False, joint_state_fields=(), joint_state_names=(), extras=extras, layout_extras=layout,
        cameras=tuple(spec.camera_names), read_joints=read_joints, hold=hold,
    )


_BUILDERS: dict[str, Callable[[TaskSpec], SimRobot]] = {"arm_reach_dynamic": _arm, "pusht": _pusht, "libero": _libero}


def robot_tasks() -> list[str]:
    """Tasks ``sim_bridge_node`` can run."""
    return sorted(_BUILDERS)


def sim_robot(spec: TaskSpec) -> SimRobot:
    """The ROS robot of a task spec; a task without one is refused with the list of those that have one."""
    if spec.name not in _BUILDERS:
        raise ValueError(f"task {spec.name!r} has no ROS robot description; sim_bridge_node runs "
                         f"{', '.join(robot_tasks())}")
    robot = _BUILDERS[spec.name](spec)
    if robot.state_names != list(spec.state_names):  # the table above and the task module must agree
        raise RuntimeError(f"{spec.name}/{spec.obs_mode}: ROS state layout {robot.state_names} != task state "
                             f"{list(spec.state_names)}")
    return robot

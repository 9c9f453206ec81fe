"""``sim_bridge_node``: a streamdp simulated task (``arm_reach_dynamic``, ``pusht`` or ``libero``) as a ROS robot.

It behaves like an arm driven by ros2_control, so the policy node cannot tell it from hardware. What
each task publishes and accepts is its :class:`~streamdp.ros_nodes.sim_robots.SimRobot` (joint names,
state topics, cameras, command channels), chosen so that ``policy_node``'s observation adapter rebuilds
the task's ``observation.state`` exactly (``sim_robot(spec).policy_params()`` are the policy node's
matching parameters):

* publishes ``sensor_msgs/JointState`` on ``/joint_states`` (the robot's joint names, positions,
  velocities) and, in image mode, ``sensor_msgs/Image`` (rgb8, sensor-data QoS) per camera on
  ``/camera/<name>/image_raw``, at the task rate;
* publishes the task's other state entries as ``geometry_msgs/PointStamped`` (the arm's target on
  ``/target``; PushT's block on ``/block/position`` and ``/block/heading``; LIBERO's end effector, fingers,
  object and container), ``std_msgs/Bool`` success on ``/task/success`` and, where the task reports one,
  the end-effector distance to the target (``std_msgs/Float64`` on ``/task/distance``), all with the
  joint state's stamp;
* accepts ``trajectory_msgs/JointTrajectory`` on ``/joint_trajectory_controller/joint_trajectory``
  (sampled in time like a position controller: header.stamp + time_from_start, channels matched by
  name, evaluated one control period ahead = the target for the end of the coming step) and
  ``std_msgs/Float64MultiArray`` on ``/forward_position_controller/commands`` (values in command-channel
  order, applied at the next step). Position-target tasks (arm, PushT) keep tracking the last command;
  LIBERO's end-effector deltas act once (past a trajectory's last point, or one step after a forward
  command, the arm stops and the gripper keeps its command);
* publishes ``diagnostic_msgs/DiagnosticStatus`` on ``/task/episode`` when an episode starts
  (message ``running``) and when it ends (``success`` or ``timeout``), with the episode number, its
  seed, steps, final distance (PushT: coverage) and ``stamp``, the header stamp of the joint state
  published with the event (the episode's first observation, or its last; ``sec.nanosec``), as
  key-values (reliable, transient-local), so a recorder can bracket an episode's frames exactly;
* steps the physics at the task rate with the latest command (holding the current position until the
  first command arrives);
* with ``expert`` true, runs the task's scripted expert on its own env every tick and publishes what it
  would command for that tick's observation on ``/task/expert_action`` (a one-point
  ``JointTrajectory`` stamped like the observation, command-channel names). The expert needs the
  simulator itself (PushT's block inertia and contact geometry, LIBERO's collision extents), not a few
  numbers a topic could carry, so it runs where the simulator is; ``expert_teleop_node``
  (:mod:`streamdp.ros_nodes.teleop_node`) turns its suggestions into commands on the controller topic,
  like a teleoperation device. The bridge never applies a suggestion by itself;
* stops its camera streams while ``cameras_enabled`` is false (a camera dropout, for fault tests);
* resets the task when the ``reset`` parameter is set to a new value (``ros2 param set /sim_bridge
  reset 1``; that episode's seed is ``seed + reset``), on any message on ``/task/reset``
  (std_msgs/Empty), and, with ``auto_reset``, when an episode ends (these continue the sequence:
  ``seed + reset + episodes since the parameter last changed``);
* with ``policy_node`` set (``config/ros/sim.yaml``), coordinates every reset with that lifecycle node
  (:class:`~streamdp.ros_nodes.reset_handshake.ResetHandshake`): deactivate it, freeze until it answers,
  reset, activate it, so it re-seeds from the new episode's measured state as the scored episodes do;
  trajectories stamped before the episode's start (in flight across the reset) are ignored
  (``commands['stale']``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from streamdp.ros_nodes.observation import encode_rgb8
from streamdp.ros_nodes.reset_handshake import ResetHandshake
from streamdp.ros_nodes.sim_robots import sim_robot
from streamdp.ros_nodes.trajectory import TrajectorySampler, split_seconds

# (name, default, description): what ``sim_bridge_node --help`` lists and the node declares.
PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("task", "arm_reach_dynamic", "streamdp.sim task name: arm_reach_dynamic | pusht | libero"),
    ("task_options", "", "JSON object of task options (make_task), e.g. '{\"task_id\": 3}' for LIBERO"),
    ("obs_mode", "state", "state | image (image: cameras are rendered and published)"),
    ("seed", 0, "episode seed (episode k uses seed + k)"),
    ("rate_hz", 0.0, "physics/publish rate; 0: the task fps"),
    ("max_episode_steps", 0, "episode length in ticks; 0: the task default"),
    ("auto_reset", True, "start a new episode when one ends (success or time-out)"),
    ("reset", 0, "set to a new value to reset the task (seed + reset)"),
    ("joint_states_topic", "/joint_states", "JointState output"),
    ("success_topic", "/task/success", "Bool success output"),
    ("distance_topic", "/task/distance", "Float64 end-effector-to-target distance output"),
    ("camera_topic_format", "/camera/{camera}/image_raw", "Image topic per camera"),
    ("trajectory_topic", "/joint_trajectory_controller/joint_trajectory", "JointTrajectory command input"),
    ("forward_topic", "/forward_position_controller/commands", "Float64MultiArray command input"),
    ("reset_topic", "/task/reset", "std_msgs/Empty: reset the task"),
    ("episode_topic", "/task/episode", "diagnostic_msgs/DiagnosticStatus at every episode start and end "
     "(episode, seed, state: running | success | timeout, steps, distance)"),
    ("trajectory_lookahead_s", -1.0, "evaluate trajectories this far ahead; <0: one control period"),
    ("cameras_enabled", True, "false: stop publishing every camera (a camera dropout; physics and joint "
     "states go on); may be changed at run time"),
    ("expert", False, "run the task's scripted expert on this env and publish its suggestion every tick"),
    ("expert_topic", "/task/expert_action", "JointTrajectory: the expert's command for the tick's observation"),
    ("policy_node", "", "lifecycle node to re-seed at every reset: deactivated before it, activated after it on the "
     "new state (as the scored episodes do); empty: no coordination"),
)


def _secs(t: Any) -> float:
    return float(t.sec) + 1e-9 * float(t.nanosec)


class SimBridgeNode(Node):
    """A simulated task exposed through the topics of a ros2_control arm (see the module docstring)."""

    def __init__(self, node_name: str = "sim_bridge", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

        for name, default, text in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=text))

        from streamdp.sim import make_task, task_spec

        p = self._param
        task, mode = p("task"), p("obs_mode")
        kw = self._task_options()
        if p("max_episode_steps"):
            kw["max_episode_steps"] = int(p("max_episode_steps"))
        self.spec = task_spec(task, mode, **kw)
        self.robot = sim_robot(self.spec)  # refuses a task without a ROS description before the env is built
        self.env = make_task(task, obs_mode=mode, **kw)
        self.joint_names = list(self.robot.joint_names)
        self.command_names = list(self.robot.command_names)
        self.rate_hz = float(p("rate_hz")) or float(self.spec.fps)
        self.period = 1.0 / self.rate_hz
        la = float(p("trajectory_lookahead_s"))
        self.lookahead = self.period if la < 0 else la
        self.episode = 0
        self.steps = 0
        self.total_steps = 0
        self.successes = 0
        self.commands = {"trajectory": 0, "forward": 0, "rejected": 0, "stale": 0}
        self.expert_suggestions = 0
        self.expert_errors = 0
        self._reset_value = int(p("reset"))
        self._since_reset = 0  # episodes since the last `reset` parameter change (auto resets, /task/reset)
        self._cameras_enabled = bool(p("cameras_enabled"))  # kept by _on_params: no lookup per tick
        self._reset_requested = False
        self._applied: np.ndarray | None = None  # the command of the last step (None: none since the reset)
        self._reset_due = False  # a reset waits for the coordinated policy node to stop (the sim is frozen)
        self._episode_start = 0.0  # stamp of the current episode's first joint state
        self.handshake: ResetHandshake | None = ResetHandshake(self, p("policy_node")) if p("policy_node") else None

        sensor = qos_profile_sensor_data
        self.pub_js = self.create_publisher(JointState, p("joint_states_topic"), QoSProfile(depth=10))
        self.pub_extras = {e.name: self.create_publisher(PointStamped, e.topic, QoSProfile(depth=10))
                           for e in self.robot.extras}
        self.pub_success = self.create_publisher(Bool, p("success_topic"), QoSProfile(depth=10))
        self.pub_dist = self.create_publisher(Float64, p("distance_topic"), QoSProfile(depth=10))
        self.pub_cams = {c: self.create_publisher(Image, p("camera_topic_format").format(camera=c), sensor)
                         for c in self.robot.cameras}
        # Episode boundaries are rare and must not be missed by a late subscriber: reliable, kept for late joiners.
        self.pub_episode = self.create_publisher(
            DiagnosticStatus, p("episode_topic"),
            QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE))
        self.expert = None
        self.pub_expert = None
        if p("expert"):
            from streamdp.sim import make_expert

            self.expert = make_expert(task, self.env)
            self.pub_expert = self.create_publisher(JointTrajectory, p("expert_topic"), QoSProfile(depth=10))
        self.create_subscription(JointTrajectory, p("trajectory_topic"), self._on_trajectory, QoSProfile(depth=10))
        self.create_subscription(Float64MultiArray, p("forward_topic"), self._on_forward, QoSProfile(depth=10))
        self.create_subscription(Empty, p("reset_topic"), lambda _m: self._request_reset(), QoSProfile(depth=10))
        self.add_on_set_parameters_callback(self._on_params)

        self._reset_env()
        self.timer = self.create_timer(self.period, self._tick)
        self.get_logger().info(f"{task} ({mode}) at {self.rate_hz:g} Hz; joints {self.joint_names}; commands "
                               f"{self.command_names}{'; expert on' if self.expert else ''}")

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _task_options(self) -> dict[str, Any]:
        raw = self._param("task_options")
        if not raw:
            return {}
        try:
            opts = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"sim_bridge parameter task_options is not valid JSON ({e}): give an object, e.g. "
                             "'{\"task_id\": 3}'") from e
        if not isinstance(opts, dict):
            raise ValueError(f"sim_bridge parameter task_options must be a JSON object, got {raw!r}")
        return opts

    # ------------------------------------------------------------------ episodes
    def _reset_env(self) -> None:
        seed = int(self._param("seed")) + self._reset_value + self._since_reset
        self.episode_seed = seed
        self.episode_over = False
        self.obs, self.info = self.env.reset(seed=seed)
        u = self.env.unwrapped if hasattr(self.env, "unwrapped") else self.env
        self._u = u
        self._applied = None
        self._hold = self.robot.hold(u, None)
        self._traj: TrajectorySampler | None = None
        self._forward: np.ndarray | None = None
        self.steps = 0
        self.success = False
        if self.expert is not None:
            self.expert.reset()
        self._episode_start = self._now()
        self._publish(self._episode_start)
        self._publish_episode("running")

    def _publish_episode(self, state: str) -> None:
        """One DiagnosticStatus per episode event, so a runner can score episodes over ROS alone."""
        sec, nsec = self._stamp  # the joint state published with this event
        values = {"episode": self.episode, "seed": self.episode_seed, "state": state, "steps": self.steps,
                  "distance": float(self.info.get("distance", float("nan"))), "stamp": f"{sec}.{nsec:09d}"}
        if "max_coverage" in self.info:
            values["max_coverage"] = float(self.info["max_coverage"])
        level = DiagnosticStatus.OK if state != "timeout" else DiagnosticStatus.WARN
        self.pub_episode.publish(DiagnosticStatus(
            level=level, name=f"{self.get_name()}: episode", message=state, hardware_id=self.spec.name,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()]))

    def _request_reset(self) -> None:
        self._reset_requested = True

    def _begin_reset(self) -> None:
        """Reset now, or, with a coordinated policy node, once it has stopped (the sim is frozen meanwhile)."""
        self._reset_due = True
        if self.handshake is not None:
            self.handshake.begin()
        self._finish_reset()

    def _finish_reset(self) -> None:
        if self.handshake is not None and not self.handshake.ready():
            return
        self._reset_due = False
        self.episode += 1
        self._since_reset += 1
        self._reset_env()
        if self.handshake is not None:
            self.handshake.reset_done()

    def _on_params(self, params: list[Any]) -> SetParametersResult:
        for prm in params:
            if prm.name == "cameras_enabled":
                self._cameras_enabled = bool(prm.value)
            if prm.name == "reset" and int(prm.value) != self._reset_value:
                self._reset_value = int(prm.value)
                self._since_reset = -1  # the reset below makes it 0: seed + reset exactly
                self._reset_requested = True
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ commands
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _current_command(self) -> np.ndarray:
        if self._traj is not None:
            t = self._now() + self.lookahead
            if not self.robot.position_commands and t > self._traj.t[-1]:
                self._traj = None  # a delta trajectory is over: stop (a position one keeps its last point)
                return self._hold
            return self._traj(t)
        if self._forward is not None:
            return self._forward
        return self._hold

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            idx = [list(msg.joint_names).index(n) for n in self.command_names]
        except ValueError:
            self.commands["rejected"] += 1
            self.get_logger().warning(f"trajectory joints {list(msg.joint_names)} lack some of {self.command_names}",
                                      throttle_duration_sec=5.0)
            return
        if not msg.points:
            self.commands["rejected"] += 1
            return
        pos = np.array([[pt.positions[i] for i in idx] for pt in msg.points], dtype=np.float64)
        if not np.all(np.isfinite(pos)):
            self.commands["rejected"] += 1
            self.get_logger().error("non-finite trajectory rejected", throttle_duration_sec=5.0)
            return
        now = self._now()
        start = _secs(msg.header.stamp) or now  # stamp 0: start now (joint_trajectory_controller semantics)
        if start < self._episode_start:  # planned before this episode began (in flight across a reset)
            self.commands["stale"] += 1
            return
        times = [start + _secs(pt.time_from_start) for pt in msg.points]
        try:
            self._traj = TrajectorySampler(start, self._current_command(), times, pos)
        except ValueError as e:
            self.commands["rejected"] += 1
            self.get_logger().warning(f"trajectory rejected: {e}", throttle_duration_sec=5.0)
            return
        self._forward = None
        self.commands["trajectory"] += 1

    def _on_forward(self, msg: Float64MultiArray) -> None:
        a = np.asarray(msg.data, dtype=np.float64)
        if a.shape != (len(self.command_names),) or not np.all(np.isfinite(a)):
            self.commands["rejected"] += 1
            self.get_logger().warning(f"forward command {list(msg.data)} rejected (need {len(self.command_names)} "
                                      "finite values)", throttle_duration_sec=5.0)
            return
        self._forward, self._traj = a, None
        self.commands["forward"] += 1

    # ------------------------------------------------------------------ tick
    def _tick(self) -> None:
        if self.handshake is not None:
            self.handshake.poll()
        if self._reset_due:
            self._finish_reset()
            return
        if self._reset_requested:
            self._reset_requested = False
            self._begin_reset()
            return
        a = np.asarray(self._current_command(), dtype=np.float64).copy()
        self._applied = a
        if self.robot.position_commands:
            self._hold = a  # a position target keeps being tracked
        else:
            self._forward = None  # a delta acts once
            self._hold = self.robot.hold(self._u, a)
        self.obs, _r, terminated, truncated, self.info = self.env.step(a.astype(np.float32))
        self.steps += 1
        self.total_steps += 1
        self.success = bool(self.info.get("is_success", False))
        self._publish(self._now())
        if (terminated or truncated) and not self.episode_over:
            self.episode_over = True  # without auto_reset the physics goes on, but the episode is scored once
            self.successes += int(self.success and terminated)
            self._publish_episode("success" if terminated and self.success else "timeout")
        if (terminated or truncated) and self._param("auto_reset"):
            self._begin_reset()

    def _publish(self, now: float) -> None:
        sec, nsec = split_seconds(now)
        self._stamp = (sec, nsec)
        u = self._u
        js = JointState()
        js.header.stamp.sec, js.header.stamp.nanosec = sec, nsec
        js.name = list(self.joint_names)
        pos, vel = self.robot.read_joints(u)
        js.position = [float(x) for x in pos]
        js.velocity = [float(x) for x in vel]
        self.pub_js.publish(js)
        for e in self.robot.extras:
            pt = PointStamped()
            pt.header.stamp.sec, pt.header.stamp.nanosec = sec, nsec
            pt.header.frame_id = "world"
            for c, v in zip(e.fields, e.read(u)):
                setattr(pt.point, c, float(v))
            self.pub_extras[e.name].publish(pt)
        self.pub_success.publish(Bool(data=bool(self.success)))
        if "distance" in self.info:
            self.pub_dist.publish(Float64(data=float(self.info["distance"])))
        if self._cameras_enabled:
            for cam, pub in self.pub_cams.items():
                img = self.obs.get("observation.images." + cam)
                if img is None:
                    continue
                h, w, step, data = encode_rgb8(img)
                m = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=step)
                m.header.stamp.sec, m.header.stamp.nanosec = sec, nsec
                m.header.frame_id = cam
                m.data = data
                pub.publish(m)
        if self.expert is not None and not self.episode_over:
            self._publish_expert(sec, nsec)

    def _publish_expert(self, sec: int, nsec: int) -> None:
        """The expert's command for this tick's observation (it reads the simulator: privileged)."""
        try:
            a = np.asarray(self.expert.act(self.obs, self.env), dtype=np.float64).reshape(-1)
        except ValueError as e:  # e.g. the arm expert's IK has no in-limits solution for this target
            self.expert_errors += 1
            self.get_logger().warning(f"expert: {e}", throttle_duration_sec=5.0)
            return
        if a.shape != (len(self.command_names),) or not np.all(np.isfinite(a)):
            self.expert_errors += 1
            return
        msg = JointTrajectory()
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
        msg.joint_names = list(self.command_names)
        pt = JointTrajectoryPoint(positions=a.tolist())
        pt.time_from_start.sec, pt.time_from_start.nanosec = split_seconds(self.period)
        msg.points = [pt]
        self.pub_expert.publish(msg)
        self.expert_suggestions += 1

    def finalize(self) -> None:
        if self.handshake is not None:
            self.handshake.close()
        self.env.close()


def main(args: list[str] | None = None) -> int:
    """Run the sim bridge until SIGINT/SIGTERM (the ``sim_bridge_node`` executable reaches it through
    :mod:`streamdp.ros_nodes.cli`)."""
    from streamdp.ros_nodes import runtime

    runtime.init(args if args is not None else sys.argv)
    node = runtime.make_node("sim_bridge_node", SimBridgeNode)
    if node is None:
        return 2
    t = time.monotonic()
    runtime.spin_until_signal([node])
    print(f"sim_bridge: {node.total_steps} steps in {time.monotonic() - t:.1f} s, {node.successes} successes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

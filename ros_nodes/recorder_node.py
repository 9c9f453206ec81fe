"""``streamdp-record``: a ROS 2 node that records demonstrations from a robot's topics into a LeRobot v3 dataset.

It subscribes to what the policy node reads (``sensor_msgs/JointState`` matched by joint name,
``geometry_msgs/PointStamped`` extra state, ``sensor_msgs/Image`` cameras) and, optionally, to a
teleoperation or leader-arm command topic (``trajectory_msgs/JointTrajectory`` or
``std_msgs/Float64MultiArray``); a control-rate timer samples one frame per tick. What a frame holds, how
its action is chosen and how stale input is handled is :mod:`streamdp.ros_nodes.recording` (pure, shared
with ``streamdp-convert-bag``); this node only wires topics, parameters, the timer and three
``std_srvs/Trigger`` services:

* ``~/start_episode``: start recording an episode (refused while one is being recorded);
* ``~/save_episode``: end it and write it, or refuse it with the reason (stale or missing input between
  good frames, too few frames); the response and the log say which;
* ``~/discard_episode``: drop it.

With ``episode_topic`` set (the sim bridge's ``/task/episode``), the bridge's episode events start and save
episodes instead (:mod:`streamdp.ros_nodes.episode_follow`): from its reset to its success (a time-out is
discarded unless ``save_failed_episodes``); with ``reset_topic`` (its ``/task/reset``; the bridge with
``auto_reset:=false``) the recorder asks for each next episode once the last one is written, and with
``max_episodes`` it stops after that many. ``streamdp-bringup sim --teleop --record`` runs it this way.

Run::

    streamdp-record --ros-args -p root:=data/demos -p control_rate_hz:=20 \\
        -p joint_names:="[joint1, joint2, joint3]" -p command_topic:=/teleop/joint_trajectory
    streamdp-episode start     # ... then save or discard (or: ros2 service call /recorder/start_episode
                               #  std_srvs/srv/Trigger, with a ROS install)

Stop it with Ctrl-C (SIGINT) or SIGTERM: an episode still being recorded is discarded and the dataset
is finalised (lerobot writes the parquet footers then; a killed recorder leaves an unreadable dataset).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Empty, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from streamdp.ros_nodes.episode_follow import EpisodeEvent, EpisodeFollower, FollowOptions
from streamdp.ros_nodes.episode_writer import EpisodeWriter
from streamdp.ros_nodes.observation import stamp_seconds
from streamdp.ros_nodes.recording import EpisodeRecorder, RecordingError, RecordingOptions

FRAME_TRIGGERS = ("timer", "joint_state")
# The node's own parameters besides RecordingOptions (shared with streamdp-convert-bag): when frames are taken,
# following the sim's episodes.
NODE_PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("frame_trigger", "timer", "timer: a control_rate_hz timer takes a frame of the latest inputs (joint states "
     "come faster than the control rate) | joint_state: one frame per joint state, taken when the next one "
     "arrives (a robot publishing them at the control rate, as the sim bridge: no frame doubled or skipped "
     "between two clocks)"),
    ("episode_topic", "", "diagnostic_msgs/DiagnosticStatus episode events (the sim bridge's /task/episode) that "
     "start and save episodes; empty: the ~/start_episode, ~/save_episode services only"),
    ("reset_topic", "", "with episode_topic: std_msgs/Empty published to ask for the next episode once one is "
     "written (the sim bridge's /task/reset, with its auto_reset:=false); empty: never"),
    ("save_failed_episodes", False, "with episode_topic: save episodes that end in a time-out too"),
    ("max_episodes", 0, "with episode_topic: stop the node after saving this many episodes; 0: never"),
)


def _defaults() -> dict[str, Any]:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RecordingOptions)}


def _declared(default: Any) -> Any:
    """What a RecordingOptions default is declared as: an empty list by its type (ROS cannot type [])."""
    return Parameter.Type.STRING_ARRAY if default == [] else default


class RecorderNode(Node):
    """Records episodes from ROS topics (see the module docstring); parameters are :class:`RecordingOptions`.

    Raises :class:`~streamdp.policy.config.ConfigError` (bad parameters) or FileExistsError (a dataset is
    already at ``root`` without ``resume``) at construction, before anything is subscribed."""

    def __init__(self, node_name: str = "recorder", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        defaults = _defaults()
        helps = {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(RecordingOptions)}
        for name, default in defaults.items():
            numeric = isinstance(default, float)  # -p control_rate_hz:=20 (an integer) must be accepted too
            self.declare_parameter(name, _declared(default), ParameterDescriptor(description=helps[name],
                                                                                 dynamic_typing=numeric))
        values: dict[str, Any] = {}
        for name, default in defaults.items():
            try:
                v = self.get_parameter(name).value
            except ParameterUninitializedException:  # a list declared by type and not given
                v = []
            values[name] = list(v) if isinstance(default, list) else float(v) if isinstance(default, float) else v
        self.options = RecordingOptions(**values)
        for name, default, text in NODE_PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        own = {name: self.get_parameter(name).value for name, _, _ in NODE_PARAMETERS}
        if own["frame_trigger"] not in FRAME_TRIGGERS:
            raise ValueError(f"recorder parameter frame_trigger must be one of {FRAME_TRIGGERS}, got "
                             f"{own['frame_trigger']!r}")
        self.frame_on_joint_state = own["frame_trigger"] == "joint_state"
        self.writer = EpisodeWriter(self.options)
        log = self.get_logger()
        self.recorder = EpisodeRecorder(self.options, self.writer, warn=log.warning)
        o = self.options
        sensor = qos_profile_sensor_data
        self.follower: EpisodeFollower | None = None
        self.pub_reset = None
        if own["episode_topic"]:
            self.follower = EpisodeFollower(self.recorder, FollowOptions(
                save_failed=bool(own["save_failed_episodes"]), max_episodes=int(own["max_episodes"]),
                request_resets=bool(own["reset_topic"]), every_step=self.frame_on_joint_state), self._now(),
                connected=self._connected)
            # Before the joint states: an end event and the next joint state waiting together are taken event
            # first, so the episode's end is known before a frame after it could be written.
            self.create_subscription(DiagnosticStatus, own["episode_topic"], self._on_episode_event,
                                     QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            self.pub_reset = self.create_publisher(Empty, own["reset_topic"], QoSProfile(depth=1)) \
                if own["reset_topic"] else None
        # The joint-state subscription first: the executor serves ready subscriptions in this order, so a joint
        # state and a command waiting together are taken joint state first (a command's time is its arrival).
        self.create_subscription(JointState, o.joint_states_topic, self._on_joint_state, sensor)
        for e in o.extras:
            self.create_subscription(PointStamped, e.topic, lambda m, n=e.name, t=e.topic: self._sensor(
                self.recorder.extra_msg(n, m), t), sensor)
        for cam, topic in zip(o.camera_names, o.camera_topics):
            self.create_subscription(Image, topic, lambda m, c=cam, t=topic: self._sensor(
                self.recorder.image_msg(c, m), t), sensor)
        if o.command_topic:
            kind = JointTrajectory if o.command_type == "joint_trajectory" else Float64MultiArray
            # Best effort matches reliable and best-effort publishers alike (teleop devices differ).
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(kind, o.command_topic, self._on_command, qos)
        self.create_service(Trigger, "~/start_episode", self._start)
        self.create_service(Trigger, "~/save_episode", self._save)
        self.create_service(Trigger, "~/discard_episode", self._discard)
        self.timer = self.create_timer(o.period, self._tick)
        action = f"commands on {o.command_topic} ({o.command_type})" if o.command_topic else \
            "the next measured joint positions"
        how = f"episodes follow {own['episode_topic']}" if self.follower else "call ~/start_episode"
        log.info(f"recording {o.joint_names} from {o.joint_states_topic} at {o.fps} Hz, cameras {o.camera_names}, "
                 f"action = {action}, into {self.writer.root}; {how}")

    @property
    def finished(self) -> bool:
        """The episodes asked for (max_episodes) are saved: the process may stop."""
        return self.follower is not None and self.follower.done

    def _connected(self) -> bool:
        """Every subscription is matched with a publisher and the reset publisher with a subscriber (DDS)."""
        if self.pub_reset is not None and self.pub_reset.get_subscription_count() == 0:
            return False
        return all(sub.get_publisher_count() > 0 for sub in self.subscriptions)

    def _tick(self) -> None:
        now = self._now()
        if not self.frame_on_joint_state:
            self.recorder.tick(now)
        if self.follower is None:
            return
        if not self.writer.is_open and (not self.options.camera_names or self.recorder.image_hw is not None):
            try:  # creating the dataset takes a while: before the first episode starts (as at ~/start_episode)
                self.writer.open(self.recorder.image_hw)
            except (OSError, ValueError) as e:
                self.get_logger().error(f"cannot open the dataset: {e}", throttle_duration_sec=5.0)
                return
        step = self.follower.poll(now)
        for line in step.lines:
            self.get_logger().info(line)
        if step.request_reset and self.pub_reset is not None:
            self.pub_reset.publish(Empty())

    def _on_episode_event(self, msg: DiagnosticStatus) -> None:
        try:
            ev = EpisodeEvent.from_values({kv.key: kv.value for kv in msg.values})
        except ValueError as e:
            self.get_logger().warning(f"{e}", throttle_duration_sec=5.0)
            return
        for line in self.follower.on_event(ev, self._now()):
            self.get_logger().info(line)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs ----------------------------------------------------------------------------------------
    def _sensor(self, accepted: bool, topic: str) -> None:
        if not accepted:
            self.get_logger().warning(f"{topic}: message dropped: {self.recorder.last_drop}",
                                      throttle_duration_sec=5.0)

    def _on_joint_state(self, msg: JointState) -> None:
        if self.frame_on_joint_state:
            last, stamp = self.recorder.sync.joint_stamp, stamp_seconds(msg.header.stamp)
            if last is not None and stamp > last:  # the previous observation is complete (its extras are in)
                self.recorder.tick(stamp, check_spacing=False)  # its frame, on the robot's clock
        self._sensor(self.recorder.joint_state_msg(msg), self.options.joint_states_topic)

    def _on_command(self, msg: Any) -> None:
        if not self.recorder.command_msg(msg, self._now()):
            self.get_logger().warning(f"{self.options.command_topic}: command dropped: "
                                      f"{self.recorder.last_command_drop}", throttle_duration_sec=5.0)

    # -- services ----------------------------------------------------------------------------------------
    def _reply(self, response: Trigger.Response, ok: bool, message: str) -> Trigger.Response:
        if ok:
            self.get_logger().info(message)
        else:
            self.get_logger().warning(message)
        response.success, response.message = ok, message
        return response

    def _start(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.recorder.recording:
            return self._reply(response, False, f"an episode is being recorded ({self.recorder.counters.frames} "
                               "frames so far): save or discard it first")
        if not self.options.camera_names or self.recorder.image_hw is not None:
            try:  # creating the dataset takes a while: here, not in the first frame's control tick
                self.writer.open(self.recorder.image_hw)
            except (OSError, ValueError) as e:
                return self._reply(response, False, f"cannot open the dataset: {e}")
        self.recorder.start(self._now())
        return self._reply(response, True, f"recording episode {self.writer.num_episodes}")

    def _save(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            out = self.recorder.save()
        except RecordingError as e:
            return self._reply(response, False, str(e))
        except Exception as e:  # noqa: BLE001 - the dataset could not be written: say so, keep recording others
            self.writer.clear()
            return self._reply(response, False, f"episode not saved: writing it failed: {type(e).__name__}: {e}")
        return self._reply(response, out.saved, out.message)

    def _discard(self, _req: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            return self._reply(response, True, self.recorder.discard())
        except RecordingError as e:
            return self._reply(response, False, str(e))

    def finalize(self) -> None:
        """Before the process exits: drop an unsaved episode and finalise the dataset."""
        if self.recorder.recording:
            self.get_logger().warning(f"shutting down: {self.recorder.discard()}")
        self.writer.close()


def help_text() -> str:
    """``streamdp-record --help``: how to run it, then every parameter with its default and meaning."""
    rows = [(name, repr(default), str(f.metadata.get("help", "")))
            for (name, default), f in zip(_defaults().items(), dataclasses.fields(RecordingOptions))]
    lines = [__doc__.split("\n\n")[0], "",
             "usage: streamdp-record [--help] --ros-args [--params-file FILE] [-p name:=value ...]", "",
             "services: ~/start_episode, ~/save_episode, ~/discard_episode (std_srvs/Trigger; streamdp-episode "
             "calls them)", "", "parameters (default, meaning):"]
    rows += [(name, repr(default), text) for name, default, text in NODE_PARAMETERS]
    width = max(len(n) + len(d) + 1 for n, d, _ in rows)
    lines += [f"  {f'{n}={d}':<{width}}  {h}" for n, d, h in rows]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> int:
    """Run the recorder until SIGINT/SIGTERM (``streamdp-record`` reaches it through
    :mod:`streamdp.ros_nodes.cli`); bad parameters end in one line on stderr and exit code 2."""
    from streamdp.policy.config import ConfigError
    from streamdp.ros_nodes import runtime

    argv = list(args if args is not None else sys.argv)
    ours = argv[1:argv.index("--ros-args")] if "--ros-args" in argv else argv[1:]
    if "-h" in ours or "--help" in ours:
        print(help_text())
        return 0
    runtime.init(argv)
    try:
        node = RecorderNode()
    except (ConfigError, FileExistsError, ValueError) as e:
        print(f"streamdp-record: {type(e).__name__}: {e}", file=sys.stderr)
        import rclpy

        rclpy.shutdown()
        return 2
    runtime.spin_until_signal([node], until=lambda: node.finished)
    if node.follower is not None:
        f = node.follower
        print(f"streamdp-record: {f.saved} episodes saved, {f.refused} refused, {f.discarded} discarded")
    return 0


if __name__ == "__main__":
    sys.exit(main())

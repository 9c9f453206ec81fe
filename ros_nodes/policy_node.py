"""``policy_node``: a managed (lifecycle) ROS 2 node that streams a diffusion policy to an arm.

Lifecycle (docs/architecture.md):

* **configure**: read parameters, load the checkpoint (sampler / step overrides applied), validate
  it against the robot described by the parameters (joint names and order, state layout -> state
  dim, action dim, cameras, control rate = checkpoint fps) and refuse with a clear message
  (FAILURE; the reason is logged, kept in ``configure_error`` and shown on ``/diagnostics``), warm up
  (a few dummy chunks), create the subscriptions.
* **activate**: wait up to ``activate_timeout_s`` for the first fresh JointState (and every camera and
  extra state the observation needs; after a deactivation, one measured since then), then seed the buffer
  and the hold position from it (``policy.reset(state=q)``), start the inference thread and the control
  timer (its ticks in phase with the joint states: the first one ``TICK_PHASE`` of a period after the next
  state arrives), enable the command publisher. Fails (retry later) when the inputs did not come within
  the bound. A lifecycle manager may therefore send configure and activate back to back. The transition
  runs in the executor, which cannot serve the subscriptions meanwhile (a single-threaded executor, or
  the lifecycle services' callback group), so while it waits the node takes its input messages itself,
  as ``rclpy.wait_for_message`` does, and hands them to the same callbacks
  (:meth:`PolicyNode.activation_blocker` says what is still missing).
* **deactivate**: stop the timer and the inference thread, publish a final hold at the last
  commanded position, disable the publisher.
* **cleanup / shutdown**: drop everything configure made.

Data flow and timing: see :mod:`streamdp.ros_nodes.streamer`. Inference runs in its own thread; the
control-rate timer only samples sensors, hands the frame over and publishes what the
:class:`~streamdp.ros_nodes.streamer.ActionStreamer` has (a clean action or a hold), so it never waits
on the network. Every published command passes ``command_filter`` (a seam for the user's own
shaping; identity by default), then, when any ``limits.*`` parameter is given, a
:class:`~streamdp.ros_nodes.safety.SafetyFilter` (joint order = the checkpoint's, dt = 1/control rate,
reset from the measured joint state on activate): the executed point goes through ``filter()`` (holds
through ``hold()``, so they decelerate), the look-ahead points are chained through a copy of it, and
after ``limits.max_consecutive_clamps`` clamps in a row the filter latches a hold until re-activation.
Its status and counts are on ``/diagnostics``. A final finite check guards the wire. That pipeline is
:func:`streamdp.ros_nodes.commands.decide` (pure, unit-tested without ROS); the parameter table and the
settings it becomes are in :mod:`streamdp.ros_nodes.params`.

Fault-injection hooks (:class:`FaultHooks`, used by the fault-injection rig of tests/faults; inert by
default): transform the policy output, delay the inference thread, offset the node's ROS clock, and
``command_log`` records every published command.

Outputs: ``trajectory_msgs/JointTrajectory`` (joint_trajectory_controller; the current action plus
the queued future actions, positions and velocities, header.stamp = the splice time) or
``std_msgs/Float64MultiArray`` (forward_command_controller), and ``diagnostic_msgs/DiagnosticArray``
on ``/diagnostics``. With ``publish_plan`` (default) it also shows what it intends, for RViz or Foxglove:
``~/plan`` (``JointTrajectory``, stamped with the control tick: this tick's clean action, then every queued
one, a control period apart as in the commands, as the policy made them, before the safety filter; empty
while holding) and
``~/noise_levels`` (``std_msgs/Float32MultiArray``: the grid level of every SDP buffer slot after the
latest chunk, -1 = clean, the ladder of docs/timing.md; not published by samplers without a buffer). The
control tick only keeps a reference to its command; a timer of its own builds and publishes both.

Run: ``policy_node --ros-args --params-file config/ros/sim.yaml`` (``autostart: true`` configures
and activates by itself), or manage it with the lifecycle services (``ros2 lifecycle set``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from streamdp.ros_nodes.commands import CommandFilter, decide, identity_filter
from streamdp.ros_nodes.inference import Chunk, Frame, InferenceWorker
from streamdp.ros_nodes.observation import (
    ExtraState,
    ObservationSync,
    StateLayout,
    SyncError,
    decode_image,
)
from streamdp.ros_nodes.params import PARAMETERS, ParameterError, Settings, Unset, read_settings, safety_filter_from
from streamdp.ros_nodes.safety import SafetyFilter, SafetyStatus
from streamdp.ros_nodes.stats import ClockJumpDetector, LatencyHistogram, RollingStats, TickStats
from streamdp.ros_nodes.streamer import ActionStreamer, Command
from streamdp.ros_nodes.trajectory import split_seconds, trajectory_points

# Control ticks run this fraction of a period after a joint state arrives (set once, at activation): a tick
# that ran just before each state would sample one almost a period old and add that to every command's latency
# (docs/timing.md, "Phase"); the margin keeps a slightly late state from missing its tick.
TICK_PHASE = 0.2


@dataclass
class FaultHooks:
    """Test hooks for fault injection (inert by default; never set them on a robot)."""

    output: Callable[[np.ndarray], np.ndarray] | None = None  # applied to each clean chunk (Ta, D)
    inference_delay_s: float = 0.0  # extra time spent in the inference thread per chunk
    clock_offset_s: float = 0.0  # added to the node's ROS time (clock-jump injection)


# Counters that restart at every activation, also kept as totals over the node's life (``total_<key>``).
TOTAL_KEYS = ("ticks", "ticks_overrun", "commands_published", "chunks", "chunk_requests", "deadline_misses",
              "actions_sent", "holds", "starved_holds", "late_actions_dropped", "nonfinite_outputs", "worker_errors")


def stamp_seconds(stamp: Any) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


class PolicyNode(LifecycleNode):
    """Lifecycle node running a streamdp Policy (see the module docstring)."""

    def __init__(
        self,
        node_name: str = "policy_node",
        *,
        command_filter: CommandFilter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, **kwargs)
        self.command_filter: CommandFilter = command_filter or identity_filter
        self.safety: SafetyFilter | None = None
        self.hooks = FaultHooks()
        self.command_log: list[dict[str, Any]] | None = None  # set to [] to record every published command
        self.segment = 0  # activations so far (command_log groups commands by activation)
        self._declare_parameters()
        self.configure_error = ""
        self.activate_error = ""
        self.lifecycle_state = "unconfigured"
        self.settings: Settings | None = None
        self.policy: Any = None
        self.sync: ObservationSync | None = None
        self.streamer: ActionStreamer | None = None
        self.worker: InferenceWorker | None = None
        self.activation_seed: np.ndarray | None = None  # the joint positions the current activation started from
        self._subs: list[Any] = []
        self._cmd_pub: Any = None
        self._timer: Any = None
        self._plan_pub: Any = None  # ~/plan and ~/noise_levels (publish_plan)
        self._levels_pub: Any = None
        self._plan_timer: Any = None
        self._plan_snap: tuple[float, Command] | None = None  # (tick time, command) of the latest tick
        self._levels_snap: np.ndarray | None = None  # the buffer's levels after the latest chunk (worker thread)
        self._plan_sent: Any = None
        self._levels_sent: Any = None
        self._phase_pending = False  # active, control ticks not yet in phase with the joint states
        self._lock = threading.Lock()
        self._seed_not_before: float | None = None  # set on deactivate: re-seed only from newer measurements
        self._totals: dict[str, int] = dict.fromkeys(TOTAL_KEYS, 0)
        self.latency_total = LatencyHistogram()  # obs -> command over the node's life (the soak's percentiles)
        self._reset_counters()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        rate = float(self.get_parameter("diagnostics_rate_hz").value)
        if rate > 0:
            self.create_timer(1.0 / rate, self.publish_diagnostics)
        self._autostart_timer = None
        self.autostart_failed = False
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.1, self._autostart_step)

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        """Declare :data:`~streamdp.ros_nodes.params.PARAMETERS` (unset ones by type only)."""
        types = {"string": Parameter.Type.STRING, "string_array": Parameter.Type.STRING_ARRAY,
                 "double_array": Parameter.Type.DOUBLE_ARRAY}
        for p in PARAMETERS:
            default = types[p.default.kind] if isinstance(p.default, Unset) else p.default
            self.declare_parameter(p.name, default, ParameterDescriptor(description=p.description))

    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    # ------------------------------------------------------------------------------ helpers
    def _reset_counters(self) -> None:
        self.latency = RollingStats()  # observation stamp -> publish of the chunk's first sent action
        self.inference = RollingStats()  # chunk request -> chunk ready (monotonic)
        self.obs_age = RollingStats()  # age of the joint state when a tick samples it
        self._nfe0 = 0
        self.tick_stats = TickStats(1.0)
        self.chunks = 0
        self.deadline_misses = 0
        self.chunk_requests = 0
        self.nonfinite_outputs = 0
        self.worker_errors = 0
        self.image_rejected = 0
        self.commands_published = 0
        self.fault = ""
        self._last_chunk_sent: int | None = None
        self._chunk_id = 0
        self._last_error = ""
        self._last_stale = ""

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9 + self.hooks.clock_offset_s

    @staticmethod
    def _device(name: str) -> str:
        if name != "auto":
            return name
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def period(self) -> float:
        return 1.0 / self.settings.control_rate_hz if self.settings else math.nan

    # ------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.configure_error = ""
        try:
            self._configure()
        except Exception as e:  # noqa: BLE001 - every failure becomes a clear refusal
            self.configure_error = str(e) if isinstance(e, (ParameterError, ValueError)) else f"{type(e).__name__}: {e}"
            self.get_logger().error(f"refusing to configure: {self.configure_error}")
            self._teardown()
            return TransitionCallbackReturn.FAILURE
        self.lifecycle_state = "inactive"
        return super().on_configure(state)

    def _configure(self) -> None:
        import torch

        from streamdp.policy.policy import Policy

        s = read_settings(self._param)
        torch.set_num_threads(s.num_threads)
        overrides = dict(s.policy_overrides)
        if s.sampler:
            overrides["sampler"] = s.sampler
        if s.num_inference_steps:
            overrides["num_inference_steps"] = s.num_inference_steps
        if s.cache:
            overrides["cache"] = s.cache
        device = self._device(s.device)
        policy = Policy.from_pretrained(s.checkpoint, device=device, seed=s.seed, **overrides)
        c = policy.config
        if not s.joint_names:
            if not c.joint_names:
                raise ParameterError("neither the checkpoint nor the joint_names parameter names the joints")
            s.joint_names = list(c.joint_names)
        if s.control_rate_hz == 0:
            s.control_rate_hz = float(c.fps)
        layout = StateLayout(tuple(s.joint_names), tuple(s.state_layout), tuple(s.extras))
        try:
            policy.check_compatible(
                joint_names=s.joint_names,
                camera_names=s.camera_names,
                state_dim=layout.dim if c.state_dim or s.state_layout else None,
                action_dim=len(s.joint_names),
                fps=s.control_rate_hz,
            )
        except Exception as e:
            hint = (f" [robot: joint_names={s.joint_names}, state_layout={s.state_layout} -> {layout.dim} values, "
                    f"cameras={s.camera_names}, control_rate_hz={s.control_rate_hz:g}]")
            raise ValueError(f"{e}{hint}") from e
        if not c.joint_names:
            self.get_logger().warning("checkpoint names no joints: trusting the joint_names parameter order")
        self.safety, summary = safety_filter_from(s)
        if summary:
            self.get_logger().info(summary)
        self.settings = s
        self.policy = policy
        self.layout = layout
        self._image_shape = tuple(c.image_shape) if c.image_shape else None  # (C, H, W)
        self._warmup(policy, s)
        self.sync = ObservationSync(layout, s.camera_names, s.max_obs_age_s, s.max_image_age_s, c.n_obs_steps)
        qos = qos_profile_sensor_data
        self._subs.append(self.create_subscription(JointState, s.joint_states_topic, self._on_joint_state, qos))
        for e in s.extras:
            self._subs.append(self.create_subscription(
                PointStamped, e.topic, lambda m, e=e: self._on_extra(e, m), qos))
        for cam, topic in zip(s.camera_names, s.camera_topics):
            self._subs.append(self.create_subscription(Image, topic, lambda m, cam=cam: self._on_image(cam, m), qos))
        msg_type = JointTrajectory if s.output_type == "joint_trajectory" else Float64MultiArray
        self._cmd_pub = self.create_lifecycle_publisher(msg_type, s.command_topic, QoSProfile(depth=10))
        if s.publish_plan:
            self._plan_pub = self.create_lifecycle_publisher(JointTrajectory, "~/plan", QoSProfile(depth=10))
            self._levels_pub = self.create_lifecycle_publisher(Float32MultiArray, "~/noise_levels",
                                                               QoSProfile(depth=10))
        self.get_logger().info(
            f"configured: {s.checkpoint} sampler={c.sampler} K={c.num_inference_steps} To={c.n_obs_steps} "
            f"Ta={c.n_action_steps} Tp={c.horizon} device={device} threads={s.num_threads} "
            f"rate={s.control_rate_hz:g} Hz -> {s.output_type} on {s.command_topic}"
        )

    def _warmup(self, policy: Any, s: Settings) -> None:
        c = policy.config
        obs: dict[str, np.ndarray] = {}
        if c.state_dim:
            obs["observation.state"] = np.zeros(c.state_dim, np.float32)
        for cam in c.camera_names:
            ch, h, w = c.image_shape
            obs["observation.images." + cam] = np.zeros((h, w, ch), np.uint8)
        times = []
        for i in range(max(0, s.warmup_chunks)):
            t = time.perf_counter()
            policy.observe(obs, float(i))
            policy.denoise(None)
            policy.pop_ready()
            times.append(time.perf_counter() - t)
        policy.reset()
        self.warmup_chunk_s = min(times) if times else math.nan
        budget = s.action_delay_ticks / s.control_rate_hz
        if times and self.warmup_chunk_s > budget:
            self.get_logger().warning(
                f"one chunk takes {1e3 * self.warmup_chunk_s:.1f} ms but the deadline is {1e3 * budget:.1f} ms "
                f"(action_delay_ticks={s.action_delay_ticks}): expect holds; raise action_delay_ticks or use a "
                "cheaper sampler"
            )

    def activation_blocker(self) -> str:
        """Why activating now could not seed from the measured state ("" when it can): no fresh JointState yet
        (after a deactivation: none measured since), or another input the first observation needs."""
        s, sync = self.settings, self.sync
        if s is None or sync is None:
            return "not configured"
        now = self._now()
        why = sync.missing(now, since=self._seed_not_before)
        if not why:
            return ""
        joints = f"JointState with joints {s.joint_names} on {s.joint_states_topic}"
        if sync.joint_stamp is None:
            return f"no {joints} yet: cannot seed the buffer from the measured state"
        if self._seed_not_before is not None and sync.joint_stamp < self._seed_not_before:
            return f"no {joints} measured since the deactivation yet: cannot seed the buffer from the measured state"
        if now - sync.joint_stamp > s.max_obs_age_s:
            return f"the last JointState is stale ({now - sync.joint_stamp:.2f} s old)"
        return f"no observation yet: {why}"

    def _wait_for_inputs(self, bound: float) -> str:
        """Wait up to `bound` seconds until :meth:`activation_blocker` is clear; the last reason ("" when clear)."""
        end = time.monotonic() + max(0.0, bound)
        first = ""
        while True:
            why = self.activation_blocker()
            if not why or time.monotonic() >= end:
                if first and not why:
                    self.get_logger().info(f"activate: waited for the inputs ({first})")
                return why
            first = first or why
            self._take_inputs(min(0.05, max(0.0, end - time.monotonic())))

    def _take_inputs(self, timeout: float) -> None:
        """Wait up to `timeout` for input messages and run their callbacks here. The executor is busy with the
        transition, so it cannot; this is rclpy.wait_for_message's way (a wait set on the subscriptions, then
        take), on the node's own subscriptions, with nothing created per call."""
        subs = list(self._subs)
        if not subs:
            time.sleep(timeout)
            return
        ws = _rclpy.WaitSet(len(subs), 0, 0, 0, 0, 0, self.context.handle)
        ws.clear_entities()
        for sub in subs:
            ws.add_subscription(sub.handle)
        ws.wait(int(timeout * 1e9))
        ready = ws.get_ready_entities("subscription")
        for sub in subs:
            if sub.handle.pointer not in ready:
                continue
            with sub.handle:
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
            if taken is not None:
                sub.callback(taken[0])

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_error = ""
        s, sync = self.settings, self.sync
        assert s is not None and sync is not None
        bound = s.activate_timeout_s
        why = self._wait_for_inputs(bound)
        if why:
            self.activate_error = f"{why} (waited {bound:g} s, activate_timeout_s)"
            self.get_logger().error(f"refusing to activate: {self.activate_error}")
            return TransitionCallbackReturn.FAILURE
        q = sync.joint_positions
        assert q is not None
        self._add_totals()
        self._reset_counters()
        self.tick_stats = TickStats(self.period)
        self._jumps = ClockJumpDetector(max(0.5, 5 * self.period))
        self.segment += 1
        self._nfe0 = int(self.policy.nfe_total)
        self._seed(q)
        # Ticks start TICK_PHASE periods after the next joint state arrives (_on_joint_state), or one period
        # from now if none does.
        self._phase_pending = True
        self._restart_timer(self.period, self._start_ticks)
        if self._plan_pub is not None:
            self._plan_timer = self.create_timer(self.period, self._publish_plan)
        self.lifecycle_state = "active"
        self.get_logger().info(f"active: seeded from joint state {np.round(q, 4).tolist()}")
        return super().on_activate(state)

    def _seed(self, q: np.ndarray) -> None:
        """Start streaming from the measured joint positions `q`: buffer, safety filter, streamer, worker."""
        s = self.settings
        assert s is not None and self.policy is not None
        if self.worker is not None:
            self.worker.stop()
        self.policy.reset(state=q)
        if self.safety is not None:
            self.safety.reset(q)
        self.activation_seed = q.copy()
        self.streamer = ActionStreamer(self.period)
        self.streamer.seed(q)
        self._plan_snap, self._levels_snap = None, self.policy.noise_levels()  # the ladder it starts from
        self._last_published = q.copy()
        self.worker = InferenceWorker(self.policy, self._on_chunk, self._on_worker_error, s.denoise_budget).start()

    def _reseed_if_moved(self) -> None:
        """Before the first command: when the arm has moved more than one command step since the seed (an
        episode reset or a move that raced with the activation, e.g. a restarted node activating by itself
        while the sim bridge resets), seed again from where it is now, so the first command starts at the arm."""
        sync, seed = self.sync, self.activation_seed
        q = None if sync is None else sync.joint_positions
        if q is None or seed is None or self.safety is None:
            return
        if np.any(np.abs(q - seed) > self.safety.limits.step_limit):
            self.get_logger().warning(f"the arm moved {np.round(q - seed, 4).tolist()} rad between the seed and the "
                                      "first control tick: seeded again from the measured state")
            self._seed(q)

    def _restart_timer(self, period: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
        self._timer = self.create_timer(period, callback)

    def _start_ticks(self) -> None:
        """The first control tick, then one per period from here (in phase with the joint states)."""
        self._phase_pending = False
        self._reseed_if_moved()
        self._restart_timer(self.period, self._tick)
        self._tick()

    def _stop_streaming(self) -> None:
        self._phase_pending = False
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._plan_timer is not None:
            self.destroy_timer(self._plan_timer)
            self._plan_timer = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._seed_not_before = self._now()  # the arm may move (or the episode reset) while inactive
        self._stop_streaming()
        if self.streamer is not None:
            self.streamer.clear()
            self._publish(Command(self._last_published.copy(), True, self._now(), reason="deactivated"), self._now())
        self.lifecycle_state = "inactive"
        return super().on_deactivate(state)

    def _teardown(self) -> None:
        self._stop_streaming()
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._cmd_pub is not None:
            self.destroy_lifecycle_publisher(self._cmd_pub)
            self._cmd_pub = None
        for pub in (self._plan_pub, self._levels_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._plan_pub = self._levels_pub = None
        self.policy = None
        self.sync = None
        self.streamer = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._seed_not_before = None
        self.settings = None
        self.lifecycle_state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.lifecycle_state == "active":
            self._stop_streaming()
            self._publish(Command(self._last_published.copy(), True, self._now(), reason="shutdown"), self._now())
        self._teardown()
        self.lifecycle_state = "finalized"
        return super().on_shutdown(state)

    def finalize(self) -> None:
        """Before the process exits: hold at the last commanded position and shut down cleanly."""
        if self.lifecycle_state in ("active", "inactive"):
            self.trigger_shutdown()

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error("error during a transition: cleaning up")
        self._teardown()
        self.lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _autostart_step(self) -> None:
        if self.lifecycle_state == "unconfigured":
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                self.get_logger().error("autostart: configure failed; not retrying (fix the parameters)")
                self.autostart_failed = True
                self.destroy_timer(self._autostart_timer)
                self._autostart_timer = None
            return
        if self.lifecycle_state == "inactive" and not self.activation_blocker():
            if self.trigger_activate() == TransitionCallbackReturn.SUCCESS:
                self.destroy_timer(self._autostart_timer)
                self._autostart_timer = None

    # ------------------------------------------------------------------------------ inputs
    def _on_joint_state(self, msg: JointState) -> None:
        if self.sync is not None:
            self.sync.add_joint_state(stamp_seconds(msg.header.stamp), msg.name, msg.position, msg.velocity,
                                      msg.effort)
        if self._phase_pending and self.sync is not None and self.sync.joint_positions is not None:
            self._phase_pending = False  # first joint state since activation: tick just after each one
            self._restart_timer(TICK_PHASE * self.period, self._start_ticks)

    def _on_extra(self, extra: ExtraState, msg: PointStamped) -> None:
        if self.sync is not None:
            v = [getattr(msg.point, c) for c in extra.fields]
            self.sync.add_extra(extra.name, stamp_seconds(msg.header.stamp), v)

    def _on_image(self, cam: str, msg: Image) -> None:
        if self.sync is None or self._image_shape is None:
            return
        ch, h, w = self._image_shape
        try:
            img = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, (h, w), ch)
        except SyncError as e:
            self.image_rejected += 1
            self.get_logger().warning(f"camera {cam}: {e}", throttle_duration_sec=5.0)
            return
        self.sync.add_image(cam, stamp_seconds(msg.header.stamp), img)

    # ------------------------------------------------------------------------------ inference thread
    def _on_chunk(self, chunk: Chunk) -> None:
        s, streamer = self.settings, self.streamer
        if s is None or streamer is None:
            return
        f = chunk.frame
        t0 = f.slot_time + s.action_delay_ticks * self.period
        if self.hooks.inference_delay_s > 0:  # fault injection: a slow network
            time.sleep(self.hooks.inference_delay_s)
            chunk.done_mono = time.monotonic()
        if self.hooks.output is not None:  # fault injection: a corrupted network output
            chunk.actions = np.asarray(self.hooks.output(np.array(chunk.actions, dtype=np.float64)))
        with self._lock:
            self._chunk_id += 1
            cid = self._chunk_id
            self.chunks += 1
            self.inference.add(chunk.compute_s)
            if chunk.done_mono > f.mono + s.action_delay_ticks * self.period:
                self.deadline_misses += 1
        n = streamer.push(t0, chunk.actions, {"source_stamp": f.source_stamp, "chunk": cid, "nfe": chunk.nfe})
        if chunk.levels is not None:
            self._levels_snap = chunk.levels
        if n == 0:
            self._output_fault("policy output contains NaN/inf: chunk dropped, buffer reset")

    def _on_worker_error(self, err: BaseException, frame: Frame | None) -> None:
        from streamdp.policy.policy import NonFiniteError

        self.worker_errors += 1
        self._last_error = f"{type(err).__name__}: {err}"
        if isinstance(err, NonFiniteError):
            self._output_fault(str(err))
        else:
            self.get_logger().error(f"inference error: {self._last_error}", throttle_duration_sec=2.0)

    def _output_fault(self, why: str) -> None:
        """NaN/inf from the policy: nothing is published from it; reset the buffer from the measured state."""
        self.nonfinite_outputs += 1
        self.get_logger().error(f"{why}; holding", throttle_duration_sec=2.0)
        if self.streamer is not None:
            self.streamer.clear()
        if self.worker is not None and self.sync is not None:
            self.worker.request_reset(self.sync.joint_positions)

    # ------------------------------------------------------------------------------ control tick
    def _tick(self) -> None:
        s, sync, streamer, worker = self.settings, self.sync, self.streamer, self.worker
        if s is None or sync is None or streamer is None or worker is None:
            return
        now, mono = self._now(), time.monotonic()
        self.tick_stats.tick(mono)
        if self._jumps.update(now, mono) and not self.fault:
            self.fault = "ROS clock jumped against the monotonic clock: history and buffer flushed, holding " \
                         "until re-activated"
            self.get_logger().error(self.fault)
            sync.reset()
            streamer.clear()
            worker.request_reset(None)
        if not self.fault:
            res = sync.sample(now)
            if res.obs is not None:
                self._last_stale = ""
                self.obs_age.add(res.age)
                want = not worker.busy and not streamer.covers(now + s.action_delay_ticks * self.period)
                self.chunk_requests += int(want)
                worker.submit(Frame(res.obs, now, mono, res.stamp, want))
            elif res.reason != self._last_stale:
                self._last_stale = res.reason
                self.get_logger().warning(f"no new input: {res.reason}", throttle_duration_sec=2.0)
        if self.safety is not None and self.safety.latched and not self.fault:
            self.fault = (f"safety filter: {self.safety.limits.escalate_after} consecutive clamped commands; "
                          "holding until re-activated")
            self.get_logger().error(self.fault)
            streamer.clear()
            worker.request_reset(None)
        if self.fault:
            cmd = Command(self._last_published.copy(), True, now, reason=self.fault)
        else:
            cmd = streamer.tick(now)
        self._plan_snap = (now, cmd)  # ~/plan is built by its own timer (_publish_plan), not in this tick
        if not cmd.hold and cmd.meta.get("chunk") != self._last_chunk_sent:
            self._last_chunk_sent = cmd.meta.get("chunk")
            self.latency.add(now - cmd.meta["source_stamp"])
            self.latency_total.add(now - cmd.meta["source_stamp"])
        self._publish(cmd, now)

    def _publish(self, cmd: Command, now: float) -> None:
        """Publish this tick's command after the pipeline (:func:`streamdp.ros_nodes.commands.decide`)."""
        s = self.settings
        if s is None or self._cmd_pub is None:
            return
        prev = self._last_published
        d = decide(cmd.position, [q.position for q in cmd.future], cmd.hold, prev, self.command_filter, self.safety,
                   s.trajectory_points)
        self.nonfinite_outputs += d.nonfinite
        for err in d.errors:
            self.get_logger().error(err, throttle_duration_sec=2.0)
        pts, status = d.points, d.status
        if s.output_type == "joint_trajectory":
            msg = JointTrajectory()
            msg.header.stamp.sec, msg.header.stamp.nanosec = split_seconds(now)
            msg.joint_names = list(s.joint_names)
            for p in trajectory_points(pts, self.period, start=prev):
                pt = JointTrajectoryPoint()
                pt.positions = p.positions.tolist()
                pt.velocities = p.velocities.tolist()
                pt.time_from_start.sec, pt.time_from_start.nanosec = split_seconds(p.time_from_start)
                msg.points.append(pt)
        else:
            msg = Float64MultiArray()
            msg.layout.dim = [MultiArrayDimension(label="joints", size=len(s.joint_names), stride=len(s.joint_names))]
            msg.data = pts[0].tolist()
        self._cmd_pub.publish(msg)
        self._last_published = pts[0].copy()
        self.commands_published += 1
        if self.command_log is not None:
            sent = pts if s.output_type == "joint_trajectory" else pts[:1]  # what the message carries
            self.command_log.append({"t": now, "points": sent.copy(), "hold": d.hold, "status": status,
                                     "reason": cmd.reason, "segment": self.segment, "lifecycle": self.lifecycle_state})

    def _publish_plan(self) -> None:
        """~/plan and ~/noise_levels from the latest tick's and chunk's snapshots, each once (timer callback)."""
        s, snap, levels = self.settings, self._plan_snap, self._levels_snap
        if s is None or self._plan_pub is None:
            return
        if snap is not None and snap is not self._plan_sent:
            self._plan_sent = snap
            now, cmd = snap
            msg = JointTrajectory()
            msg.header.stamp.sec, msg.header.stamp.nanosec = split_seconds(now)
            msg.joint_names = list(s.joint_names)
            rows = ([] if cmd.hold else [cmd.position]) + [q.position for q in cmd.future]
            for i, pos in enumerate(rows):  # one control period apart, the first by the end of this step (as commands)
                pt = JointTrajectoryPoint(positions=np.asarray(pos, dtype=np.float64).tolist())
                pt.time_from_start.sec, pt.time_from_start.nanosec = split_seconds((i + 1) * self.period)
                msg.points.append(pt)
            self._plan_pub.publish(msg)
        if levels is not None and levels is not self._levels_sent:
            self._levels_sent = levels
            buf = self.policy.buffer if self.policy is not None else None
            k = int(buf.K) if buf is not None else 0  # the grid the levels count on (constant)
            msg = Float32MultiArray(data=levels.astype(np.float32).tolist())
            msg.layout.dim = [MultiArrayDimension(label=f"slot: level on the {k}-level sampler grid, -1 clean",
                                                  size=int(levels.size), stride=int(levels.size))]
            self._levels_pub.publish(msg)

    # ------------------------------------------------------------------------------ diagnostics
    def stats(self) -> dict[str, Any]:
        """Counters and latency percentiles (what /diagnostics reports), as plain numbers."""
        out: dict[str, Any] = {"lifecycle_state": self.lifecycle_state, "configure_error": self.configure_error,
                               "fault": self.fault}
        if self.policy is not None:
            c = self.policy.config
            out.update(sampler=c.sampler, num_inference_steps=c.num_inference_steps,
                       nfe_per_chunk_last=int(self.policy.last_nfe), nfe_total=int(self.policy.nfe_total))
        lat, inf, jit = self.latency.summary(), self.inference.summary(), self.tick_stats.jitter.summary()
        age = self.obs_age.summary()
        out.update(
            ticks=self.tick_stats.ticks, ticks_overrun=self.tick_stats.late,
            tick_jitter_ms_p50=1e3 * jit["p50"], tick_jitter_ms_p99=1e3 * jit["p99"],
            commands_published=self.commands_published, chunks=self.chunks, chunk_requests=self.chunk_requests,
            deadline_misses=self.deadline_misses,
            deadline_ms=1e3 * (self.settings.action_delay_ticks * self.period) if self.settings else math.nan,
            obs_to_cmd_latency_ms_p50=1e3 * lat["p50"], obs_to_cmd_latency_ms_p99=1e3 * lat["p99"],
            inference_ms_p50=1e3 * inf["p50"], inference_ms_p99=1e3 * inf["p99"],
            obs_age_ms_p50=1e3 * age["p50"], obs_age_ms_p99=1e3 * age["p99"],
            nfe_per_chunk_mean=((self.policy.nfe_total - self._nfe0) / self.chunks)
            if self.policy is not None and self.chunks else math.nan,
            nonfinite_outputs=self.nonfinite_outputs, worker_errors=self.worker_errors,
            image_rejected=self.image_rejected, stale_reason=self._last_stale,
        )
        if self.streamer is not None:
            sc = self.streamer.counters
            out.update(actions_sent=sc.sent, holds=sc.holds, starved_holds=sc.starved,
                       late_actions_dropped=sc.late_dropped, replaced_actions=sc.replaced)
        if self.safety is not None:
            out.update(safety_status=self.safety.status.value,
                       safety_consecutive_clamps=self.safety.consecutive_clamps,
                       **{f"safety_{k}": v for k, v in self.safety.counts.items()})
        if self.sync is not None:
            y = self.sync.counters
            out.update(stale_ticks=y.stale, out_of_order_drops=y.out_of_order, duplicate_drops=y.duplicate,
                       rejected_msgs=y.rejected, nonfinite_inputs=y.nonfinite)
        out.update(obs_age_ms_max=1e3 * age["max"], activations=self.segment,
                   **{f"total_{k}": self._totals[k] + int(out.get(k, 0)) for k in TOTAL_KEYS},
                   total_obs_to_cmd_latency_ms_p50=1e3 * self.latency_total.percentile(50),
                   total_obs_to_cmd_latency_ms_p99=1e3 * self.latency_total.percentile(99))
        return out

    def _add_totals(self) -> None:
        """Fold the ending activation's counters into the totals (they restart at every activation)."""
        st = self.stats()
        for k in TOTAL_KEYS:
            self._totals[k] += int(st.get(k, 0))

    def publish_diagnostics(self) -> None:
        st = self.stats()
        level, message = DiagnosticStatus.OK, self.lifecycle_state
        if self.configure_error or self.fault:
            level, message = DiagnosticStatus.ERROR, self.configure_error or self.fault
        elif st.get("nonfinite_outputs") or st.get("worker_errors"):
            level, message = DiagnosticStatus.WARN, f"{self.lifecycle_state}: non-finite outputs or inference errors"
        elif st.get("safety_status") == SafetyStatus.CLAMPED.value:
            level, message = DiagnosticStatus.WARN, f"{self.lifecycle_state}: safety filter clamping commands"
        elif st.get("deadline_misses"):
            level, message = DiagnosticStatus.WARN, f"{self.lifecycle_state}: {st['deadline_misses']} deadline misses"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: streaming policy", message=message,
                                  hardware_id=self.settings.checkpoint if self.settings else "")
        status.values = [KeyValue(key=k, value=(f"{v:.3f}" if isinstance(v, float) else str(v))) for k, v in st.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self._diag_pub.publish(arr)


def main(args: list[str] | None = None) -> int:
    """Spin one PolicyNode (set ``autostart: true`` to run without a lifecycle manager); rclpy must load.

    The ``policy_node`` executable reaches this through :mod:`streamdp.ros_nodes.cli` (which makes rclpy
    loadable first); ``python -m streamdp.ros_nodes.policy_node`` needs it loadable already (bring-up
    children get the library path in their environment).

    SIGINT/SIGTERM end the spin; the node then publishes a final hold and shuts down."""
    from streamdp.ros_nodes import runtime

    runtime.init(args if args is not None else sys.argv)
    node = PolicyNode()
    runtime.spin_until_signal([node], until=lambda: node.autostart_failed)
    return 1 if node.configure_error else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fault-injection harness: the real ``sim_bridge_node`` and ``policy_node`` over rclpy, one fault at a time.

Both nodes run in this process on one executor (the policy's inference has its own thread, as in
production), together with a :class:`FaultInjector` node that publishes corrupted, reordered or
duplicated ``JointState`` messages on the robot's topic. The policy node's ``hooks``
(:class:`~streamdp.ros_nodes.policy_node.FaultHooks`) corrupt the network output, slow the
inference thread down or shift its ROS clock; its ``command_log`` records **every** command it
publishes (each point of each JointTrajectory), and :func:`check_commands` checks them all against
the raw limit numbers with the independent oracle of streamdp.ros_nodes.safety_oracle (finite, within position
limits, |step| <= max_delta and v_max dt, |step change| <= a_max dt^2, the tip in the workspace box by
the URDF chain's FK; the look-ahead points of a trajectory are chained from its first point; each
activation restarts from the measured joint state).

Use::

    rig = FaultRig(context, checkpoint, LIMITS)
    rig.start_trial(seed=1)                       # re-seed the sim, activate, record
    rig.run_ticks(20)
    mark = rig.mark()
    rig.sim_pause()                               # the fault ...
    rig.run_ticks(30)
    rig.sim_resume()                              # ... clears
    rig.run_ticks(40)
    report = rig.finish()                         # deactivate; report.unsafe == 0; report.ticks_to_hold(mark)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState

from streamdp.ros_nodes.kinematics import UrdfChain
from streamdp.ros_nodes.policy_node import FaultHooks, PolicyNode
from streamdp.ros_nodes.safety import SafetyLimits
from streamdp.ros_nodes.safety_oracle import Bounds, CheckReport, check_commands
from streamdp.ros_nodes.trajectory import split_seconds

INJECTOR_FRAME = "fault_injector"


class FaultInjector(Node):
    """Publishes JointStates on the robot's topic and remembers the robot's own latest message."""

    def __init__(self, topic: str = "/joint_states", **kwargs: Any) -> None:
        super().__init__("fault_injector", **kwargs)
        self.pub = self.create_publisher(JointState, topic, QoSProfile(depth=10))
        self.latest: JointState | None = None
        self.sent = 0
        self.create_subscription(JointState, topic, self._on_js, QoSProfile(depth=10))

    def _on_js(self, msg: JointState) -> None:
        if msg.header.frame_id != INJECTOR_FRAME:
            self.latest = msg

    def publish(self, names: list[str], position: list[float], velocity: list[float] | None = None,
                stamp: float | None = None) -> None:
        m = JointState()
        t = self.get_clock().now().nanoseconds * 1e-9 if stamp is None else stamp
        m.header.stamp.sec, m.header.stamp.nanosec = split_seconds(max(t, 0.0))
        m.header.frame_id = INJECTOR_FRAME
        m.name = list(names)
        m.position = [float(x) for x in position]
        m.velocity = [float(x) for x in (velocity if velocity is not None else [0.0] * len(position))]
        self.pub.publish(m)
        self.sent += 1

    def republish_latest(self, stamp_shift: float) -> bool:
        """The robot's latest JointState again, its stamp shifted (0: a duplicate; < 0: out of order)."""
        if self.latest is None:
            return False
        m = self.latest
        t = float(m.header.stamp.sec) + 1e-9 * float(m.header.stamp.nanosec) + stamp_shift
        self.publish(list(m.name), list(m.position), list(m.velocity), stamp=t)
        return True


class FaultRig:
    """sim_bridge_node + policy_node (+ FaultInjector) in this process, configured once, re-activated per trial."""

    def __init__(self, context: Any, checkpoint: str, limits: dict[str, Any], params_file: str | None = None,
                 sim_params: dict[str, Any] | None = None, **params: Any) -> None:
        import yaml

        from streamdp.ros_nodes.bringup import default_params
        from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode

        self.context = context
        sim_over = {"max_episode_steps": 100000, **(sim_params or {})}
        self.sim = SimBridgeNode(context=context,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in sim_over.items()])
        args = ["--ros-args", "--params-file", str(params_file or default_params("sim")), "-p",
                f"checkpoint:={checkpoint}", "-p", "autostart:=false", "-p", "warmup_chunks:=1"]
        merged = {**{f"limits.{k}": v for k, v in limits.items()}, **params}
        for k, v in merged.items():
            args += ["-p", f"{k}:={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"]
        self.node = PolicyNode(context=context, cli_args=args, use_global_arguments=False)
        self.injector = FaultInjector(context=context)
        self.ex = SingleThreadedExecutor(context=context)
        for n in (self.sim, self.node, self.injector):
            self.ex.add_node(n)
        if self.node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"policy node refused to configure: {self.node.configure_error}")
        if self.node.safety is None:
            raise RuntimeError("no safety filter: give limits")
        self.limits: SafetyLimits = self.node.safety.limits  # the filter's (escalate_after)
        joints = self.limits.joint_names
        fk = UrdfChain(limits["urdf"], limits["tip_link"], joints).fk if "workspace_min" in limits else None
        self.bounds = Bounds.from_params(limits, len(joints), self.node.period, fk=fk)  # the oracle's: raw numbers
        self.seeds: dict[int, np.ndarray] = {}
        self._sim_paused = False
        self._trials = 0

    # ------------------------------------------------------------------ spinning
    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)

    def spin_until(self, cond: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
        return bool(cond())

    def run_ticks(self, n: int, every_tick: Any = None, timeout: float | None = None) -> None:
        """Spin until the policy node has published `n` more commands; `every_tick()` runs once per command."""
        log = self.node.command_log
        assert log is not None
        target = len(log) + n
        end = time.monotonic() + (timeout or 3.0 + 3.0 * n * self.node.period)
        seen = len(log)
        while len(log) < target and time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
            if every_tick is not None and len(log) > seen:
                seen = len(log)
                every_tick()
        if len(log) < target:
            raise TimeoutError(f"only {len(log) - (target - n)} of {n} commands published; {self.node.stats()}")

    def mark(self) -> int:
        """Index of the next command (to measure ticks from a fault's injection)."""
        return len(self.node.command_log or [])

    # ------------------------------------------------------------------ faults
    def sim_pause(self) -> None:
        """The robot's joint-state stream stops (the bridge's timer is cancelled)."""
        self.sim.timer.cancel()
        self._sim_paused = True

    def sim_resume(self) -> None:
        self.sim.timer.reset()
        self._sim_paused = False

    def cameras(self, enabled: bool) -> None:
        """Stop (a camera dropout) or restart every camera stream of the sim; joint states go on."""
        self.sim.set_parameters([Parameter("cameras_enabled", value=bool(enabled))])

    def measured(self) -> np.ndarray | None:
        return None if self.node.sync is None else self.node.sync.joint_positions

    # ------------------------------------------------------------------ trials
    def start_trial(self, seed: int, warm_s: float = 0.3) -> None:
        """Clear hooks and faults, re-seed the sim episode, activate from the measured state, record."""
        if self.node.lifecycle_state == "active":
            self.node.trigger_deactivate()
        self.node.hooks = FaultHooks()
        if self._sim_paused:
            self.sim_resume()
        self.cameras(True)
        self._trials += 1  # a new `reset` value starts a new episode (seed + reset + episodes so far)
        self.sim.set_parameters([Parameter("reset", value=int(seed) + 100 * self._trials)])
        self.spin(warm_s)
        self.node.command_log = []
        self.seeds = {}
        self.activate()

    def activate(self, timeout: float = 5.0) -> None:
        ok = self.spin_until(self._try_activate, timeout)
        if not ok:
            raise RuntimeError(f"could not activate: {self.node.activate_error}")
        self.seeds[self.node.segment] = self.node.activation_seed.copy()

    def _try_activate(self) -> bool:
        if self.node.lifecycle_state == "active":
            return True
        if self.node.activation_blocker():  # this thread spins the executor: trigger once the inputs are in
            return False
        self.node.trigger_activate()
        return self.node.lifecycle_state == "active"

    def deactivate(self) -> None:
        if self.node.lifecycle_state == "active":
            self.node.trigger_deactivate()

    def finish(self) -> CheckReport:
        """Deactivate (its final hold is checked too) and check every command of the trial."""
        stats = self.node.stats()
        self.deactivate()
        self.node.hooks = FaultHooks()
        if self._sim_paused:
            self.sim_resume()
        rep = check_commands(list(self.node.command_log or []), self.bounds, self.seeds)
        rep.stats = stats
        self.node.command_log = None
        return rep

    def close(self) -> None:
        if self.node.lifecycle_state in ("active", "inactive"):
            self.node.trigger_shutdown()
        self.ex.shutdown()
        self.sim.finalize()
        for n in (self.node, self.sim, self.injector):
            n.destroy_node()

"""``joint_state_relay``: a lossy link for JointState messages (drops and delays a share of them), for soak
and robustness runs.

It subscribes to ``input_topic`` (the robot's ``/joint_states``) and republishes each message, unchanged
(header stamp included), on ``output_topic`` for the policy node, except that a seeded share is dropped
and a share of the rest is held back ``delay_s`` before it goes out, so a delayed message arrives after
newer ones (out of order) or older than the policy node's ``max_obs_age_s`` (stale). What a node does
with such input is its business; the relay only counts what it did (``counts``: received, passed, dropped,
delayed) and publishes the counts on ``/diagnostics`` (name ``joint_state_relay``) once a second. Every
parameter may be changed at run time (``ros2 param set``).

    python -m streamdp.ros_nodes.joint_state_relay --ros-args -p drop_share:=0.2 -p delay_share:=0.3 \\
        -p delay_s:=0.5 -p output_topic:=/joint_states_relayed
"""

from __future__ import annotations

import collections
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState

ACTIONS = ("pass", "drop", "delay")


@dataclass
class RelayPlan:
    """What happens to each message: dropped with probability `drop_share`, else delayed with probability
    `delay_share`, else passed on at once (a seeded generator: the same seed gives the same sequence)."""

    drop_share: float = 0.0
    delay_share: float = 0.0
    delay_s: float = 0.0
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"received": 0, "passed": 0, "dropped": 0, "delayed": 0})

    def __post_init__(self) -> None:
        for name in ("drop_share", "delay_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if not self.delay_s >= 0.0:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s}")
        self._rng = np.random.default_rng(self.seed)

    def decide(self) -> str:
        """The fate of the next message: 'pass', 'drop' or 'delay' (counted)."""
        u_drop, u_delay = self._rng.random(2)
        self.counts["received"] += 1
        if u_drop < self.drop_share:
            self.counts["dropped"] += 1
            return "drop"
        if u_delay < self.delay_share and self.delay_s > 0:
            self.counts["delayed"] += 1
            return "delay"
        self.counts["passed"] += 1
        return "pass"


class JointStateRelay(Node):
    """Relays JointState messages through a :class:`RelayPlan` (see the module docstring)."""

    def __init__(self, node_name: str = "joint_state_relay", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

        def d(name: str, default: Any, text: str) -> None:
            self.declare_parameter(name, default, ParameterDescriptor(description=text))

        d("input_topic", "/joint_states", "JointState input (the robot's)")
        d("output_topic", "/joint_states_relayed", "JointState output (the policy node's joint_states_topic)")
        d("drop_share", 0.0, "share of messages dropped (seeded)")
        d("delay_share", 0.0, "share of the others held back delay_s before they go out")
        d("delay_s", 0.0, "how long a delayed message is held back")
        d("seed", 0, "seed of the drop/delay draws")
        p = self._param
        self.plan = RelayPlan(float(p("drop_share")), float(p("delay_share")), float(p("delay_s")), int(p("seed")))
        self._held: collections.deque[tuple[float, JointState]] = collections.deque()
        self.pub = self.create_publisher(JointState, p("output_topic"), QoSProfile(depth=10))
        self.create_subscription(JointState, p("input_topic"), self._on_js, QoSProfile(depth=10))
        self._release_timer = self.create_timer(0.01, self._release)  # runs only while messages are held back
        self._release_timer.cancel()
        self._diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_counts)
        self.add_on_set_parameters_callback(self._on_params)

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_params(self, params: list[Any]) -> SetParametersResult:
        plan = self.plan
        values = {"drop_share": plan.drop_share, "delay_share": plan.delay_share, "delay_s": plan.delay_s}
        for prm in params:
            if prm.name in values:
                values[prm.name] = float(prm.value)
        try:
            new = RelayPlan(**values, seed=plan.seed)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        new.counts, new._rng = plan.counts, plan._rng  # the same sequence of draws and counts go on
        self.plan = new
        return SetParametersResult(successful=True)

    def _on_js(self, msg: JointState) -> None:
        fate = self.plan.decide()
        if fate == "pass":
            self.pub.publish(msg)
        elif fate == "delay":
            self._held.append((time.monotonic() + self.plan.delay_s, msg))
            if self._release_timer.is_canceled():
                self._release_timer.reset()

    def _release(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][0] <= now:
            self.pub.publish(self._held.popleft()[1])
        if not self._held:
            self._release_timer.cancel()

    def _publish_counts(self) -> None:
        st = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{self.get_name()}: joint_state_relay",
                              message="relaying", values=[KeyValue(key=k, value=str(v))
                                                          for k, v in self.plan.counts.items()])
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self._diag.publish(arr)


def main(args: list[str] | None = None) -> int:
    """Relay until SIGINT/SIGTERM (rclpy must be loadable: the soak starts it with the ROS library path)."""
    from streamdp.ros_nodes import runtime

    runtime.init(args if args is not None else sys.argv)
    runtime.spin_until_signal([JointStateRelay()])
    return 0


if __name__ == "__main__":
    sys.exit(main())

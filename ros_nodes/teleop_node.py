"""``expert_teleop_node``: the sim's scripted expert as a teleoperator, publishing commands for the bridge.

Subscribes to the expert suggestions ``sim_bridge_node`` publishes with ``expert:=true``
(``/task/expert_action``, one-point ``JointTrajectory`` stamped like the observation it answers) and
publishes each usable one (:class:`~streamdp.ros_nodes.teleop.ExpertRelay`) on the same controller topic
and type as ``policy_node`` (``output_type`` joint_trajectory: a one-point trajectory whose header stamp is
the observation's, so a recorder can pair every command with its observation; float64_multi_array: the
values in command-channel order). ``enabled`` may be switched at run time (an operator letting go: the
bridge then holds). Why the expert runs in the bridge: see :mod:`streamdp.ros_nodes.sim_bridge_node`.

    sim_bridge_node --ros-args -p expert:=true -p task:=pusht
    expert_teleop_node
"""

from __future__ import annotations

import sys
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from streamdp.ros_nodes.params import DEFAULT_COMMAND_TOPICS, OUTPUT_TYPES
from streamdp.ros_nodes.teleop import ExpertRelay

# (name, default, description): what ``expert_teleop_node --help`` lists and the node declares.
PARAMETERS: tuple[tuple[str, Any, str], ...] = (
    ("expert_topic", "/task/expert_action", "JointTrajectory suggestions from sim_bridge_node (expert:=true)"),
    ("output_type", "joint_trajectory", "joint_trajectory | float64_multi_array (as policy_node)"),
    ("command_topic", "", "command output; empty: the controller's conventional topic for output_type"),
    ("max_age_s", 0.25, "drop suggestions older than this (they answer a past observation)"),
    ("enabled", True, "false: relay nothing (the bridge holds); may be changed at run time"),
)


class ExpertTeleopNode(Node):
    """Relays the bridge's expert suggestions as controller commands (see the module docstring)."""

    def __init__(self, node_name: str = "expert_teleop", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)

        for name, default, text in PARAMETERS:
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        out = self.get_parameter("output_type").value
        if out not in OUTPUT_TYPES:
            raise ValueError(f"expert_teleop parameter output_type must be one of {OUTPUT_TYPES}, got {out!r}")
        self.output_type = out
        topic = self.get_parameter("command_topic").value or DEFAULT_COMMAND_TOPICS[out]
        get = self.get_parameter
        self.relay = ExpertRelay(float(get("max_age_s").value), bool(get("enabled").value))
        msg_type = JointTrajectory if out == "joint_trajectory" else Float64MultiArray
        self.pub = self.create_publisher(msg_type, topic, QoSProfile(depth=10))
        self.create_subscription(JointTrajectory, self.get_parameter("expert_topic").value, self._on_suggestion,
                                 QoSProfile(depth=10))
        self.add_on_set_parameters_callback(self._on_params)
        self.get_logger().info(f"relaying {self.get_parameter('expert_topic').value} -> {topic} ({out})")

    def _on_params(self, params: list[Any]) -> SetParametersResult:
        for prm in params:
            if prm.name == "enabled":
                self.relay.enabled = bool(prm.value)
        return SetParametersResult(successful=True)

    def _on_suggestion(self, msg: JointTrajectory) -> None:
        if not msg.points:
            self.relay.counters.rejected += 1
            return
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        now = self.get_clock().now().nanoseconds * 1e-9
        a = self.relay.accept(stamp, now, msg.joint_names, msg.points[0].positions)
        if a is None:
            return
        if self.output_type == "joint_trajectory":
            out = JointTrajectory(header=msg.header, joint_names=list(msg.joint_names))
            out.points = [JointTrajectoryPoint(positions=a.tolist(), time_from_start=msg.points[0].time_from_start)]
        else:
            out = Float64MultiArray(data=a.tolist())
            out.layout.dim = [MultiArrayDimension(label="joints", size=a.size, stride=a.size)]
        self.pub.publish(out)


def main(args: list[str] | None = None) -> int:
    """Spin one ExpertTeleopNode until SIGINT/SIGTERM (the ``expert_teleop_node`` executable)."""
    from streamdp.ros_nodes import runtime

    runtime.init(args if args is not None else sys.argv)
    node = runtime.make_node("expert_teleop_node", ExpertTeleopNode)
    if node is None:
        return 2
    runtime.spin_until_signal([node])
    c = node.relay.counters
    print(f"expert_teleop: {c.relayed} commands relayed; dropped {c.stale} stale, {c.out_of_order} out of order, "
          f"{c.rejected} malformed, {c.disabled} while disabled")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scripted expert as a teleoperator: relay rules (no ROS), and a whole episode driven over DDS."""

from __future__ import annotations

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode
from streamdp.ros_nodes.teleop import ExpertRelay
from streamdp.ros_nodes.teleop_node import ExpertTeleopNode

from .helpers import spin_until


def test_relay_drops_stale_reordered_malformed_and_disabled_suggestions():
    r = ExpertRelay(max_age_s=0.25)
    names = ["a", "b"]
    np.testing.assert_array_equal(r.accept(1.0, 1.01, names, [0.1, 0.2]), [0.1, 0.2])
    assert r.accept(1.0, 1.02, names, [0.1, 0.2]) is None  # the same stamp again
    assert r.accept(0.9, 1.02, names, [0.1, 0.2]) is None  # older than the last relayed
    assert r.accept(1.1, 1.5, names, [0.1, 0.2]) is None  # 0.4 s old
    assert r.accept(1.2, 1.21, names, [np.nan, 0.2]) is None
    assert r.accept(1.2, 1.21, names, [0.1]) is None  # one value for two channels
    r.enabled = False
    assert r.accept(1.3, 1.31, names, [0.1, 0.2]) is None
    c = r.counters
    assert (c.relayed, c.out_of_order, c.stale, c.rejected, c.disabled) == (1, 2, 1, 2, 1)
    with pytest.raises(ValueError, match="max_age_s must be > 0"):
        ExpertRelay(max_age_s=0)


class Watch(Node):
    def __init__(self, **kw):
        super().__init__("teleop_watch", **kw)
        self.episodes: list[DiagnosticStatus] = []
        self.commands: list[JointTrajectory] = []
        self.arrays: list[Float64MultiArray] = []
        self.create_subscription(DiagnosticStatus, "/task/episode", self.episodes.append, QoSProfile(
            depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE))
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                 self.commands.append, QoSProfile(depth=100))
        self.create_subscription(Float64MultiArray, "/forward_position_controller/commands", self.arrays.append,
                                 QoSProfile(depth=100))

    def ended(self) -> list[DiagnosticStatus]:
        return [m for m in self.episodes if m.message != "running"]


@pytest.fixture
def loop(ros_context):
    made = []

    def build(sim_params, teleop_params=None):
        sim = SimBridgeNode(context=ros_context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in sim_params.items()])
        tele = ExpertTeleopNode(context=ros_context,
                                parameter_overrides=[Parameter(k, value=v) for k, v in (teleop_params or {}).items()])
        watch = Watch(context=ros_context)
        ex = SingleThreadedExecutor(context=ros_context)
        for n in (sim, tele, watch):
            ex.add_node(n)
        made.append((ex, sim, tele, watch))
        return sim, tele, watch, ex

    yield build
    for ex, sim, *rest in made:
        ex.shutdown()
        sim.finalize()
        for n in (sim, *rest):
            n.destroy_node()


def test_expert_teleop_drives_the_arm_to_success_over_dds(loop):
    """Bridge (expert on) -> suggestion -> teleop node -> JointTrajectory command -> bridge: the episode succeeds."""
    sim, tele, watch, ex = loop({"seed": 4, "auto_reset": False, "expert": True})
    assert spin_until(ex, lambda: watch.ended(), 60.0), (sim.steps, tele.relay.counters, sim.commands)
    end = watch.ended()[0]
    assert end.message == "success" and sim.successes == 1, {kv.key: kv.value for kv in end.values}
    c = tele.relay.counters
    # every command the bridge followed came from the expert through the teleop node, one per tick
    assert spin_until(ex, lambda: sim.commands["trajectory"] == len(watch.commands) == c.relayed, 5.0), \
        (sim.commands, len(watch.commands), c)
    steps = int({kv.key: kv.value for kv in end.values}["steps"])
    # one suggestion at the reset and one per tick of the episode; each one that arrived (all but those sent
    # while DDS discovery was still matching the nodes) was relayed or counted as dropped
    assert sim.expert_suggestions == steps + 1 and sim.expert_errors == 0
    arrived = c.relayed + c.stale + c.out_of_order + c.rejected
    assert steps - 3 <= arrived <= steps + 1 and c.relayed >= 0.9 * (steps + 1)
    assert sim.commands["rejected"] == 0
    cmd = watch.commands[-1]
    assert list(cmd.joint_names) == ["joint1", "joint2", "joint3"] and len(cmd.points) == 1
    # the expert's suggestions stop once the episode is over (without auto_reset the bridge holds)
    n = sim.expert_suggestions
    sim._tick()
    assert sim.expert_suggestions == n


def test_teleop_float64_output_and_letting_go(loop):
    sim, tele, watch, ex = loop({"seed": 4, "expert": True, "task": "pusht"},
                                {"output_type": "float64_multi_array"})
    assert spin_until(ex, lambda: len(watch.arrays) >= 3 and sim.commands["forward"] >= 3, 20.0), \
        (tele.relay.counters, sim.commands)
    assert len(watch.arrays[-1].data) == 2 and sim.commands["rejected"] == 0
    tele.set_parameters([Parameter("enabled", value=False)])
    spin_until(ex, lambda: tele.relay.counters.disabled >= 3, 20.0)
    n = sim.commands["forward"]
    assert spin_until(ex, lambda: tele.relay.counters.disabled >= 6, 20.0)
    assert sim.commands["forward"] == n  # let go: nothing more reaches the bridge, which holds

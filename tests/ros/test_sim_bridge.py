"""sim_bridge_node in this process: topics of a ros2_control arm, both command types, reset, images."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from streamdp.ros_nodes.observation import decode_image
from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode

from .helpers import JOINTS, spin_until


class Probe(Node):
    def __init__(self, **kw):
        super().__init__("probe", **kw)
        self.js: list[JointState] = []
        self.targets: list[PointStamped] = []
        self.success: list[bool] = []
        self.dist: list[float] = []
        self.images: list[Image] = []
        q = QoSProfile(depth=50)
        self.create_subscription(JointState, "/joint_states", self.js.append, q)
        self.create_subscription(PointStamped, "/target", self.targets.append, q)
        self.create_subscription(Bool, "/task/success", lambda m: self.success.append(m.data), q)
        self.create_subscription(Float64, "/task/distance", lambda m: self.dist.append(m.data), q)
        self.create_subscription(Image, "/camera/top/image_raw", self.images.append, qos_profile_sensor_data)
        self.traj = self.create_publisher(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", q)
        self.fwd = self.create_publisher(Float64MultiArray, "/forward_position_controller/commands", q)


@pytest.fixture
def bridge(ros_context):
    made = []

    def build(**params):
        sim = SimBridgeNode(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        probe = Probe(context=ros_context)
        ex = SingleThreadedExecutor(context=ros_context)
        ex.add_node(sim)
        ex.add_node(probe)
        made.append((sim, probe, ex))
        return sim, probe, ex

    yield build
    for sim, probe, ex in made:
        ex.shutdown()
        sim.finalize()
        sim.destroy_node()
        probe.destroy_node()


def q_of(m: JointState) -> np.ndarray:
    return np.array([m.position[list(m.name).index(j)] for j in JOINTS])


def test_publishes_robot_topics_and_follows_forward_commands(bridge):
    sim, probe, ex = bridge(seed=5, max_episode_steps=100000)
    assert spin_until(ex, lambda: len(probe.js) >= 3 and probe.targets and probe.dist, 5.0)
    m = probe.js[-1]
    assert list(m.name) == JOINTS and len(m.velocity) == 3
    js_stamps = {(j.header.stamp.sec, j.header.stamp.nanosec) for j in probe.js}
    t = probe.targets[0].header.stamp
    assert (t.sec, t.nanosec) in js_stamps  # the target of a tick carries the joint state's stamp
    np.testing.assert_allclose([probe.targets[-1].point.x, probe.targets[-1].point.y], sim._u.target)
    goal = q_of(m) + np.array([0.3, -0.2, 0.1])
    probe.fwd.publish(Float64MultiArray(data=goal.tolist()))
    n = len(probe.js)
    assert spin_until(ex, lambda: len(probe.js) >= n + 20, 5.0)
    np.testing.assert_allclose(q_of(probe.js[-1]), goal, atol=0.02)
    assert sim.commands["forward"] == 1
    probe.fwd.publish(Float64MultiArray(data=[float("nan"), 0.0, 0.0]))  # never applied
    probe.fwd.publish(Float64MultiArray(data=[0.0, 0.0]))
    assert spin_until(ex, lambda: sim.commands["rejected"] == 2, 5.0)


def test_follows_joint_trajectories_by_name_and_time(bridge):
    sim, probe, ex = bridge(seed=6, max_episode_steps=100000)
    assert spin_until(ex, lambda: len(probe.js) >= 2, 5.0)
    q0 = q_of(probe.js[-1])
    goal = q0 + np.array([-0.25, 0.2, 0.15])
    msg = JointTrajectory()
    msg.header.stamp = sim.get_clock().now().to_msg()
    msg.joint_names = ["joint3", "joint1", "joint2"]  # any order: matched by name
    for i, frac in enumerate([0.5, 1.0]):
        q = q0 + frac * (goal - q0)
        pt = JointTrajectoryPoint(positions=[q[2], q[0], q[1]], velocities=[0.0] * 3)
        pt.time_from_start.nanosec = int(0.1e9 * (i + 1))
        msg.points.append(pt)
    probe.traj.publish(msg)
    n = len(probe.js)
    assert spin_until(ex, lambda: len(probe.js) >= n + 20, 5.0)
    np.testing.assert_allclose(q_of(probe.js[-1]), goal, atol=0.02)
    assert sim.commands["trajectory"] == 1


def test_reset_by_parameter(bridge):
    sim, probe, ex = bridge(seed=1, max_episode_steps=100000)
    assert spin_until(ex, lambda: len(probe.js) >= 2, 5.0)
    t0 = sim._u.target.copy()
    res = sim.set_parameters([Parameter("reset", value=1)])
    assert res[0].successful
    assert spin_until(ex, lambda: sim.episode == 1, 5.0)
    assert not np.allclose(sim._u.target, t0) and sim.steps <= 2


def test_image_mode_publishes_decodable_frames(bridge):
    sim, probe, ex = bridge(obs_mode="image", seed=2)
    assert spin_until(ex, lambda: len(probe.images) >= 2, 10.0)
    m = probe.images[-1]
    assert (m.height, m.width, m.encoding) == (96, 96, "rgb8")
    img = decode_image(m.encoding, m.height, m.width, m.step, m.data, (96, 96))
    assert img.shape == (96, 96, 3) and img.std() > 0  # a rendered scene, not a blank frame

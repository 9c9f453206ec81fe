"""Small ROS helpers for the tests: spinning with deadlines, a fake robot, a command recorder."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

JOINTS = ["joint1", "joint2", "joint3"]


def spin_until(executor: Any, cond: Callable[[], bool], timeout: float) -> bool:
    """Spin `executor` in this thread until cond() or `timeout` seconds; returns cond()."""
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
    return cond()


def spin_for(executor: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)


class FakeRobot(Node):
    """Publishes JointState (joints in a shuffled order, with an extra joint) and a target at `rate` Hz."""

    def __init__(self, q=(0.1, -0.2, 0.3), target=(0.3, 0.2), rate: float = 20.0, **kwargs: Any) -> None:
        super().__init__("fake_robot", **kwargs)
        self.q = np.asarray(q, dtype=float)
        self.target = target
        self.js = self.create_publisher(JointState, "/joint_states", QoSProfile(depth=10))
        self.tp = self.create_publisher(PointStamped, "/target", QoSProfile(depth=10))
        self.timer = self.create_timer(1.0 / rate, self.publish)
        self.published = 0

    def publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        m = JointState()
        m.header.stamp = stamp
        m.name = ["gripper", "joint3", "joint1", "joint2"]  # not the checkpoint order: matched by name
        m.position = [0.0, self.q[2], self.q[0], self.q[1]]
        m.velocity = [0.0, 0.0, 0.0, 0.0]
        self.js.publish(m)
        p = PointStamped()
        p.header.stamp = stamp
        p.point.x, p.point.y = self.target
        self.tp.publish(p)
        self.published += 1


class CommandRecorder(Node):
    """Records JointTrajectory and Float64MultiArray commands on the conventional controller topics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("command_recorder", **kwargs)
        self.trajectories: list[JointTrajectory] = []
        self.arrays: list[Float64MultiArray] = []
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                 self.trajectories.append, QoSProfile(depth=100))
        self.create_subscription(Float64MultiArray, "/forward_position_controller/commands", self.arrays.append,
                                 QoSProfile(depth=100))


# ------------------------------------------------------------------------------ message builders
def stamp_of(msg: Any, t: float) -> Any:
    """Set ``msg.header.stamp`` to `t` seconds; returns `msg`."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9))
    return msg


def joint_state(t: float, q, names=("gripper", "joint3", "joint1", "joint2")) -> JointState:
    """A JointState of joints 1..3 at `q` in a shuffled order with an extra joint (matched by name)."""
    by_name = {"joint1": q[0], "joint2": q[1], "joint3": q[2], "gripper": 0.0}
    m = JointState(name=list(names), position=[float(by_name[n]) for n in names],
                   velocity=[0.1 * float(by_name[n]) for n in names])
    return stamp_of(m, t)


def point(t: float, xy) -> PointStamped:
    p = PointStamped()
    p.point.x, p.point.y = float(xy[0]), float(xy[1])
    return stamp_of(p, t)


def image(t: float, pixels: np.ndarray):
    """An rgb8 sensor_msgs/Image of an HxWx3 uint8 array."""
    from sensor_msgs.msg import Image

    from streamdp.ros_nodes.observation import encode_rgb8

    h, w, step, data = encode_rgb8(pixels)
    return stamp_of(Image(height=h, width=w, encoding="rgb8", step=step, data=data), t)


def forward_command(values) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


def trajectory_command(t: float, positions, dt: float = 1e-3, names=("joint3", "joint1", "joint2")) -> JointTrajectory:
    """A one-point JointTrajectory (joints shuffled) reaching `positions` `dt` after its stamp `t`."""
    from trajectory_msgs.msg import JointTrajectoryPoint

    by_name = dict(zip(JOINTS, positions))
    pt = JointTrajectoryPoint(positions=[float(by_name.get(n, 0.0)) for n in names])
    pt.time_from_start.nanosec = int(dt * 1e9)
    return stamp_of(JointTrajectory(joint_names=list(names), points=[pt]), t)

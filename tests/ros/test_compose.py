"""`streamdp-bringup sim --compose` (issue 16, item 15): with both nodes in one process, the sim bridge keeps its
rate. Counted against a reference: a timer at the bridge's rate in this (separate) process ticks while the
joint states are counted, so a starved or dead bridge shows up as missing states, not as a slow clock.

The camera case is the one that stopped the bridge outright: on one MultiThreadedExecutor its timer ran on
whichever pool thread was free, while its GL context (made in its constructor) was current in the main
thread, so the first rendered step failed with EGL_BAD_ACCESS.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import spin_until

WINDOW = 60  # reference ticks (3 s at 20 Hz)


def _ros_value(v) -> str:
    return "[" + ", ".join(v) + "]" if isinstance(v, list) else str(v)


@pytest.mark.parametrize("mode", ["state", "image"])
def test_composed_bringup_keeps_the_sim_bridge_on_time(ros_env, ros_context, untrained_ckpt, untrained_image_ckpt,
                                                        tmp_path, mode):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory

    params = {"policy_node.checkpoint": str(untrained_ckpt), "policy_node.warmup_chunks": 1,
              "sim_bridge.max_episode_steps": 100000}
    if mode == "image":
        params.update({"policy_node.checkpoint": str(untrained_image_ckpt), "sim_bridge.obs_mode": "image",
                       "policy_node.state_layout": ["joint_state.position", "joint_state.velocity"],
                       "policy_node.extra_state_names": [], "policy_node.extra_state_topics": [],
                       "policy_node.extra_state_fields": [], "policy_node.camera_names": ["top"],
                       "policy_node.camera_topics": ["/camera/top/image_raw"]})
    counts = {"js": 0, "img": 0, "cmd": 0, "ref": 0}
    stamps: list[float] = []
    watch = Node("compose_watch", context=ros_context)

    def on_js(m: JointState) -> None:
        counts["js"] += 1
        stamps.append(m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec)

    watch.create_subscription(JointState, "/joint_states", on_js, QoSProfile(depth=100))
    watch.create_subscription(Image, "/camera/top/image_raw", lambda _m: counts.__setitem__("img", counts["img"] + 1),
                              qos_profile_sensor_data)  # as the bridge publishes them
    watch.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                              lambda _m: counts.__setitem__("cmd", counts["cmd"] + 1), QoSProfile(depth=100))
    watch.create_timer(0.05, lambda: counts.__setitem__("ref", counts["ref"] + 1))  # the bridge's 20 Hz
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(watch)
    args = [a for k, v in params.items() for a in ("-p", f"{k}:={_ros_value(v)}")]
    proc = subprocess.Popen([sys.executable, "-m", "streamdp.ros_nodes.bringup", "sim", "--compose", "--duration",
                             "120", *args], env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # start counting once the policy streams (start-up: checkpoint load, warm-up, activation)
        assert spin_until(ex, lambda: counts["cmd"] >= 5 or proc.poll() is not None, 90.0), counts
        assert proc.poll() is None, f"bring-up exited: {proc.communicate()[0][-3000:]}"
        start = dict(counts)
        n0 = len(stamps)
        assert spin_until(ex, lambda: counts["ref"] - start["ref"] >= WINDOW or proc.poll() is not None, 30.0)
        got = {k: counts[k] - start[k] for k in counts}
        assert proc.poll() is None, f"bring-up exited: {proc.communicate()[0][-3000:]}"
    finally:
        proc.send_signal(2)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        ex.shutdown()
        watch.destroy_node()
    # one joint state per reference tick (a couple of ticks of slack at the window's two ends), in order
    assert abs(got["js"] - got["ref"]) <= 3, (got, out[-3000:])
    assert all(b > a for a, b in zip(stamps[n0:], stamps[n0 + 1:])), "joint states out of order"
    if mode == "image":
        assert abs(got["img"] - got["ref"]) <= 3, got  # a camera frame with every step
    assert abs(got["cmd"] - got["ref"]) <= 3, got  # and the policy node keeps its rate beside it
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]

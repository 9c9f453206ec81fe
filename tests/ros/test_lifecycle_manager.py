"""policy_node as a process driven the way a lifecycle manager drives it: configure, then activate at once.

The robot (a FakeRobot in this process) only starts publishing after the activate request is out, so the
node's fresh subscription cannot have heard a JointState when the request arrives: activation must wait
for it (``activate_timeout_s``), then seed from it. Past the bound it fails with the message saying what
is missing. Counts and order only; no time is asserted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import QoSProfile
from trajectory_msgs.msg import JointTrajectory

from streamdp.ros_nodes import bringup
from streamdp.ros_nodes.testing import log_tail, node_processes

from .helpers import JOINTS, FakeRobot, spin_until

pytestmark = pytest.mark.slow


class Manager(FakeRobot):
    """The robot's topics plus what a lifecycle manager uses: change_state / get_state of /policy_node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(q=(0.3, -0.4, 0.5), **kwargs)
        self.timer.cancel()  # silent until the test says so
        self.change = self.create_client(ChangeState, "/policy_node/change_state")
        self.get = self.create_client(GetState, "/policy_node/get_state")
        self.commands: list[JointTrajectory] = []
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", self.commands.append,
                                 QoSProfile(depth=100))

    def request(self, transition: int) -> Any:
        req = ChangeState.Request()
        req.transition.id = transition
        return self.change.call_async(req)


def test_configure_then_activate_back_to_back_over_dds(ros_env, untrained_ckpt, tmp_path):
    over = {"policy_node": {"checkpoint": str(untrained_ckpt), "autostart": False, "warmup_chunks": 1,
                            "activate_timeout_s": 3.0, "limits.max_delta": [10.0] * 3,
                            "limits.max_velocity": [200.0] * 3, "limits.max_acceleration": [1e5] * 3}}
    desc = next(d for d in bringup.describe("sim", overrides=over) if d.name == "policy_node")
    with node_processes([desc], tmp_path, Manager) as (mgr, ex, procs):
        def call(fut: Any, what: str) -> Any:
            assert spin_until(ex, lambda: fut.done() or procs[0].poll() is not None, 120.0), what
            assert fut.done(), f"{what}: the node exited\n{log_tail(tmp_path)}"
            return fut.result()

        assert spin_until(ex, mgr.change.service_is_ready, 60.0), log_tail(tmp_path)
        assert call(mgr.request(Transition.TRANSITION_CONFIGURE), "configure").success, log_tail(tmp_path)
        activating = mgr.request(Transition.TRANSITION_ACTIVATE)  # at once, as a lifecycle manager does
        sent = mgr.published
        assert sent == 0
        mgr.timer.reset()  # the robot speaks only now: the node's subscription has heard nothing yet
        assert call(activating, "activate").success, log_tail(tmp_path)
        assert mgr.published > sent  # it waited for a joint state published after the request
        assert call(mgr.get.call_async(GetState.Request()), "get_state").current_state.label == "active"
        assert spin_until(ex, lambda: len(mgr.commands) >= 5, 60.0), log_tail(tmp_path)
        first = mgr.commands[0]
        assert list(first.joint_names) == JOINTS
        np.testing.assert_allclose(first.points[0].positions, mgr.q, atol=1e-9)  # seeded from the measured state

        # Past the bound it fails with the message of what is missing: after a deactivation only a joint state
        # measured since then seeds, and the robot has gone silent.
        assert call(mgr.request(Transition.TRANSITION_DEACTIVATE), "deactivate").success
        mgr.timer.cancel()
        assert not call(mgr.request(Transition.TRANSITION_ACTIVATE), "activate without input").success
        assert call(mgr.get.call_async(GetState.Request()), "get_state").current_state.label == "inactive"
        assert spin_until(ex, lambda: "refusing to activate" in log_tail(tmp_path), 10.0)
        assert "measured since the deactivation" in log_tail(tmp_path)

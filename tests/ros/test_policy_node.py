"""policy_node over real rclpy/DDS in this process: lifecycle, validation refusals, outputs, parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from streamdp.ros_nodes.bringup import default_params
from streamdp.ros_nodes.policy_node import PolicyNode

from .helpers import JOINTS, CommandRecorder, FakeRobot, spin_for, spin_until

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


# The mechanics tests drive random-weight policies whose chunks jump by radians: run them with step and
# acceleration limits far above those jumps (sim.yaml's real ones would clamp and latch a hold at once).
# The filter itself is judged in tests/safety and, on the running nodes, in tests/faults.
LOOSE_LIMITS = {"limits.max_delta": [10.0] * 3, "limits.max_velocity": [200.0] * 3,
                "limits.max_acceleration": [1e5] * 3}


def make_policy_node(ctx, ckpt, params_file=None, **params):
    """PolicyNode configured from a parameter YAML (default: the shipped sim.yaml) plus overrides."""
    args = ["--ros-args", "--params-file", str(params_file or default_params("sim")), "-p", f"checkpoint:={ckpt}",
            "-p", "autostart:=false", "-p", "warmup_chunks:=1"]
    for k, v in {**(LOOSE_LIMITS if params_file is None else {}), **params}.items():
        args += ["-p", f"{k}:={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return PolicyNode(context=ctx, cli_args=args, use_global_arguments=False)


@pytest.fixture
def rig(ros_context):
    nodes = []

    def build(ckpt, **params):
        node = make_policy_node(ros_context, ckpt, **params)
        robot, rec = FakeRobot(context=ros_context), CommandRecorder(context=ros_context)
        ex = SingleThreadedExecutor(context=ros_context)
        for n in (node, robot, rec):
            ex.add_node(n)
        nodes.extend([node, robot, rec, ex])
        return node, robot, rec, ex

    yield build
    for n in nodes:
        if isinstance(n, PolicyNode) and n.lifecycle_state in ("active", "inactive"):
            n.trigger_shutdown()
    for n in nodes:
        if isinstance(n, SingleThreadedExecutor):
            n.shutdown()
        else:
            n.destroy_node()


def test_lifecycle_configure_activate_deactivate_cleanup(rig, untrained_ckpt):
    node, robot, rec, ex = rig(untrained_ckpt, activate_timeout_s=0.2)
    robot.timer.cancel()  # no joint state yet
    assert node.trigger_configure() == SUCCESS, node.configure_error
    assert node.lifecycle_state == "inactive" and node.policy is not None
    spin_for(ex, 0.3)
    assert rec.trajectories == []  # inactive: nothing is published
    # Activation needs the measured joint state to seed the buffer: it waits for one (here nothing can arrive:
    # this thread spins the executor), then refuses.
    assert "no JointState" in node.activation_blocker()
    assert node.trigger_activate() == FAILURE
    assert "no JointState" in node.activate_error and "activate_timeout_s" in node.activate_error
    robot.timer.reset()
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    assert node.trigger_activate() == SUCCESS, node.activate_error
    assert spin_until(ex, lambda: len(rec.trajectories) >= 30, 20.0), node.stats()
    first = rec.trajectories[0]
    assert list(first.joint_names) == JOINTS
    # The first command starts at the measured joint state (matched by name from a shuffled message).
    np.testing.assert_allclose(first.points[0].positions, robot.q, atol=1e-9)
    st = node.stats()
    assert st["chunks"] >= 1 and st["commands_published"] == st["ticks"]
    for m in rec.trajectories:
        t = [p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in m.points]
        assert np.all(np.diff(t) > 0) and t[0] > 0
        assert all(len(p.velocities) == 3 and len(p.positions) == 3 for p in m.points)
    assert any(len(m.points) > 1 for m in rec.trajectories)  # queued look-ahead actions after a chunk
    assert node.trigger_deactivate() == SUCCESS
    n = node.commands_published  # the final hold included
    assert spin_until(ex, lambda: len(rec.trajectories) >= n, 10.0)  # every command arrived, however slow
    last = rec.trajectories[-1]
    assert len(last.points) == 1 and np.allclose(last.points[0].velocities, 0.0)  # the final hold
    np.testing.assert_allclose(last.points[0].positions, rec.trajectories[-2].points[0].positions)
    spin_for(ex, 0.3)
    assert len(rec.trajectories) == n  # deactivated: holds, publishes nothing new
    assert node.trigger_cleanup() == SUCCESS
    assert node.lifecycle_state == "unconfigured" and node.policy is None
    assert node.trigger_configure() == SUCCESS  # configurable again after cleanup


def test_first_command_starts_at_the_arm_when_it_moved_during_the_activation(rig, untrained_ckpt):
    """A move that races with the activation (the sim bridge resetting while a restarted node activates by
    itself) must not leave the node streaming from where the arm was: the first command starts where it is."""
    node, robot, rec, ex = rig(untrained_ckpt, **{"limits.max_delta": [0.3] * 3})
    assert node.trigger_configure() == SUCCESS
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    seed = robot.q.copy()
    assert node.trigger_activate() == SUCCESS
    np.testing.assert_allclose(node.activation_seed, seed)
    robot.q = seed + np.array([0.8, -1.2, 0.5])  # reset before the first control tick
    assert spin_until(ex, lambda: len(rec.trajectories) >= 1, 10.0)
    first = np.asarray(rec.trajectories[0].points[0].positions)
    assert np.all(np.abs(first - robot.q) <= 0.3 + 1e-9), (first, robot.q, seed)
    np.testing.assert_allclose(node.activation_seed, robot.q)


def test_reactivation_seeds_only_from_a_joint_state_measured_after_the_deactivation(rig, untrained_ckpt):
    """While inactive the arm may be moved (or the sim reset): the joint state held from before the deactivation
    is not a seed, however fresh."""
    node, robot, rec, ex = rig(untrained_ckpt, activate_timeout_s=0.2, max_obs_age_s=5.0)
    assert node.trigger_configure() == SUCCESS
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    assert node.trigger_activate() == SUCCESS
    assert spin_until(ex, lambda: len(rec.trajectories) >= 5, 10.0)
    robot.timer.cancel()
    assert node.trigger_deactivate() == SUCCESS
    assert "measured since the deactivation" in node.activation_blocker()  # the old sample is still fresh
    assert node.trigger_activate() == FAILURE and "since the deactivation" in node.activate_error
    robot.q = robot.q + 0.5  # moved while inactive
    robot.timer.reset()
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    n = len(rec.trajectories)
    assert node.trigger_activate() == SUCCESS, node.activate_error
    assert spin_until(ex, lambda: len(rec.trajectories) > n, 5.0)
    np.testing.assert_allclose(rec.trajectories[n].points[0].positions, robot.q, atol=1e-9)  # the new measurement


def test_lifecycle_services(ros_context, untrained_ckpt):
    node = make_policy_node(ros_context, untrained_ckpt)
    client_node = FakeRobot(context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(node)
    ex.add_node(client_node)
    try:
        change = client_node.create_client(ChangeState, "/policy_node/change_state")
        get = client_node.create_client(GetState, "/policy_node/get_state")
        assert spin_until(ex, lambda: change.service_is_ready() and get.service_is_ready(), 10.0)

        def call(client, req):
            fut = client.call_async(req)
            assert spin_until(ex, fut.done, 60.0)
            return fut.result()

        assert call(get, GetState.Request()).current_state.label == "unconfigured"
        req = ChangeState.Request()
        req.transition.id = Transition.TRANSITION_CONFIGURE
        assert call(change, req).success
        assert call(get, GetState.Request()).current_state.label == "inactive"
        assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
        req.transition.id = Transition.TRANSITION_ACTIVATE
        assert call(change, req).success
        assert call(get, GetState.Request()).current_state.label == "active"
        req.transition.id = Transition.TRANSITION_DEACTIVATE
        assert call(change, req).success
        req.transition.id = Transition.TRANSITION_CLEANUP
        assert call(change, req).success
        assert call(get, GetState.Request()).current_state.label == "unconfigured"
    finally:
        ex.shutdown()
        node.destroy_node()
        client_node.destroy_node()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"joint_names": ["shoulder", "elbow", "wrist"]}, "joint names/order"),
        ({"joint_names": ["joint2", "joint1", "joint3"]}, "joint names/order"),
        ({"state_layout": ["joint_state.position", "joint_state.velocity"]}, "state dim 6 != checkpoint 8"),
        ({"control_rate_hz": 30.0}, "fps 30.0 != checkpoint 20.0"),
        ({"camera_names": ["wrist"], "camera_topics": ["/wrist/image_raw"]}, "cameras ['wrist'] != checkpoint []"),
        ({"output_type": "torque"}, "output_type must be one of"),
        ({"sampler": "magic"}, "sampler must be one of"),
    ],
)
def test_refuses_to_configure_on_mismatch(ros_context, untrained_ckpt, params, message):
    node = make_policy_node(ros_context, untrained_ckpt, **params)
    try:
        assert node.trigger_configure() == FAILURE
        assert message in node.configure_error
        assert node.lifecycle_state == "unconfigured" and node.policy is None
        assert node.stats()["configure_error"] == node.configure_error  # also on /diagnostics
    finally:
        node.destroy_node()


def test_refuses_missing_checkpoint(ros_context, tmp_path):
    node = make_policy_node(ros_context, tmp_path / "nope")
    try:
        assert node.trigger_configure() == FAILURE
        assert "nope" in node.configure_error
    finally:
        node.destroy_node()


def test_float64_multi_array_output_and_overrides(rig, untrained_ckpt):
    node, robot, rec, ex = rig(untrained_ckpt, output_type="float64_multi_array", sampler="ddim",
                               num_inference_steps=4)
    assert node.trigger_configure() == SUCCESS, node.configure_error
    assert node.policy.config.sampler == "ddim" and node.policy.config.num_inference_steps == 4
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    assert node.trigger_activate() == SUCCESS
    assert spin_until(ex, lambda: len(rec.arrays) >= 20 and node.chunks >= 2, 20.0), node.stats()
    assert rec.trajectories == []
    assert all(len(m.data) == 3 and np.all(np.isfinite(m.data)) for m in rec.arrays)
    np.testing.assert_allclose(rec.arrays[0].data, robot.q)
    assert node.stats()["nfe_per_chunk_last"] == 4


def test_command_filter_seam_and_nan_guard(rig, untrained_ckpt):
    node, robot, rec, ex = rig(untrained_ckpt)
    seen = []

    def nan_filter(points, previous):
        seen.append(points.shape)
        out = points.copy()
        out[0, 0] = np.nan  # a broken filter: the node must never publish this
        return out

    node.command_filter = nan_filter
    assert node.trigger_configure() == SUCCESS
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    assert node.trigger_activate() == SUCCESS
    assert spin_until(ex, lambda: len(rec.trajectories) >= 10, 10.0)
    assert seen and all(s[1] == 3 for s in seen)
    assert all(np.all(np.isfinite(p.positions)) for m in rec.trajectories for p in m.points)
    np.testing.assert_allclose(rec.trajectories[-1].points[0].positions, robot.q)  # held at the measured state
    assert node.stats()["nonfinite_outputs"] == len(seen)  # every broken output counted, none published


def test_stale_joint_state_holds(rig, untrained_ckpt):
    node, robot, rec, ex = rig(untrained_ckpt, max_obs_age_s=0.15)
    assert node.trigger_configure() == SUCCESS
    assert spin_until(ex, lambda: not node.activation_blocker(), 5.0), node.activation_blocker()
    assert node.trigger_activate() == SUCCESS
    assert spin_until(ex, lambda: node.chunks >= 1, 10.0)
    robot.timer.cancel()  # the robot goes silent
    # Counted in ticks, not seconds: the queue runs out within Ta + delay ticks of the last fresh sample
    # (max_obs_age_s = 3 ticks), after which every command is a hold.
    start = node.stats()["ticks"]
    assert spin_until(ex, lambda: node.stats()["ticks"] >= start + 20, 30.0)
    n = len(rec.trajectories)
    assert spin_until(ex, lambda: len(rec.trajectories) >= n + 5, 30.0)
    tail = rec.trajectories[n:]
    assert all(len(m.points) == 1 for m in tail)  # only holds once the queue is empty
    assert node.stats()["stale_ticks"] >= 10


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("config", ["sim", "real_arm"])
def test_shipped_parameter_yaml_declares_only_known_parameters(ros_context, untrained_ckpt, config):
    path = default_params(config)
    doc = yaml.safe_load(Path(path).read_text())
    node = make_policy_node(ros_context, untrained_ckpt, params_file=path)
    try:
        for name, value in _flat(doc["policy_node"]["ros__parameters"]):
            assert node.has_parameter(name), f"{path}: unknown policy_node parameter {name!r}"
            if name != "checkpoint" and name != "autostart" and name != "warmup_chunks":
                assert node.get_parameter(name).value == value or list(node.get_parameter(name).value) == value
    finally:
        node.destroy_node()
    if config == "sim":
        from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode

        sim = SimBridgeNode(context=ros_context, cli_args=["--ros-args", "--params-file", str(path)],
                            use_global_arguments=False)
        try:
            for name, _ in _flat(doc["sim_bridge"]["ros__parameters"]):
                assert sim.has_parameter(name), f"{path}: unknown sim_bridge parameter {name!r}"
        finally:
            sim.finalize()
            sim.destroy_node()


IMAGE_PARAMS = dict(state_layout=["joint_state.position", "joint_state.velocity"], camera_names=["top"],
                    camera_topics=["/camera/top/image_raw"], max_image_age_s=0.5, max_obs_age_s=0.5)


def test_image_policy_on_the_image_sim(ros_context, untrained_image_ckpt):
    """Camera frames from the sim bridge (sensor-data QoS, rgb8) reach an image policy and drive chunks."""
    from rclpy.parameter import Parameter

    from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode

    sim = SimBridgeNode(context=ros_context, parameter_overrides=[Parameter("obs_mode", value="image"),
                                                                  Parameter("max_episode_steps", value=100000)])
    node = make_policy_node(ros_context, untrained_image_ckpt, **IMAGE_PARAMS)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(sim)
    ex.add_node(node)
    try:
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert spin_until(ex, lambda: not node.activation_blocker(), 10.0), node.activation_blocker()
        assert node.trigger_activate() == SUCCESS, node.activate_error
        assert spin_until(ex, lambda: node.chunks >= 2, 60.0), node.stats()
        st = node.stats()
        assert st["image_rejected"] == 0 and st["actions_sent"] >= 1
        assert sim.commands["trajectory"] >= 1  # the sim follows the policy's commands
    finally:
        if node.lifecycle_state == "active":
            node.trigger_shutdown()
        ex.shutdown()
        node.destroy_node()
        sim.finalize()
        sim.destroy_node()


def test_wrong_image_size_is_rejected_and_activation_refused(rig, untrained_image_ckpt):
    """Frames of the wrong size are rejected and counted, never replaced by a zero image: the camera never
    delivers, so activation (which waits for every camera) is refused, naming it, and nothing is published."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    node, robot, rec, ex = rig(untrained_image_ckpt, **IMAGE_PARAMS, activate_timeout_s=0.2)
    cam = robot.create_publisher(Image, "/camera/top/image_raw", qos_profile_sensor_data)

    def publish_small():
        m = Image(height=32, width=32, encoding="rgb8", step=96)
        m.header.stamp = robot.get_clock().now().to_msg()
        m.data = bytes(32 * 96)
        cam.publish(m)

    robot.create_timer(0.05, publish_small)
    assert node.trigger_configure() == SUCCESS, node.configure_error
    assert spin_until(ex, lambda: node.image_rejected >= 5 and node.sync.joint_positions is not None, 10.0)
    assert "no image from camera 'top' yet" in node.activation_blocker()
    assert node.trigger_activate() == FAILURE
    assert "camera 'top'" in node.activate_error
    spin_for(ex, 0.3)
    assert rec.trajectories == [] and node.stats()["chunks"] == 0


def test_out_of_order_and_duplicate_joint_states_are_dropped(rig, untrained_ckpt):
    from sensor_msgs.msg import JointState

    node, robot, rec, ex = rig(untrained_ckpt)
    robot.timer.cancel()
    assert node.trigger_configure() == SUCCESS
    now = robot.get_clock().now()

    def js(stamp, q):
        m = JointState(name=JOINTS, position=list(q), velocity=[0.0] * 3)
        m.header.stamp = stamp.to_msg()
        return m

    from rclpy.duration import Duration

    for stamp, q in [(now, [1.0, 1.0, 1.0]), (now, [2.0, 2.0, 2.0]), (now - Duration(seconds=0.1), [3.0, 3.0, 3.0])]:
        robot.js.publish(js(stamp, q))
    assert spin_until(ex, lambda: node.sync.counters.accepted + node.sync.counters.duplicate
                      + node.sync.counters.out_of_order >= 3, 5.0)
    st = node.stats()
    assert st["duplicate_drops"] == 1 and st["out_of_order_drops"] == 1
    np.testing.assert_allclose(node.sync.joint_positions, [1.0, 1.0, 1.0])

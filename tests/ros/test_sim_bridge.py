"""sim_bridge_node in this process: topics of a ros2_control arm, both command types, reset, images."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from geometry_msgs.msg import PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
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


# ------------------------------------------------------------------------------------------ every task
class AdapterProbe(Node):
    """Subscribes to a sim robot's topics and feeds them to the policy node's observation adapter, the way
    policy_node's callbacks do (joints by name, PointStamped fields, decoded images)."""

    def __init__(self, robot, **kw):
        super().__init__("adapter_probe", **kw)
        from streamdp.ros_nodes.observation import ExtraState, ObservationSync, StateLayout

        p = robot.policy_params()
        extras = [ExtraState(n, t, f) for n, t, f in zip(p["extra_state_names"], p["extra_state_topics"],
                                                       p["extra_state_fields"])]
        self.sync = ObservationSync(StateLayout(tuple(p["joint_names"]), tuple(p["state_layout"]), tuple(extras)),
                                    p["camera_names"], max_age=1e9)
        self.stamps: dict[str, list[float]] = {"joint_states": []}
        self.points: dict[str, list[PointStamped]] = {e.name: [] for e in robot.extras}
        q = QoSProfile(depth=50)
        self.create_subscription(JointState, "/joint_states", self._js, q)
        for e in robot.extras:
            self.create_subscription(PointStamped, e.topic, lambda m, e=e: self._extra(e, m), q)
        for cam in robot.cameras:
            self.stamps["image:" + cam] = []
            self.create_subscription(Image, robot.camera_topic(cam), lambda m, c=cam: self._image(c, m),
                                     qos_profile_sensor_data)
        self.fwd = self.create_publisher(Float64MultiArray, "/forward_position_controller/commands", q)
        self.used = {e.name: e for e in extras}

    @staticmethod
    def stamp(m) -> float:
        return m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec

    def _js(self, m):
        self.sync.add_joint_state(self.stamp(m), m.name, m.position, m.velocity, m.effort)
        self.stamps["joint_states"].append(self.stamp(m))

    def _extra(self, e, m):
        self.points[e.name].append(m)
        if e.name in self.used:
            self.sync.add_extra(e.name, self.stamp(m), [getattr(m.point, c) for c in self.used[e.name].fields])

    def _image(self, cam, m):
        self.sync.add_image(cam, self.stamp(m), decode_image(m.encoding, m.height, m.width, m.step, m.data))
        self.stamps["image:" + cam].append(self.stamp(m))

    def new_tick(self, seen: int) -> bool:
        """A joint state after the first `seen` ones has arrived, and every other stream of its tick too."""
        js = self.stamps["joint_states"]
        if len(js) <= seen:
            return False
        stamp = js[-1]
        return all(s and s[-1] == stamp for s in self.stamps.values()) and \
            all(v and self.stamp(v[-1]) == stamp for v in self.points.values())


def check_ticks_rebuild_the_observation(bridge, ticks: int = 3, **params):
    """Step the bridge by hand; each tick's messages, through the adapter, give the env's observation exactly."""
    sim, _, ex = bridge(**params)
    sim.timer.cancel()
    probe = AdapterProbe(sim.robot, context=sim.context)
    ex.add_node(probe)
    rebuilt = 0
    for _ in range(ticks):
        seen = len(probe.stamps["joint_states"])
        sim._tick()
        want = {k: np.array(v) for k, v in sim.obs.items()}
        assert spin_until(ex, lambda n=seen: probe.new_tick(n), 10.0), {k: len(v) for k, v in probe.stamps.items()}
        stamp = probe.stamps["joint_states"][-1]
        res = probe.sync.sample(stamp)
        assert res.obs is not None, res.reason
        assert sorted(res.obs) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(res.obs[k], want[k], err_msg=k)  # bit for bit, as the dataset has it
        rebuilt += 1
    probe.destroy_node()
    return sim, probe, ex, rebuilt


@pytest.mark.parametrize("mode", ["state", "image"])
def test_pusht_bridge_observation_is_the_dataset_observation(bridge, mode):
    sim, probe, ex, rebuilt = check_ticks_rebuild_the_observation(bridge, task="pusht", obs_mode=mode, seed=3)
    assert rebuilt == 3 and sim.robot.joint_names == ("agent.x", "agent.y")
    goal = sim.robot.read_joints(sim._u)[0] + np.array([20.0, -15.0])  # a position target in pixels
    pub = sim.create_publisher(Float64MultiArray, "/forward_position_controller/commands", QoSProfile(depth=10))
    pub.publish(Float64MultiArray(data=goal.tolist()))
    assert spin_until(ex, lambda: sim.commands["forward"] == 1, 5.0)
    for _ in range(10):
        sim._tick()
    np.testing.assert_allclose(sim.robot.read_joints(sim._u)[0], goal, atol=1.0)  # the agent went there


def test_arm_image_bridge_observation_is_the_dataset_observation(bridge):
    sim, *_, rebuilt = check_ticks_rebuild_the_observation(bridge, obs_mode="image", seed=4)
    assert rebuilt == 3


@pytest.mark.slow
def test_libero_bridge_observation_cameras_and_delta_commands(bridge):
    """LIBERO (MuJoCo, EGL): both cameras and the 8-D state through the adapter; a delta command acts once."""
    sim, probe, ex, rebuilt = check_ticks_rebuild_the_observation(bridge, task="libero", obs_mode="image", seed=0,
                                                                   ticks=2)
    assert rebuilt == 2 and sorted(sim.robot.cameras) == ["agentview", "wrist"]
    u = sim._u
    obj = probe.points["object"][-1].point
    np.testing.assert_allclose([obj.x, obj.y, obj.z], u.body_pos(u.object_name))  # privileged, published too
    pub = sim.create_publisher(Float64MultiArray, "/forward_position_controller/commands", QoSProfile(depth=10))
    pub.publish(Float64MultiArray(data=[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]))  # up at full speed, gripper open
    assert spin_until(ex, lambda: sim.commands["forward"] == 1, 5.0)
    sim._tick()
    np.testing.assert_array_equal(sim._applied, [0, 0, 1, 0, 0, 0, -1])
    sim._tick()
    np.testing.assert_array_equal(sim._applied, [0, 0, 0, 0, 0, 0, -1])  # acted once, then stopped


def test_resets_are_coordinated_with_the_policy_node(ros_context, bundled_ckpt):
    """With `policy_node` set (config/ros/sim.yaml), every automatic reset deactivates the policy node, resets,
    and activates it on the new state: each activation's first command is the new episode's start (a reset is
    never a step to be clamped), and every command, chained per activation, passes the safety oracle."""
    from streamdp.ros_nodes.bringup import default_params
    from streamdp.ros_nodes.safety_oracle import Bounds, check_commands

    from .test_policy_node import make_policy_node

    over = {"seed": 3, "max_episode_steps": 30, "policy_node": "policy_node"}
    sim = SimBridgeNode(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in over.items()])
    starts: list[np.ndarray] = []
    reset_env = sim._reset_env

    def recording_reset() -> None:
        reset_env()
        starts.append(np.asarray(sim._u.data.qpos[:3], dtype=float).copy())

    sim._reset_env = recording_reset
    node = make_policy_node(ros_context, bundled_ckpt, params_file=default_params("sim"))
    ex = SingleThreadedExecutor(context=ros_context)  # one thread: an activation takes its inputs itself
    ex.add_node(sim)
    ex.add_node(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
        node.command_log = []
        assert spin_until(ex, lambda: not node.activation_blocker(), 10.0), node.activation_blocker()
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        seeds = {node.segment: node.activation_seed.copy()}
        resets = 3
        assert spin_until(ex, lambda: sim.handshake.counts["activated"] >= resets and node.lifecycle_state == "active"
                          and node.command_log[-1]["segment"] == node.segment, 60.0), sim.handshake.counts
        sim.timer.cancel()
        counts = dict(sim.handshake.counts)
        assert counts["deactivated"] == counts["activated"] >= resets and counts["timeouts"] == 0, counts
        assert node.segment == 1 + counts["activated"]
        log = list(node.command_log)
        firsts = {}
        for e in log:
            firsts.setdefault(e["segment"], e["points"][0])
        for seg in range(2, node.segment + 1):
            start = starts[seg - 2]  # activation seg (>= 2) followed reset number seg - 1
            np.testing.assert_allclose(firsts[seg], start, atol=1e-6)  # seeded from the new episode's state
            seeds[seg] = start
        raw = yaml.safe_load(default_params("sim").read_text())["policy_node"]["ros__parameters"]["limits"]
        rep = check_commands(log, Bounds.from_params(raw, 3, node.period), seeds)  # the raw numbers of sim.yaml
        assert rep.commands == len(log) and rep.unsafe == 0, rep.violations[:3]
        assert node.fault == "" and not node.safety.latched
    finally:
        if node.lifecycle_state in ("active", "inactive"):
            node.trigger_shutdown()
        ex.shutdown()
        node.destroy_node()
        sim.finalize()
        sim.destroy_node()

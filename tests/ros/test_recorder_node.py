"""streamdp-record's node over real rclpy/DDS in this process: topics in, std_srvs services, the LeRobot dataset it
writes read back with lerobot, the same arrays as the policy node's observation, and a training run on it."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from streamdp.policy.config import ConfigError
from streamdp.ros_nodes.recorder_node import RecorderNode

from .helpers import JOINTS, forward_command, image, joint_state, point, spin_for, spin_until, trajectory_command
from .test_policy_node import IMAGE_PARAMS, make_policy_node

ARM_STATE = {"state_layout": ["joint_state.position", "joint_state.velocity", "target"],
             "extra_state_names": ["target"], "extra_state_topics": ["/target"], "extra_state_fields": ["xy"]}


def make_recorder(ctx, **params) -> RecorderNode:
    args = ["--ros-args"]
    for k, v in {"joint_names": list(JOINTS), **params}.items():
        args += ["-p", f"{k}:={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return RecorderNode(context=ctx, cli_args=args, use_global_arguments=False)


class Teleop(Node):
    """The robot and its teleoperator: joint states, target, camera and commands, published on demand."""

    def __init__(self, **kwargs) -> None:
        super().__init__("teleop_robot", **kwargs)
        self.js = self.create_publisher(JointState, "/joint_states", QoSProfile(depth=10))
        self.target = self.create_publisher(type(point(0, (0, 0))), "/target", QoSProfile(depth=10))
        self.cam = self.create_publisher(Image, "/camera/top/image_raw", qos_profile_sensor_data)
        self.forward = self.create_publisher(Float64MultiArray, "/teleop/commands", QoSProfile(depth=10))
        self.traj = self.create_publisher(JointTrajectory, "/teleop/joint_trajectory", QoSProfile(depth=10))

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9


def call(ex, node: Node, service: str) -> Trigger.Response:
    client = node.create_client(Trigger, service)
    try:
        assert client.wait_for_service(timeout_sec=10.0), service
        future = client.call_async(Trigger.Request())
        assert spin_until(ex, future.done, 30.0), f"{service} did not answer"
        return future.result()
    finally:
        node.destroy_client(client)


@pytest.fixture
def rig(ros_context):
    made: list = []

    def build(*nodes):
        ex = SingleThreadedExecutor(context=ros_context)
        for n in nodes:
            ex.add_node(n)
        made.append((ex, nodes))
        return ex

    yield build
    for ex, nodes in made:
        ex.shutdown()
        for n in nodes:
            if isinstance(n, RecorderNode):
                n.finalize()
            n.destroy_node()


def episode_cli(ex, action: str) -> tuple[int, str, str]:
    """``streamdp-episode <action>`` as a child process while `ex` spins here (the recorder answers)."""
    import os
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from streamdp.ros_nodes.rosenv import with_ros_library_path

    done = threading.Event()
    spinner = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.02) for _ in iter(done.is_set, True)])
    spinner.start()
    try:
        r = subprocess.run([str(Path(sys.executable).parent / "streamdp-episode"), action, "--timeout", "20"],
                           capture_output=True, text=True, timeout=60, env=with_ros_library_path(os.environ))
    finally:
        done.set()
        spinner.join()
    return r.returncode, r.stdout, r.stderr


def read_back(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"local/{root.name}", root=root)


def test_bad_parameters_and_an_existing_dataset_are_refused_at_start(ros_context, tmp_path):
    with pytest.raises(ConfigError, match="control_rate_hz"):
        make_recorder(ros_context, root=str(tmp_path / "x"))
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text("{}")
    with pytest.raises(FileExistsError, match="resume=true"):
        make_recorder(ros_context, root=str(tmp_path / "ds"), control_rate_hz=20)


def test_recorded_frames_are_the_policy_nodes_observations(rig, ros_context, tmp_path, untrained_image_ckpt):
    """The same JointState and Image messages reach a configured policy node and the recorder over DDS: both
    adapters give identical arrays, and the dataset (read back by lerobot) holds exactly those arrays, with
    the command that followed each observation as its action."""
    root = tmp_path / "demos"
    rec = make_recorder(ros_context, root=str(root), control_rate_hz=10, state_layout=IMAGE_PARAMS["state_layout"],
                        camera_names=["top"], camera_topics=["/camera/top/image_raw"], use_videos=False,
                        command_topic="/teleop/commands", command_type="float64_multi_array", min_episode_frames=5,
                        max_obs_age_s=1.0, max_image_age_s=1.0)  # this test paces itself: no staleness here
    policy = make_policy_node(ros_context, untrained_image_ckpt, **IMAGE_PARAMS)
    robot = Teleop(context=ros_context)
    ex = rig(rec, policy, robot)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS, policy.configure_error  # subscribed
    rng = np.random.default_rng(1)
    published = {}  # state (pos, vel) -> (k, image, command)
    base = 0
    while rec.recorder.sync.counters.accepted < 2 or policy.sync.counters.accepted < 2:  # until both are matched
        base += 1
        assert base < 100, "the nodes never received the robot's topics"
        robot.js.publish(joint_state(robot.now(), [0.0, 0.0, 0.0]))
        robot.cam.publish(image(robot.now(), np.zeros((96, 96, 3), np.uint8)))
        spin_for(ex, 0.1)
    base = (rec.recorder.sync.counters.accepted, policy.sync.counters.accepted)
    assert call(ex, robot, "/recorder/start_episode").success
    for k in range(24):
        t0 = time.monotonic()
        q = np.array([0.2 + 0.02 * k, -0.4 + 0.01 * k, 0.7 - 0.015 * k])
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        t = robot.now()
        robot.js.publish(joint_state(t, q))
        robot.cam.publish(image(t, pixels))
        command = q + 0.25
        robot.forward.publish(forward_command(command))
        state = np.concatenate([q, 0.1 * q]).astype(np.float32)
        published[state.tobytes()] = (k, pixels, command)
        # both nodes took this joint state and image: their samples of one instant are the same arrays
        want = (base[0] + 2 * (k + 1), base[1] + 2 * (k + 1))
        assert spin_until(ex, lambda w=want: rec.recorder.sync.counters.accepted >= w[0]
                          and policy.sync.counters.accepted >= w[1], 5.0)
        now = robot.now()
        mine, theirs = rec.recorder.sync.sample(now).obs, policy.sync.sample(now).obs
        assert mine is not None and theirs is not None and mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])
        np.testing.assert_array_equal(mine["observation.state"], state)
        spin_for(ex, max(0.0, 0.1 - (time.monotonic() - t0)))
    reply = call(ex, robot, "/recorder/save_episode")
    assert reply.success and "saved episode 0" in reply.message, reply.message
    assert not call(ex, robot, "/recorder/save_episode").success  # nothing is being recorded now
    n = rec.recorder.counters.frames
    assert n >= 10, reply.message
    rec.finalize()
    ds = read_back(root)
    assert ds.num_episodes == 1 and ds.num_frames == n and ds.fps == 10
    assert ds.meta.features["observation.state"]["names"] == [f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS]
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        state = item["observation.state"].numpy()
        k, pixels, command = published[state.tobytes()]  # exactly one of the published observations
        seen.add(k)
        img = (item["observation.images.top"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(img, pixels)  # the image published with that joint state
        np.testing.assert_allclose(item["action"].numpy(), command, rtol=1e-6)  # the command that followed it
    assert len(seen) >= 8


def test_episodes_saved_refused_discarded_and_trained_on(rig, ros_context, tmp_path):
    """State + target + JointTrajectory teleop at 20 Hz: a good episode is saved, one with a joint-state
    dropout in the middle is refused (nothing written), one is discarded; the dataset trains with
    streamdp-train unchanged and the policy gets the robot's joint names from it."""
    root = tmp_path / "arm_demos"
    rec = make_recorder(ros_context, root=str(root), control_rate_hz=20, command_topic="/teleop/joint_trajectory",
                        min_episode_frames=5, **ARM_STATE)
    robot = Teleop(context=ros_context)
    state = {"k": 0, "joints": True}

    def publish():
        k = state["k"] = state["k"] + 1
        q = np.array([0.3 * np.sin(0.1 * k), 0.5 + 0.01 * k, -0.2])
        t = robot.now()
        if state["joints"]:
            robot.js.publish(joint_state(t, q))
        robot.target.publish(point(t, (0.4, 0.1)))
        robot.traj.publish(trajectory_command(t, q + 0.5))

    robot.create_timer(0.05, publish)
    ex = rig(rec, robot)
    spin_for(ex, 0.3)
    for service, ok in (("start", True), ("start", False)):  # a second start while recording is refused
        assert call(ex, robot, f"/recorder/{service}_episode").success is ok
    spin_for(ex, 1.2)
    good = call(ex, robot, "/recorder/save_episode")
    assert good.success, good.message
    assert call(ex, robot, "/recorder/start_episode").success
    spin_for(ex, 0.5)
    state["joints"] = False  # the arm's joint states stop for 0.5 s (> max_obs_age_s) in the middle
    spin_for(ex, 0.5)
    state["joints"] = True
    spin_for(ex, 0.5)
    bad = call(ex, robot, "/recorder/save_episode")
    assert not bad.success and "nothing saved" in bad.message and "between good ones" in bad.message, bad.message
    assert call(ex, robot, "/recorder/start_episode").success
    spin_for(ex, 0.3)
    # streamdp-episode, the command-line client, in its own process while this one spins the recorder
    code, out, err = episode_cli(ex, "discard")
    assert code == 0 and "discarded the episode" in out, err
    code, out, err = episode_cli(ex, "save")
    assert code == 1 and "no episode is being recorded" in err
    assert call(ex, robot, "/recorder/start_episode").success
    spin_for(ex, 1.2)
    assert call(ex, robot, "/recorder/save_episode").success
    rec.finalize()

    ds = read_back(root)
    assert ds.num_episodes == 2  # the refused and the discarded episodes left nothing
    for i in range(len(ds)):
        item = ds[i]
        s, a = item["observation.state"].numpy(), item["action"].numpy()
        np.testing.assert_allclose(s[6:], [0.4, 0.1], rtol=1e-6)
        assert np.all(np.abs(a - s[:3] - 0.5) < 0.02)  # the trajectory that followed the observation (q + 0.5)

    from ..train.helpers import tiny_overrides, train_inprocess

    run = tmp_path / "run"
    # config/task/arm_reach_dynamic.yaml's card: 8 state values, 3 actions, 20 fps, as recorded here
    res = train_inprocess(tiny_overrides(root, run, steps=2, batch=4, task="arm_reach_dynamic"))
    from streamdp.policy.policy import Policy

    trained = Policy.from_pretrained(run / "checkpoints" / "last" / "pretrained")
    assert res is not None and trained.config.joint_names == list(JOINTS) and trained.config.fps == 20
    trained.check_compatible(joint_names=list(JOINTS), state_dim=8, action_dim=3, fps=20)

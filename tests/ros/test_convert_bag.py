"""streamdp-convert-bag on rosbag2 files written in the test by rosbags' own Writer (MCAP and sqlite3): frames
and actions, episode splits, the dataset read back by lerobot and by the training loader, and every bad-bag
case ending in one line that names the topic and the time, exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from streamdp.ros_nodes import convert_bag

ROOT = Path(__file__).resolve().parents[2]
TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
JOINTS = ["joint1", "joint2", "joint3"]
DT = 0.05
T0 = 1_700_000_000.0  # log and header clock of the recordings (seconds)


def _time(t: float):
    sec = int(t)
    return T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)))


def _header(t: float):
    return T["std_msgs/msg/Header"](stamp=_time(t), frame_id="")


def js(t: float, q, names=("joint3", "gripper", "joint1", "joint2")):
    by = {"joint1": q[0], "joint2": q[1], "joint3": q[2], "gripper": 0.0}
    return T["sensor_msgs/msg/JointState"](header=_header(t), name=list(names),
                                           position=np.array([by.get(n, 0.0) for n in names]),
                                           velocity=np.zeros(len(names)), effort=np.array([], dtype=np.float64))


def target(t: float, xy):
    return T["geometry_msgs/msg/PointStamped"](header=_header(t), point=T["geometry_msgs/msg/Point"](
        x=float(xy[0]), y=float(xy[1]), z=0.0))


def camera(t: float, value: int, size: int = 64):
    px = np.full((size, size, 3), value, np.uint8)
    return T["sensor_msgs/msg/Image"](header=_header(t), height=size, width=size, encoding="rgb8", is_bigendian=0,
                                      step=3 * size, data=px.reshape(-1))


def forward(values):
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, dtype=np.float64))


def trajectory(t: float, positions, dt: float = 1e-3):
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(positions, dtype=np.float64)[[2, 0, 1]], velocities=np.array([], dtype=np.float64),
        accelerations=np.array([], dtype=np.float64), effort=np.array([], dtype=np.float64),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=int(dt * 1e9)))
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(t), joint_names=["joint3", "joint1", "joint2"],
                                                    points=[point])


def marker(state: str):
    return T["diagnostic_msgs/msg/DiagnosticStatus"](level=0, name="sim_bridge: episode", message=state,
                                                     hardware_id="", values=[])


def q_at(k: int) -> np.ndarray:
    return np.array([0.1 + 0.01 * k, -0.2 + 0.02 * k, 0.5 - 0.01 * k])


def arm_messages(n: int, t0: float = T0, skip=(), cameras: bool = False):
    """(topic, log time, message): joint state k at t0 + k*DT, logged 2 ms later, then target and the
    teleop's command q_k + 0.3 (and a camera image); joint states in `skip` are left out."""
    out = []
    for k in range(n):
        t = t0 + k * DT
        if k not in skip:
            out.append(("/joint_states", t + 0.002, js(t, q_at(k))))
        out.append(("/target", t + 0.003, target(t, (0.4, 0.1 * np.sin(k)))))
        if cameras:
            out.append(("/camera/top/image_raw", t + 0.004, camera(t, 10 * k % 250)))
        out.append(("/teleop/commands", t + 0.010, forward(q_at(k) + 0.3)))
    return out


def write_bag(path: Path, messages, storage: str = "mcap") -> Path:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for topic, log, msg in sorted(messages, key=lambda m: m[1]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msg.__msgtype__, typestore=TS)
            w.write(conns[topic], int(round(log * 1e9)), TS.serialize_cdr(msg, msg.__msgtype__))
    return path


ARGS = ["control_rate_hz=20", "joint_names=[joint1,joint2,joint3]", "min_episode_frames=5",
        "state_layout=[joint_state.position,joint_state.velocity,target]", "extra_state_names=[target]",
        "extra_state_topics=[/target]", "command_topic=/teleop/commands", "command_type=float64_multi_array"]


def run_cli(capsys, bags, root, *extra):
    code = convert_bag.main([f"bags=[{','.join(str(b) for b in bags)}]", f"root={root}", *ARGS, *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_bag_becomes_one_episode_with_the_recorders_pairing(tmp_path, capsys, storage):
    bag = write_bag(tmp_path / "bag", arm_messages(40), storage)
    code, out, err = run_cli(capsys, [bag], tmp_path / "ds")
    assert code == 0, err
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds", root=tmp_path / "ds")
    # ticks half a period after each joint state up to the last one: 39, each with the next joint state known
    assert ds.num_episodes == 1 and ds.num_frames == 39 and ds.fps == 20, out
    assert "trimmed" not in out
    for i in range(len(ds)):
        item = ds[i]
        s, a = item["observation.state"].numpy(), item["action"].numpy()
        np.testing.assert_allclose(s[:3], q_at(i), rtol=1e-6)  # tick i (10 ms after joint state i) sees it
        np.testing.assert_allclose(a, q_at(i) + 0.3, rtol=1e-6)  # the command that followed it


def test_the_recorders_parameter_file_serves_the_converter(tmp_path, capsys):
    """config/ros/record.yaml (the recorder's parameters for the sim arm) on a bag of the arm's topics with the
    commands on the controller's JointTrajectory topic; the result fits the arm_reach_dynamic task card."""
    msgs = [m for m in arm_messages(30) if m[0] != "/teleop/commands"]
    msgs += [("/joint_trajectory_controller/joint_trajectory", T0 + k * DT + 0.010, trajectory(T0 + k * DT + 0.008,
              q_at(k) + 0.3)) for k in range(30)]
    bag = write_bag(tmp_path / "bag", msgs, "sqlite3")
    code = convert_bag.main([f"params_file={ROOT / 'config/ros/record.yaml'}", f"bags=[{bag}]",
                             f"root={tmp_path / 'ds'}"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    from streamdp.policy.train.config import DatasetConfig
    from streamdp.policy.train.data import Window
    from streamdp.policy.train.sources import card_features, load_dataset
    from streamdp.sim.collect import load_config as collect_config

    card = collect_config(["task=arm_reach_dynamic"]).task
    task = {"name": card.name, "obs_mode": "state", "fps": 20, "features": card.features}
    assert card_features(task)[1]["state_dim"] == 8
    data = load_dataset(task, DatasetConfig(root=str(tmp_path / "ds")), Window(n_obs_steps=2, horizon=8))
    assert data.info.num_frames == 29 and data.info.joint_names == JOINTS
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds", root=tmp_path / "ds")
    assert ds.meta.robot_type == "arm_reach_dynamic" and ds.meta.tasks.index[0] == "reach the target"
    for i in range(len(ds)):  # the trajectory that followed frame i, read one period after the next joint state
        np.testing.assert_allclose(ds[i]["action"].numpy(), q_at(i) + 0.3, rtol=1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("recorder:\n  ros__parameters:\n    joint_name: [joint1]\n    use_sim_time: false\n")
    code = convert_bag.main([f"params_file={bad}", f"bags=[{bag}]", f"root={tmp_path / 'ds2'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "['joint_name'] are not streamdp-record parameters" in err and len(err.splitlines()) == 1


def test_cameras_become_video_that_the_training_loader_reads(tmp_path, capsys):
    import os

    bag = write_bag(tmp_path / "bag", arm_messages(24, cameras=True))
    before = os.sched_getscheduler(0)
    code, out, err = run_cli(capsys, [bag], tmp_path / "ds", "camera_names=[top]",
                             "camera_topics=[/camera/top/image_raw]")
    assert code == 0, err
    assert os.sched_getscheduler(0) == before == os.SCHED_OTHER  # not left in the video encoder's SCHED_FIFO
    from streamdp.policy.train.config import DatasetConfig
    from streamdp.policy.train.data import Window
    from streamdp.policy.train.sources import load_dataset

    task = {"name": "generic", "obs_mode": "image", "features": {"images": ["observation.images.top"]}}
    data = load_dataset(task, DatasetConfig(root=str(tmp_path / "ds")), Window(n_obs_steps=2, horizon=8))
    assert data.info.camera_names == ["top"] and data.info.image_shape == (3, 64, 64)
    assert data.info.joint_names == JOINTS and data.info.num_frames == 23 and data.info.fps == 20
    sample = data[5]
    img = sample["observation.images.top"]  # (To, C, H, W) in [0, 1]; frame 5's camera was filled with 50
    assert img.shape == (2, 3, 64, 64)
    assert abs(float(img[-1].mean()) * 255 - 50) < 6  # video is lossy, the value survives


def test_split_on_gaps_and_on_episode_markers(tmp_path, capsys):
    msgs = arm_messages(30) + arm_messages(30, t0=T0 + 3.0)  # the joint states pause 1.55 s between runs
    gap = write_bag(tmp_path / "gap", msgs, "sqlite3")
    code, out, err = run_cli(capsys, [gap], tmp_path / "ds_gap", "split=gap", "gap_s=1.0")
    assert code == 0 and out.count("saved episode") == 2, out + err
    marks = arm_messages(60) + [("/task/episode", T0 + 0.001, marker("running")),
                                ("/task/episode", T0 + 1.001, marker("success")),
                                ("/task/episode", T0 + 1.501, marker("running"))]
    bag = write_bag(tmp_path / "marked", marks)
    code, out, err = run_cli(capsys, [bag], tmp_path / "ds_marked", "split=marker", "marker_topic=/task/episode")
    assert code == 0, err
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds_marked", root=tmp_path / "ds_marked")
    # [0.001, 1.001]: 20 ticks, the last one's next joint state comes after the marker: trimmed;
    # [1.501, the last joint state 2.952]: 29 ticks, all with their next joint state
    assert ds.num_episodes == 2 and ds.num_frames == 19 + 29, out
    assert "trimmed 1 trailing frame(s)" in out.splitlines()[0]
    # Two more bags, one episode each (split=bag), appended to the first dataset with resume=true.
    more = [write_bag(tmp_path / f"more_{i}", arm_messages(20 + i)) for i in range(2)]
    code, out, err = run_cli(capsys, more, tmp_path / "ds_gap", "resume=true")
    assert code == 0, out + err
    ds = LeRobotDataset("local/ds_gap", root=tmp_path / "ds_gap")
    assert ds.num_episodes == 4 and list(ds.meta.episodes["length"])[2:] == [19, 20]


def test_stale_input_inside_an_episode_refuses_it_with_the_reason(tmp_path, capsys):
    good = write_bag(tmp_path / "good", arm_messages(20))
    holed = write_bag(tmp_path / "holed", arm_messages(30, skip=range(10, 18)))  # 0.4 s without joint states
    code, out, err = run_cli(capsys, [good, holed], tmp_path / "ds")
    assert code == 1, out + err
    assert "episode refused, nothing saved" in out and "between good ones" in out
    assert "1 episode(s) saved, 1 refused" in out


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _bad_command(msgs):
    return [m for m in msgs if m[0] != "/teleop/commands"]


def _unknown_joints(msgs):
    return [(tp, log, js(log - 0.002, q_at(0), names=("joint1", "joint2", "wrist")) if tp == "/joint_states" and
             log > T0 + 0.5 else m) for tp, log, m in msgs]


def _backwards(msgs):
    return [(tp, log, js(T0 + 0.2, q_at(0)) if tp == "/joint_states" and abs(log - (T0 + 0.502)) < 1e-6 else m)
            for tp, log, m in msgs]


def _sim_clock(msgs):
    return [(tp, log, js(log - 1000.0, q_at(0)) if tp == "/joint_states" else m) for tp, log, m in msgs]


@pytest.mark.parametrize("case, edit, storage, expect", [
    ("missing topic", _bad_command, "mcap", "no topic /teleop/commands (the commands (float64_multi_array))"),
    ("unknown joint names", _unknown_joints, "sqlite3",
     "/joint_states at 0.500 s into the bag (header stamp 1700000000.500000): joint state lacks ['joint3']"),
    ("non-monotonic stamps", _backwards, "mcap",
     "/joint_states at 0.500 s into the bag (header stamp 1700000000.200000): header stamp 1700000000.200000 "
     "is older than the previous one"),
    ("another clock", _sim_clock, "mcap", "header stamps are -1000.0 s from the log time"),
    ("truncated mcap", None, "mcap", "bag"),
    ("truncated sqlite3", None, "sqlite3", "bag"),
])
def test_bad_bags_end_in_one_line_naming_the_topic_and_time(tmp_path, capsys, case, edit, storage, expect):
    msgs = arm_messages(40)
    bag = write_bag(tmp_path / "bag", edit(msgs) if edit else msgs, storage)
    if edit is None:  # cut the storage file (not the metadata) in half
        _truncate(next(bag.glob("*.mcap" if storage == "mcap" else "*.db3")), 0.5)
    good = write_bag(tmp_path / "good", arm_messages(20))
    code, out, err = run_cli(capsys, [good, bag], tmp_path / "ds")
    assert code == 2, (case, out, err)
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("streamdp-convert-bag: BagError:"), line
    assert str(bag) in line and expect in line, line
    if edit is None:
        assert "unreadable" in line or "cannot open" in line, line
    assert not (tmp_path / "ds").exists()  # the good bag's episode went with the dataset this run created

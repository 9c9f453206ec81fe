"""Recording logic without rclpy (streamdp.ros_nodes.recording): options, frame and action pairing, staleness,
trimming and refusal, episode bookkeeping. Messages are the real ROS message classes, built in the test."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.policy.config import ConfigError
from streamdp.ros_nodes.observation import ObservationSync
from streamdp.ros_nodes.recording import EpisodeRecorder, RecordingError, RecordingOptions, lerobot_features

from .helpers import JOINTS, forward_command, image, joint_state, point, trajectory_command

DT = 0.05  # 20 Hz


class ListSink:
    """A FrameSink keeping frames in memory: `episodes` holds the saved ones."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.episodes: list[list[dict]] = []
        self.cleared = 0

    def add(self, frame):
        self.frames.append(frame)

    def save(self):
        self.episodes.append(self.frames)
        self.frames = []
        return f"episode {len(self.episodes) - 1}"

    def clear(self):
        self.frames = []
        self.cleared += 1


def options(**kw) -> RecordingOptions:
    return RecordingOptions(**{"root": "unused", "joint_names": list(JOINTS), "control_rate_hz": 20,
                               "min_episode_frames": 2, **kw})


def q_at(k: int) -> np.ndarray:
    return np.array([0.1 * k, -0.05 * k, 0.3 + 0.01 * k])


def drive(rec: EpisodeRecorder, ticks: int, t0: float = 100.0, js=lambda k: True, cmd=None, extra=None, cam=None):
    """Joint state k at t0 + k*DT (when js(k)), then its command/extra/camera, then the tick 10 ms later."""
    for k in range(ticks):
        t = t0 + k * DT
        if js(k):
            assert rec.joint_state_msg(joint_state(t, q_at(k)))
        if extra is not None:
            rec.extra_msg("target", extra(t, k))
        if cam is not None and cam(k) is not None:
            rec.image_msg("top", image(t, cam(k)))
        if cmd is not None and cmd(t, k) is not None:
            assert rec.command_msg(cmd(t, k), t + 0.004), rec.last_command_drop
        rec.tick(t + 0.010)


def test_options_validate_themselves_naming_each_problem():
    with pytest.raises(ConfigError) as e:
        RecordingOptions()
    assert "root is not set" in str(e.value) and "joint_names is empty" in str(e.value)
    assert "control_rate_hz" in str(e.value)
    with pytest.raises(ConfigError, match="whole number"):
        options(control_rate_hz=12.5)
    with pytest.raises(ConfigError, match="camera_names"):
        options(camera_names=["top"])
    with pytest.raises(ConfigError, match="neither joint_state"):
        options(state_layout=["joint_state.position", "target"])
    with pytest.raises(ConfigError, match="on_stale"):
        options(on_stale="fill")
    o = options(extra_state_names=["target"], extra_state_topics=["/target"],
                state_layout=["joint_state.position", "joint_state.velocity", "target"])
    feats = lerobot_features(o, None)
    # The names the sim tasks use, so training reads the joint names back from the dataset.
    assert feats["observation.state"]["names"] == [f"{j}.pos" for j in JOINTS] + [f"{j}.vel" for j in JOINTS] + [
        "target.x", "target.y"]
    assert feats["action"]["shape"] == (3,)
    assert o.topics == {"/joint_states": "joint states", "/target": "extra state 'target'"}


def test_frame_observation_is_the_policy_adapters_sample():
    o = options(extra_state_names=["target"], extra_state_topics=["/target"],
                state_layout=["joint_state.position", "joint_state.velocity", "target"], camera_names=["top"],
                camera_topics=["/cam"])
    sink = ListSink()
    rec = EpisodeRecorder(o, sink)
    policy_side = ObservationSync(o.layout, ["top"], o.max_obs_age_s, o.max_image_age_s)  # the policy node's
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 255, (8, 6, 3), dtype=np.uint8) for _ in range(6)]
    rec.start(100.0)
    wants = []
    for k in range(6):
        t = 100.0 + k * DT
        msgs = (joint_state(t, q_at(k)), point(t, (0.4, -0.1 * k)), image(t, pixels[k]))
        rec.joint_state_msg(msgs[0])
        rec.extra_msg("target", msgs[1])
        rec.image_msg("top", msgs[2])
        policy_side.add_joint_state_msg(msgs[0])
        policy_side.add_extra_msg("target", msgs[1])
        policy_side.add_image_msg("top", msgs[2], (8, 6), 3)
        wants.append(policy_side.sample(t + 0.01).obs)
        rec.tick(t + 0.01)
        assert len(sink.frames) == k  # frame k-1 got its action from joint state k: it is out now
    for got, want in zip(sink.frames, wants):
        assert set(got) == set(want) | {"action", "task"}
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert len(sink.frames) == 5


def test_action_is_the_next_measured_joint_positions_without_a_command_topic():
    sink = ListSink()
    rec = EpisodeRecorder(options(), sink)
    rec.start(100.0)
    drive(rec, 10)
    out = rec.save()
    assert out.saved and out.frames == 9 and out.trimmed_tail == 1, out.message
    frames = sink.episodes[0]
    for k, f in enumerate(frames):
        np.testing.assert_allclose(f["observation.state"][:3], q_at(k), rtol=1e-6)
        np.testing.assert_allclose(f["action"], q_at(k + 1), rtol=1e-6)  # next measured positions
        assert f["action"].dtype == np.float32 and f["task"] == "demonstration"
    assert "trimmed 1 trailing frame(s) (first: no joint state measured after it" in out.message


def test_action_is_the_command_in_force_at_the_next_joint_state():
    """Command k (Float64MultiArray) arrives after joint state k: it is frame k's action, not frame k-1's."""
    sink = ListSink()
    rec = EpisodeRecorder(options(command_topic="/teleop", command_type="float64_multi_array"), sink)
    rec.start(100.0)
    drive(rec, 8, cmd=lambda t, k: forward_command(q_at(k) + 1.0))
    assert rec.save().saved
    for k, f in enumerate(sink.episodes[0]):
        np.testing.assert_allclose(f["action"], q_at(k) + 1.0, rtol=1e-6)


def test_joint_trajectory_commands_are_read_one_period_after_the_next_joint_state():
    sink = ListSink()
    rec = EpisodeRecorder(options(command_topic="/teleop"), sink)  # joint_trajectory by default
    rec.start(100.0)
    # Command k ramps from its stamp to q_at(k)+1 over 2 periods: read at next stamp + one period = its end.
    drive(rec, 8, cmd=lambda t, k: trajectory_command(t, q_at(k) + 1.0, dt=2 * DT))
    assert rec.save().saved
    frames = sink.episodes[0]
    assert len(frames) == 7
    for k, f in enumerate(frames):
        np.testing.assert_allclose(f["action"], q_at(k) + 1.0, rtol=1e-6)
    bad = trajectory_command(200.0, [0, 0, 0], names=("joint1", "joint2", "wrist"))
    assert not rec.command_msg(bad, 200.0) and "lack ['joint3']" in rec.last_command_drop


def test_a_late_camera_is_trimmed_from_the_start_and_said_so():
    sink = ListSink()
    rec = EpisodeRecorder(options(camera_names=["top"], camera_topics=["/cam"]), sink)
    rec.start(100.0)
    px = np.zeros((4, 4, 3), np.uint8)
    drive(rec, 10, cam=lambda k: px + k if k >= 3 else None)
    out = rec.save()
    assert out.saved and out.trimmed_head == 3 and out.frames == 6
    assert "trimmed 3 leading frame(s) (first: no image from camera 'top' yet)" in out.message
    # The first kept frame is tick 3's: its image is the one published with joint state 3.
    np.testing.assert_array_equal(sink.episodes[0][0]["observation.images.top"], px + 3)
    assert rec.image_hw == (4, 4)
    assert not rec.image_msg("top", image(200.0, np.zeros((5, 4, 3), np.uint8)))  # size fixed by the first
    assert "5x4" in rec.last_drop


def test_a_gap_between_good_frames_refuses_the_episode_with_the_reason():
    warnings = []
    sink = ListSink()
    rec = EpisodeRecorder(options(), sink, warn=warnings.append)
    rec.start(100.0)
    drive(rec, 20, js=lambda k: not 5 <= k < 12)  # the joint state stops for 7 periods (> max_obs_age_s)
    assert warnings and "refused" in warnings[0]
    out = rec.save()
    assert not out.saved and sink.episodes == [] and sink.frames == [] and sink.cleared >= 1
    # Frame 4 (the last before the gap) waited 8 periods for its next joint state; the frames after it are stale.
    assert "8 frame(s) without usable input between good ones, the first at frame 4" in out.message
    assert "the next joint state came 0.400 s later" in out.message
    assert rec.counters.episodes_refused == 1
    # The next episode is fine again.
    rec.start(200.0)
    drive(rec, 6, t0=200.0)
    assert rec.save().saved and len(sink.episodes) == 1


def test_on_stale_refuse_refuses_any_stale_frame_and_trim_keeps_the_middle():
    for policy, saved in (("trim", True), ("refuse", False)):
        sink = ListSink()
        rec = EpisodeRecorder(options(on_stale=policy, command_topic="/teleop", command_type="float64_multi_array"),
                              sink)
        rec.start(100.0)
        drive(rec, 8, cmd=lambda t, k: forward_command(q_at(k)) if k >= 2 else None)  # no command for 2 ticks
        out = rec.save()
        assert out.saved is saved and "no command on /teleop yet" in out.message, out.message
        assert out.trimmed_head == (2 if saved else 0)


def test_stale_command_late_tick_and_too_few_frames_are_marked():
    sink = ListSink()
    rec = EpisodeRecorder(options(command_topic="/teleop", command_type="float64_multi_array",
                                  max_command_age_s=0.12), sink)
    rec.start(100.0)
    drive(rec, 10, cmd=lambda t, k: forward_command(q_at(k)) if k < 5 else None)
    out = rec.save()  # the teleop stopped after command 4: later frames are marked and trimmed from the end
    assert out.saved and out.frames == 6 and "stale (age" in out.message, out.message
    rec2 = EpisodeRecorder(options(min_episode_frames=50), ListSink())
    rec2.start(100.0)
    drive(rec2, 10)
    out = rec2.save()
    assert not out.saved and "fewer than min_episode_frames=50" in out.message
    rec3 = EpisodeRecorder(options(), ListSink())
    rec3.start(100.0)
    for k in range(8):  # tick 4 comes three periods after tick 3: the frames in between are missing
        rec3.joint_state_msg(joint_state(100 + k * DT, q_at(k)))
        if k != 3 and k != 5:
            rec3.tick(100 + k * DT + 0.01 + (0.1 if k == 4 else 0.0))
    out = rec3.save()
    assert not out.saved and "frames are missing" in out.message


def test_episode_services_out_of_turn_are_refused():
    sink = ListSink()
    rec = EpisodeRecorder(options(), sink)
    with pytest.raises(RecordingError, match="no episode"):
        rec.save()
    with pytest.raises(RecordingError, match="nothing to discard"):
        rec.discard()
    rec.start(100.0)
    with pytest.raises(RecordingError, match="save or discard it first"):
        rec.start(100.1)
    drive(rec, 5)
    assert "discarded the episode (5 ticks, 4 good frames)" == rec.discard()
    assert sink.episodes == [] and sink.frames == [] and not rec.recording
    rec.tick(200.0)  # not recording: nothing happens
    assert rec.counters.ticks == 5 and sink.frames == []


def test_history_stays_bounded_over_a_long_episode():
    rec = EpisodeRecorder(options(command_topic="/teleop", command_type="float64_multi_array"), ListSink())
    rec.start(100.0)
    drive(rec, 400, cmd=lambda t, k: forward_command(q_at(k)))
    assert len(rec._measured) <= 2 and len(rec._commands) <= 2 and len(rec._pending) <= 2
    assert rec.save().frames == 399

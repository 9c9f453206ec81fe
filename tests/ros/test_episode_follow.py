"""Following the sim bridge's episode events without rclpy (streamdp.ros_nodes.episode_follow): which frames an
episode takes, when it is saved or discarded, when the next one is asked for. Messages are real ROS classes."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.ros_nodes.episode_follow import EpisodeEvent, EpisodeFollower, FollowOptions
from streamdp.ros_nodes.observation import stamp_seconds
from streamdp.ros_nodes.recording import EpisodeRecorder

from .helpers import forward_command, joint_state
from .test_recording import DT, ListSink, options, q_at

T0 = 100.0


def stamp(k: int) -> float:
    """The header stamp (seconds) of joint state k, as the recorder reads it."""
    return stamp_seconds(joint_state(T0 + k * DT, q_at(k)).header.stamp)


def event(state: str, k: int, episode: int = 1, steps: int = 0) -> EpisodeEvent:
    return EpisodeEvent(state, stamp(k), episode, 40 + episode, steps)


def rig(**follow):
    sink = ListSink()
    rec = EpisodeRecorder(options(command_topic="/cmd", command_type="float64_multi_array"), sink)
    return sink, rec, EpisodeFollower(rec, FollowOptions(**follow), now=T0 - 1.0)


def run(rec, follower, ticks: int, events=None, first: int = 0):
    """Joint state k (position q_at(k)) at T0 + k*DT, the events of tick k, its command q_at(k) + 0.5, then the
    control tick 10 ms later. Returns the FollowSteps."""
    steps = []
    for k in range(first, first + ticks):
        t = T0 + k * DT
        assert rec.joint_state_msg(joint_state(t, q_at(k)))
        for e in (events or {}).get(k, []):
            follower.on_event(e, t + 0.002)
        assert rec.command_msg(forward_command(q_at(k) + 0.5), t + 0.004)
        rec.tick(t + 0.010)
        steps.append(follower.poll(t + 0.010))
    return steps


def positions(frames) -> np.ndarray:
    return np.array([f["observation.state"][:3] for f in frames])


def test_event_values_parse_like_the_bridge_writes_them():
    ev = EpisodeEvent.from_values({"episode": "3", "seed": "7", "state": "success", "steps": "88",
                                   "distance": "0.01", "stamp": "1796213334.050000000"})
    assert ev == EpisodeEvent("success", 1796213334.05, 3, 7, 88)
    js = joint_state(1796213334.05, q_at(0))
    assert ev.stamp == stamp_seconds(js.header.stamp)  # the same float the adapter computes for the joint state
    with pytest.raises(ValueError, match="without 'stamp'"):
        EpisodeEvent.from_values({"episode": "3", "seed": "7", "state": "running", "steps": "0"})
    with pytest.raises(ValueError, match="malformed"):
        EpisodeEvent.from_values({"episode": "x", "seed": "7", "state": "running", "steps": "0", "stamp": "1.0"})
    with pytest.raises(ValueError):
        FollowOptions(max_episodes=-1)


def test_an_episode_is_its_observations_from_the_reset_to_before_the_last_with_the_commands_that_followed():
    """Observations 0..2 belong to the episode before; the reset is observation 3, the terminal one 12: frames
    3..11 are saved, each with the command sent after it, and the next episode is asked for."""
    sink, rec, f = rig(request_resets=True)
    steps = run(rec, f, 16, {3: [event("running", 3)], 12: [event("success", 12, steps=9)]})
    assert steps[0].request_reset and not any(s.request_reset for s in steps[1:12])
    assert len(sink.episodes) == 1 and f.saved == 1
    frames = sink.episodes[0]
    np.testing.assert_array_equal(positions(frames), np.array([q_at(k) for k in range(3, 12)], dtype=np.float32))
    np.testing.assert_array_equal([fr["action"] for fr in frames],
                                  np.array([q_at(k) + 0.5 for k in range(3, 12)], dtype=np.float32))
    # saved at the tick of the terminal observation (it has arrived: frame 11's action is known); the next
    # episode is asked for at once
    assert "saved episode 0: 9 frames" in steps[12].lines[0] and "success in 9 steps" in steps[12].lines[0]
    assert steps[12].request_reset and not steps[12].done


def test_an_end_event_before_its_last_observation_waits_for_it():
    sink, rec, f = rig()
    run(rec, f, 5, {0: [event("running", 0)]})
    f.on_event(event("success", 5, steps=5), T0 + 4 * DT + 0.02)  # observation 5 is not in yet
    assert f.poll(T0 + 4 * DT + 0.03).lines == [] and rec.recording
    steps = run(rec, f, 1, first=5)
    assert len(sink.episodes) == 1 and len(sink.episodes[0]) == 5 and "5 frames" in steps[0].lines[0]


def test_a_reset_seen_before_its_observation_takes_no_older_frame():
    """The running event is handled before the reset's joint state arrives and a tick falls in between: it still
    sees the episode before's last observation, which is not taken; the reset's own observation is missed
    (the next tick comes after observation 4), and the save says so."""
    sink, rec, f = rig()
    run(rec, f, 3)
    f.on_event(event("running", 3), T0 + 3 * DT - 0.002)
    rec.tick(T0 + 3 * DT - 0.001)  # samples observation 2
    for k in (3, 4):
        assert rec.joint_state_msg(joint_state(T0 + k * DT, q_at(k)))
        assert rec.command_msg(forward_command(q_at(k) + 0.5), T0 + k * DT + 0.004)
    rec.tick(T0 + 4 * DT + 0.010)
    steps = run(rec, f, 3, {7: [event("success", 7, steps=4)]}, first=5)
    np.testing.assert_array_equal(positions(sink.episodes[0]), np.array([q_at(k) for k in (4, 5, 6)], np.float32))
    assert "1 observation(s) at the episode's start were missed" in steps[-1].lines[0]  # said, not hidden


def test_timeouts_are_discarded_unless_asked_and_max_episodes_stops():
    sink, rec, f = rig(max_episodes=1)
    steps = run(rec, f, 6, {0: [event("running", 0)], 5: [event("timeout", 5, steps=5)]})
    assert sink.episodes == [] and f.discarded == 1 and "save_failed_episodes is false" in steps[5].lines[0]
    steps = run(rec, f, 6, {6: [event("running", 6, episode=2)], 11: [event("success", 11, episode=2, steps=5)]},
                first=6)
    assert len(sink.episodes) == 1 and steps[-1].done and f.done
    run(rec, f, 3, {12: [event("running", 12, episode=3)]}, first=12)
    assert not rec.recording  # done: no more episodes
    sink, rec, f = rig(save_failed=True)
    run(rec, f, 6, {0: [event("running", 0)], 5: [event("timeout", 5, steps=5)]})
    assert len(sink.episodes) == 1 and len(sink.episodes[0]) == 5


def test_a_reset_mid_episode_discards_it_and_old_or_foreign_events_are_ignored():
    sink, rec, f = rig()
    lines = []
    run(rec, f, 4, {0: [event("running", 0)]})
    lines += f.on_event(event("running", 4, episode=2), T0 + 4 * DT)
    assert "was reset before it ended" in lines[0] and f.discarded == 1 and rec.recording
    assert f.on_event(event("success", 9, episode=1), T0 + 9 * DT) == []  # not this episode's end
    assert f.current.episode == 2
    # stamped before the follower existed: that episode started before the recorder could see it
    _, rec2, f2 = rig()
    f2.created = T0 + 1.0
    assert f2.on_event(event("running", 0), T0 + 1.1) == [] and not rec2.recording


def test_resets_are_asked_for_once_the_robot_is_heard_and_connected_and_again_after_the_retry_time():
    sink, rec, f = rig(request_resets=True, reset_retry_s=0.49)
    connected = {"now": False}
    f.connected = lambda: connected["now"]
    assert not f.poll(T0 - 0.5).request_reset  # no joint state yet: the bridge is not up
    assert rec.joint_state_msg(joint_state(T0 - 0.2, q_at(0)))
    assert not f.poll(T0 - 0.1).request_reset  # e.g. the teleop's command publisher is not matched yet
    connected["now"] = True
    steps = run(rec, f, 25)
    asked = [k for k, s in enumerate(steps) if s.request_reset]
    assert asked == [0, 10, 20] and f.resets_requested == 3


def test_a_frame_written_past_the_end_refuses_the_episode():
    """The end event came so late that a frame of the terminal observation was already written: refused."""
    sink, rec, f = rig()
    run(rec, f, 8, {0: [event("running", 0)]})
    f.on_event(event("success", 5, steps=5), T0 + 8 * DT)
    steps = run(rec, f, 1, first=8)
    assert sink.episodes == [] and f.refused == 1 and "before the end event" in steps[0].lines[0]


def test_an_immediate_reset_after_the_end_saves_the_ended_episode_first():
    """A bridge with auto_reset publishes the end and the next running event in one tick: the ended episode is
    saved (not discarded as cut short) and the next one starts from its own first observation."""
    sink, rec, f = rig()
    run(rec, f, 4, {0: [event("running", 0)]})
    assert rec.joint_state_msg(joint_state(T0 + 4 * DT, q_at(4)))  # the terminal observation
    lines = f.on_event(event("success", 4, steps=4), T0 + 4 * DT + 0.001)
    lines += f.on_event(event("running", 5, episode=2), T0 + 4 * DT + 0.002)
    assert "saved episode 0: 4 frames" in lines[0] and lines[1] == "recording sim episode 2 (seed 42)"
    run(rec, f, 4, {8: [event("success", 8, episode=2, steps=3)]}, first=5)
    assert [len(e) for e in sink.episodes] == [4, 3] and f.discarded == 0


def test_the_recorder_node_refuses_an_unknown_frame_trigger(ros_context, tmp_path):
    from .test_recorder_node import make_recorder

    with pytest.raises(ValueError, match="frame_trigger must be one of"):
        make_recorder(ros_context, root=str(tmp_path / "ds"), control_rate_hz=20, frame_trigger="clock")


def run_per_joint_state(rec, follower, times, events=None, lost=()):
    """frame_trigger joint_state: joint state k at times[k] (not delivered for k in `lost`) first closes the
    previous observation as a frame (the node's tick on the robot's clock), then its command; events of k after
    it; the follower is polled 10 ms later."""
    steps = []
    for k, t in enumerate(times):
        if k not in lost:
            js = joint_state(t, q_at(k))
            if rec.sync.joint_stamp is not None:
                rec.tick(stamp_seconds(js.header.stamp), check_spacing=False)
            assert rec.joint_state_msg(js)
            assert rec.command_msg(forward_command(q_at(k) + 0.5), t + 0.004)
        for e in (events or {}).get(k, []):
            follower.on_event(EpisodeEvent(e.state, stamp_seconds(joint_state(t, q_at(k)).header.stamp),
                                           e.episode, e.seed, e.steps), t + 0.002)
        steps.append(follower.poll(t + 0.010))
    return steps


def test_one_frame_per_joint_state_a_late_robot_tick_is_no_gap_and_a_lost_observation_refuses():
    """The bridge ticks late once (0.12 s, a loaded machine): every step is still one frame, the episode is
    saved. A joint state lost on the way: fewer frames than the bridge's steps, refused (never skipped)."""
    times = [T0 + DT * k + (0.07 if k >= 5 else 0.0) for k in range(10)]
    sink, rec, f = rig(every_step=True)
    steps = run_per_joint_state(rec, f, times, {0: [event("running", 0)], 9: [event("success", 0, steps=9)]})
    assert [len(e) for e in sink.episodes] == [9] and "9 frames" in steps[9].lines[0]
    np.testing.assert_array_equal(positions(sink.episodes[0]), np.array([q_at(k) for k in range(9)], np.float32))
    sink, rec, f = rig(every_step=True)
    steps = run_per_joint_state(rec, f, times, {0: [event("running", 0)], 9: [event("success", 0, steps=9)]},
                                lost={4})
    assert sink.episodes == [] and f.refused == 1
    assert "only 8 of its 9 observations reached the recorder" in steps[9].lines[0]


def test_the_first_reset_waits_for_a_command_or_first_wait_s():
    """Matched but no command yet (the teleop may not hear the bridge yet): the first request waits for one, at
    most first_wait_s; later requests (between episodes no command flows) do not."""
    sink, rec, f = rig(request_resets=True, first_wait_s=1.0, reset_retry_s=0.2)
    assert rec.joint_state_msg(joint_state(T0, q_at(0)))
    assert not f.poll(T0 + 0.01).request_reset and not f.poll(T0 + 0.5).request_reset
    assert f.poll(T0 + 1.02).request_reset  # none came: ask anyway
    sink, rec, f = rig(request_resets=True, first_wait_s=1.0)
    assert rec.joint_state_msg(joint_state(T0, q_at(0)))
    assert not f.poll(T0 + 0.01).request_reset
    assert rec.command_msg(forward_command(q_at(0)), T0 + 0.02)
    assert f.poll(T0 + 0.03).request_reset

"""Pure logic of the ROS nodes, without rclpy (observation, streamer, trajectory, stats, inference modules):
sync by name, ordering, staleness, streamer, trajectories."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamdp.ros_nodes.inference import Frame, InferenceWorker
from streamdp.ros_nodes.joint_state_relay import RelayPlan
from streamdp.ros_nodes.observation import (
    ExtraState,
    ObservationSync,
    StateLayout,
    SyncError,
    decode_image,
    encode_rgb8,
    select_joints,
)
from streamdp.ros_nodes.stats import ClockJumpDetector, LatencyHistogram, RollingStats, TickStats
from streamdp.ros_nodes.streamer import ActionStreamer
from streamdp.ros_nodes.trajectory import TrajectorySampler, split_seconds, trajectory_points

J = ("joint1", "joint2", "joint3")


def arm_layout() -> StateLayout:
    return StateLayout(J, ("joint_state.position", "joint_state.velocity", "target"), (ExtraState("target", "/t"),))


# ------------------------------------------------------------------------------------ sync
def test_select_joints_reorders_by_name_and_names_missing():
    v = select_joints(["joint3", "gripper", "joint1", "joint2"], [3.0, 9.0, 1.0, 2.0], J)
    np.testing.assert_array_equal(v, [1.0, 2.0, 3.0])
    with pytest.raises(SyncError, match="joint2"):
        select_joints(["joint1", "joint3"], [1.0, 3.0], J)


def test_sync_assembles_state_in_checkpoint_order():
    s = ObservationSync(arm_layout(), max_age=0.2)
    assert s.sample(1.0).obs is None and "no joint state" in s.sample(1.0).reason
    assert s.add_joint_state(1.0, ["joint2", "joint3", "joint1"], [2, 3, 1], [20, 30, 10])
    r = s.sample(1.01)
    assert r.obs is None and "target" in r.reason  # the extra entry is still missing
    assert s.add_extra("target", 1.0, [0.4, -0.1])
    r = s.sample(1.05)
    np.testing.assert_allclose(r.obs["observation.state"], [1, 2, 3, 10, 20, 30, 0.4, -0.1])
    assert r.obs["observation.state"].dtype == np.float32
    assert r.stamp == 1.0 and r.age == pytest.approx(0.05)
    assert StateLayout(J, ("joint_state.position",)).dim == 3 and arm_layout().dim == 8


def test_sync_drops_and_counts_out_of_order_and_duplicates():
    s = ObservationSync(StateLayout(J, ("joint_state.position",)), max_age=1.0)
    assert s.add_joint_state(2.0, J, [1, 1, 1])
    assert not s.add_joint_state(2.0, J, [5, 5, 5])  # duplicate stamp
    assert not s.add_joint_state(1.5, J, [7, 7, 7])  # older than the last one
    assert s.counters.duplicate == 1 and s.counters.out_of_order == 1
    np.testing.assert_array_equal(s.sample(2.1).obs["observation.state"], [1, 1, 1])  # the old data never wins
    assert s.add_joint_state(2.1, J, [2, 2, 2])
    np.testing.assert_array_equal(s.sample(2.2).obs["observation.state"], [2, 2, 2])


def test_sync_rejects_nan_and_missing_joints():
    s = ObservationSync(StateLayout(J, ("joint_state.position", "joint_state.velocity")), max_age=1.0)
    assert not s.add_joint_state(1.0, J, [1, np.nan, 1], [0, 0, 0])
    assert not s.add_joint_state(1.1, ["joint1", "joint2"], [1, 1], [0, 0])
    assert not s.add_joint_state(1.2, J, [1, 1, 1], [])  # velocities needed by the layout
    assert s.counters.nonfinite == 1 and s.counters.rejected == 2
    assert s.joint_positions is None


def test_sync_staleness_by_age_and_camera_watchdog():
    s = ObservationSync(StateLayout(J, ("joint_state.position",)), cameras=["top"], max_age=0.1, max_image_age=0.3)
    s.add_joint_state(1.0, J, [0, 0, 0])
    s.add_image("top", 1.0, np.zeros((4, 4, 3), np.uint8))
    assert s.sample(1.05).obs is not None
    r = s.sample(1.2)
    assert r.obs is None and "stale" in r.reason
    s.add_joint_state(1.3, J, [0, 0, 0])
    r = s.sample(1.35)
    assert r.obs is None and "camera 'top' dropped out" in r.reason  # never a silent zero image
    assert s.counters.stale == 2


def test_sync_missing_says_what_activation_waits_for_without_counting():
    s = ObservationSync(arm_layout(), cameras=["top"], max_age=0.1, max_image_age=0.3)
    assert s.missing(1.0) == "no joint state yet"
    s.add_joint_state(1.0, J, [0, 0, 0], [0, 0, 0])
    assert s.missing(1.01) == "no 'target' state yet"
    s.add_extra("target", 1.0, [0.1, 0.2])
    assert s.missing(1.01) == "no image from camera 'top' yet"
    s.add_image("top", 1.0, np.zeros((4, 4, 3), np.uint8))
    assert s.missing(1.01) == "" and "stale" in s.missing(1.2)
    # after a deactivation at t = 1.5 only what was measured since then seeds: every stream again
    assert s.missing(1.05, since=1.5) == "no joint state measured since the deactivation yet"
    s.add_joint_state(1.6, J, [0, 0, 0], [0, 0, 0])
    assert s.missing(1.61, since=1.5) == "no 'target' state yet"
    s.add_extra("target", 1.6, [0.1, 0.2])
    assert s.missing(1.61, since=1.5) == "no image from camera 'top' yet"
    s.add_image("top", 1.6, np.zeros((4, 4, 3), np.uint8))
    assert s.missing(1.61, since=1.5) == ""
    assert s.counters.stale == 0 and len(s.history) == 0  # asking is not a tick


def test_sync_history_is_spaced_by_ticks():
    s = ObservationSync(StateLayout(J, ("joint_state.position",)), max_age=1.0, history=2)
    for k in range(5):
        s.add_joint_state(0.05 * k, J, [k, 0, 0])
        s.sample(0.05 * k + 0.01)
    assert len(s.history) == 2
    assert s.history_spacing() == pytest.approx([0.05])


def test_layout_validation():
    with pytest.raises(ValueError, match="neither"):
        StateLayout(J, ("joint_state.position", "cube"))
    with pytest.raises(ValueError, match="joint_state"):
        StateLayout(J, ("joint_state.torque",))
    with pytest.raises(ValueError, match="xyz"):
        ExtraState("t", "/t", "xw")


# ------------------------------------------------------------------------------------ images
def test_decode_rgb_bgr_mono_with_padded_rows():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    step = 7 * 3 + 5  # padded rows
    raw = np.zeros((5, step), np.uint8)
    raw[:, :21] = img.reshape(5, 21)
    np.testing.assert_array_equal(decode_image("rgb8", 5, 7, step, raw.tobytes(), (5, 7)), img)
    bgr = np.zeros((5, step), np.uint8)
    bgr[:, :21] = img[..., ::-1].reshape(5, 21)
    np.testing.assert_array_equal(decode_image("bgr8", 5, 7, step, bgr.tobytes()), img)
    mono = rng.integers(0, 255, (5, 7), dtype=np.uint8)
    out = decode_image("mono8", 5, 7, 7, mono.tobytes(), channels=3)
    assert out.shape == (5, 7, 3) and np.all(out[..., 1] == mono)
    assert decode_image("mono8", 5, 7, 7, mono.tobytes(), channels=1).shape == (5, 7, 1)
    h, w, st, data = encode_rgb8(img)
    np.testing.assert_array_equal(decode_image("rgb8", h, w, st, data), img)


def test_decode_checks_sizes_and_encodings():
    data = bytes(4 * 4 * 3)
    with pytest.raises(SyncError, match="expects 96x96"):
        decode_image("rgb8", 4, 4, 12, data, (96, 96))
    with pytest.raises(SyncError, match="step"):
        decode_image("rgb8", 4, 4, 10, data)
    with pytest.raises(SyncError, match="bytes"):
        decode_image("rgb8", 4, 4, 12, data[:-20])
    with pytest.raises(SyncError, match="encoding"):
        decode_image("16UC1", 4, 4, 8, bytes(32))


# ------------------------------------------------------------------------------------ streamer
def test_streamer_holds_until_a_chunk_then_sends_in_time_order():
    st = ActionStreamer(period=0.05)
    st.seed([0.1, 0.2, 0.3])
    c = st.tick(1.0)
    assert c.hold and c.reason == "no clean action ready"
    np.testing.assert_array_equal(c.position, [0.1, 0.2, 0.3])  # the first command starts at the measured state
    chunk = np.arange(12, dtype=float).reshape(4, 3)
    st.push(1.05, chunk)
    sent = [st.tick(1.05 + 0.05 * k + 0.004) for k in range(6)]  # ticks with a little jitter
    assert [c.hold for c in sent] == [False] * 4 + [True, True]
    np.testing.assert_array_equal(np.stack([c.position for c in sent[:4]]), chunk)
    np.testing.assert_array_equal(sent[4].position, chunk[-1])  # starvation holds the last command
    assert [len(c.future) for c in sent[:4]] == [3, 2, 1, 0]
    assert st.counters.sent == 4 and st.counters.holds == 3 and st.counters.starved == 3


def test_streamer_drops_late_actions_and_waits_for_future_ones():
    st = ActionStreamer(period=0.05)
    st.seed([0.0])
    st.push(1.0, np.array([[1.0], [2.0], [3.0]]))
    c = st.tick(1.07)  # the slot of 1.0 has passed (a deadline miss): the next clean slot goes out
    assert not c.hold and c.position[0] == 2.0 and st.counters.late_dropped == 1
    st2 = ActionStreamer(period=0.05)
    st2.seed([0.0])
    st2.push(2.0, np.array([[1.0]]))
    c = st2.tick(1.9)
    assert c.hold and c.reason == "next action is not due yet"


def test_streamer_splices_newer_chunk_and_rejects_nan():
    st = ActionStreamer(period=0.1)
    st.seed([0.0])
    st.push(0.0, np.array([[1.0], [2.0], [3.0], [4.0]]))
    st.push(0.2, np.array([[20.0], [30.0]]))  # replaces the slots 0.2 and 0.3
    assert st.counters.replaced == 2 and len(st) == 4
    assert [st.tick(0.1 * k).position[0] for k in range(4)] == [1.0, 2.0, 20.0, 30.0]
    assert st.push(0.5, np.array([[np.nan]])) == 0 and st.counters.rejected_chunks == 1 and len(st) == 0
    assert st.covers(0.3) is False
    st.push(1.0, np.ones((3, 1)))
    assert st.covers(1.2) and not st.covers(1.3)


def test_streamer_never_blocks_while_a_producer_holds_work():
    """The control tick never waits on inference: with the producer parked in the middle of a solve, every tick
    returns (a hold); then pushes and ticks interleave from two threads and each tick returns exactly one
    command. Behaviour, not a wall-clock bound: a tick that waited on the producer would hang here."""
    st = ActionStreamer(period=0.01)
    st.seed([0.0])
    solving, release = threading.Event(), threading.Event()

    def producer():
        solving.set()
        release.wait()  # a long solve, holding nothing of the streamer's
        t = 0.0
        for _ in range(200):
            st.push(t, np.ones((4, 1)))
            t += 0.04

    th = threading.Thread(target=producer)
    th.start()
    try:
        assert solving.wait(30)
        parked = [st.tick(0.01 * k) for k in range(300)]
        assert all(c.hold for c in parked) and st.counters.holds == 300
        release.set()
        busy = [st.tick(0.01 * k) for k in range(300)]
    finally:
        release.set()
        th.join()
    c = st.counters
    assert len(busy) == 300 and c.sent + c.holds == 600
    assert all(np.all(np.isfinite(x.position)) for x in parked + busy)


# ------------------------------------------------------------------------------------ trajectories
def test_trajectory_points_monotonic_with_velocities():
    p = np.array([[0.0, 1.0], [0.1, 1.0], [0.3, 0.8], [0.4, 0.8]])
    pts = trajectory_points(p, 0.05, start=np.array([0.0, 1.0]))
    t = [q.time_from_start for q in pts]
    assert t == pytest.approx([0.05, 0.10, 0.15, 0.20]) and np.all(np.diff(t) > 0)
    np.testing.assert_allclose(pts[0].velocities, [(0.1 - 0.0) / 0.10, 0.0])  # central difference from start
    np.testing.assert_allclose(pts[1].velocities, [(0.3 - 0.0) / 0.10, (0.8 - 1.0) / 0.10])
    np.testing.assert_allclose(pts[-1].velocities, [0.0, 0.0])  # comes to rest at the end
    one = trajectory_points(np.array([[1.0, 2.0]]), 0.05)
    assert len(one) == 1 and one[0].time_from_start == pytest.approx(0.05)
    with pytest.raises(ValueError):
        trajectory_points(p, 0.05, first_time=0.0)
    assert split_seconds(12.25) == (12, 250_000_000)


def test_trajectory_sampler_interpolates_like_a_position_controller():
    tr = TrajectorySampler(10.0, np.array([0.0]), [10.1, 10.2], np.array([[1.0], [3.0]]))
    assert tr(9.0)[0] == 0.0 and tr(10.05)[0] == pytest.approx(0.5)
    assert tr(10.15)[0] == pytest.approx(2.0) and tr(11.0)[0] == 3.0
    with pytest.raises(ValueError):
        TrajectorySampler(10.0, np.array([0.0]), [10.2, 10.1], np.array([[1.0], [3.0]]))


# ------------------------------------------------------------------------------------ stats
def test_rolling_stats_ticks_and_clock_jumps():
    r = RollingStats(window=100)
    for x in range(1, 101):
        r.add(x / 1000)
    s = r.summary()
    assert s["n"] == 100 and s["p50"] == pytest.approx(0.0505) and s["p99"] == pytest.approx(0.09901)
    t = TickStats(0.05)
    for m in [0.0, 0.05, 0.101, 0.2, 0.25]:
        t.tick(m)
    assert t.ticks == 5 and t.late == 1 and t.jitter.percentile(100) == pytest.approx(0.049)
    c = ClockJumpDetector(0.5)
    assert not c.update(100.0, 1.0) and not c.update(100.05, 1.05)
    assert c.update(0.1, 1.10)  # ROS time jumped back (sim-time switch)


def test_latency_histogram_keeps_percentiles_of_every_sample_in_constant_memory():
    h = LatencyHistogram(bin_s=1e-3, max_s=0.5)
    assert np.isnan(h.percentile(50))
    for x in range(1, 101):
        h.add(x / 1000)  # 1 ... 100 ms
    h.add(float("nan"))  # ignored
    assert h.count == 100
    assert h.percentile(50) == pytest.approx(0.051) and h.percentile(99) == pytest.approx(0.100)
    size = h._bins.size
    for _ in range(10_000):
        h.add(3.0)  # beyond max_s: the last bin
    assert h._bins.size == size and h.percentile(99) == pytest.approx(0.501)
    with pytest.raises(ValueError):
        LatencyHistogram(bin_s=0.0)


def test_relay_plan_drops_and_delays_the_seeded_shares():
    a, b = RelayPlan(0.3, 0.5, 0.4, seed=7), RelayPlan(0.3, 0.5, 0.4, seed=7)
    fates = [a.decide() for _ in range(4000)]
    assert fates == [b.decide() for _ in range(4000)]  # the same seed, the same sequence
    c = a.counts
    assert c["received"] == 4000 == c["passed"] + c["dropped"] + c["delayed"]
    assert c["dropped"] / 4000 == pytest.approx(0.3, abs=0.03)
    assert c["delayed"] / (4000 - c["dropped"]) == pytest.approx(0.5, abs=0.03)
    assert RelayPlan(0.0, 1.0, 0.0).decide() == "pass"  # a zero delay is no delay
    for bad in ({"drop_share": 1.5}, {"delay_share": -0.1}, {"delay_s": -1.0}):
        with pytest.raises(ValueError):
            RelayPlan(**bad)


# ------------------------------------------------------------------------------------ inference thread
class FakePolicy:
    """Policy stand-in: each chunk costs `nfe` calls of `dt` seconds; records what it observed."""

    def __init__(self, nfe=3, dt=0.002, ta=4):
        self.nfe, self.dt, self.ta = nfe, dt, ta
        self.observed, self.resets = [], []
        self._ready, self._left, self.last_nfe = [], 0, 0

    def reset(self, state=None):
        self.resets.append(state)
        self._ready, self._left = [], 0

    def observe(self, obs, stamp):
        self.observed.append(stamp)
        self._left = self.nfe

    def denoise(self, budget=None):
        n = self._left if budget is None else min(budget, self._left)
        time.sleep(n * self.dt)
        self._left -= n
        if self._left == 0 and n:
            self._ready = [np.full(1, self.observed[-1] + i) for i in range(self.ta)]
            self.last_nfe = self.nfe
        return n

    @property
    def num_ready(self):
        return len(self._ready)

    def pop_ready(self, n=None):
        out, self._ready = np.stack(self._ready), []
        return out

    def noise_levels(self):
        return None  # no rolling buffer


def test_worker_conditions_each_chunk_on_the_frame_that_asked_for_it():
    pol = FakePolicy(nfe=5, dt=0.01)
    chunks = []
    w = InferenceWorker(pol, chunks.append, budget=2).start()
    try:
        w.submit(Frame({}, 1.0, time.monotonic(), 1.0, want_chunk=True))
        for k in range(2, 5):  # frames during the solve are observed after it, in order
            w.submit(Frame({}, float(k), time.monotonic(), float(k)))
        deadline = time.monotonic() + 5
        while (not chunks or len(pol.observed) < 4) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert len(chunks) == 1 and chunks[0].actions[0, 0] == 1.0 and chunks[0].nfe == 5
    assert pol.observed == [1.0, 2.0, 3.0, 4.0]
    assert not w.alive


def test_worker_reports_errors_and_resets():
    class Broken(FakePolicy):
        def denoise(self, budget=None):
            raise FloatingPointError("nan")

    pol, errors = Broken(), []
    w = InferenceWorker(pol, lambda c: None, lambda e, f: errors.append(e)).start()
    try:
        w.submit(Frame({}, 1.0, time.monotonic(), 1.0, want_chunk=True))
        w.request_reset(np.zeros(3))
        deadline = time.monotonic() + 5
        while (not errors and not pol.resets) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        w.stop()
    assert w.errors + len(pol.resets) >= 1 and not w.busy

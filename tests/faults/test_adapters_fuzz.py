"""Fuzzing the message adapters (pure logic, no rclpy): JointState -> observation, Image decode, and the
path from a (possibly rejected) input to a published command. Plus the camera watchdog and negative
controls of the fault harness's command checker (it must flag what it is meant to flag)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamdp.ros_nodes.observation import ObservationSync, StateLayout, SyncError, decode_image
from streamdp.ros_nodes.safety import SafetyFilter, SafetyLimits
from streamdp.ros_nodes.safety_oracle import Bounds, violations
from streamdp.ros_nodes.streamer import ActionStreamer

JOINTS = ("joint1", "joint2", "joint3")
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.floats(-4, 4))
names = st.lists(st.sampled_from([*JOINTS, "gripper", "joint4", "", "JOINT1", "joint1 "]), max_size=6)


@st.composite
def joint_msgs(draw):
    n = draw(names)
    size = draw(st.one_of(st.just(len(n)), st.integers(0, 7)))
    pos = draw(st.lists(floats, min_size=size, max_size=size))
    vsize = draw(st.one_of(st.just(len(n)), st.integers(0, 7)))
    vel = draw(st.lists(floats, min_size=vsize, max_size=vsize))
    stamp = draw(st.one_of(st.floats(0, 100), st.just(50.0), st.floats(-1, 0)))
    return stamp, n, pos, vel


def _clean(names_, pos, vel) -> bool:
    """Whether a JointState can be used: every checkpoint joint named, sizes match, finite values."""
    if len(pos) != len(names_) or len(vel) != len(names_) or any(j not in names_ for j in JOINTS):
        return False
    idx = {n: i for i, n in enumerate(names_)}
    f32 = float(np.finfo(np.float32).max)
    return all(math.isfinite(x) and abs(x) <= f32 for j in JOINTS for x in (pos[idx[j]], vel[idx[j]]))


@FUZZ
@given(st.lists(joint_msgs(), min_size=1, max_size=12))
def test_joint_state_adapter_rejects_cleanly_and_never_leaks_a_rejected_input(msgs):
    sync = ObservationSync(StateLayout(JOINTS), max_age=1e9)
    last_accepted = None
    best_stamp = -math.inf
    for stamp, n, pos, vel in msgs:
        ok = sync.add_joint_state(stamp, n, pos, vel)  # never raises
        assert isinstance(ok, bool)
        if ok:
            assert stamp > best_stamp and _clean(n, pos, vel)
            best_stamp = stamp
            idx = {name: i for i, name in enumerate(n)}
            last_accepted = np.array([pos[idx[j]] for j in JOINTS])
        elif stamp > best_stamp and not _clean(n, pos, vel):
            pass  # rejected for its content (counted as rejected / nonfinite)
        res = sync.sample(max(best_stamp, 0.0) + 0.01)
        if last_accepted is None:
            assert res.obs is None and res.reason
        else:
            state = res.obs["observation.state"]
            assert np.all(np.isfinite(state))
            np.testing.assert_allclose(state[:3], last_accepted.astype(np.float32))
            np.testing.assert_array_equal(sync.joint_positions, last_accepted)
    c = sync.counters
    assert c.accepted + c.rejected + c.nonfinite + c.out_of_order + c.duplicate == len(msgs)


ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "RGB8", "16UC1", "yuv422", "", "jpeg"]


@FUZZ
@given(
    st.sampled_from(ENCODINGS), st.integers(-2, 9), st.integers(-2, 9), st.integers(-4, 40),
    st.integers(0, 400), st.one_of(st.none(), st.tuples(st.integers(1, 9), st.integers(1, 9))),
    st.sampled_from([1, 3]),
)
def test_image_decode_returns_the_expected_shape_or_a_clear_rejection(enc, h, w, step, nbytes, hw, ch):
    data = bytes((i * 37) % 256 for i in range(nbytes))
    try:
        img = decode_image(enc, h, w, step, data, hw, ch)
    except SyncError as e:
        assert str(e)  # a clear reason
        return
    assert img.dtype == np.uint8 and img.shape == (h, w, ch)
    assert hw is None or img.shape[:2] == tuple(hw)


@FUZZ
@given(
    st.lists(st.lists(floats, min_size=3, max_size=3), min_size=1, max_size=8),
    st.floats(0.5, 1000.0),
)
def test_policy_output_to_command_path_never_publishes_an_unsafe_value(rows, scale):
    """A chunk (random, NaN/inf, huge) -> ActionStreamer -> SafetyFilter: every command finite, in limits."""
    limits = SafetyLimits(list(JOINTS), [-3.0] * 3, [3.0] * 3, [10.0] * 3, [400.0] * 3, [0.4] * 3, 0.05,
                          escalate_after=4)
    sf = SafetyFilter(limits)
    bounds = Bounds.from_params({"position_min": [-3.0] * 3, "position_max": [3.0] * 3, "max_velocity": [10.0] * 3,
                                 "max_acceleration": [400.0] * 3, "max_delta": [0.4] * 3}, 3, 0.05)
    seed = np.array([0.1, -0.2, 0.3])
    sf.reset(seed)
    streamer = ActionStreamer(0.05)
    streamer.seed(seed)
    with np.errstate(invalid="ignore", over="ignore"):
        actions = np.asarray(rows, dtype=np.float64) * scale
        queued = streamer.push(0.05, actions)
    assert queued == (len(rows) if np.all(np.isfinite(actions)) else 0)  # a NaN/inf chunk is rejected whole
    prev, step = seed, np.zeros(3)
    for k in range(1, len(rows) + 4):
        cmd = streamer.tick(0.05 * k)
        q, _status = sf.hold() if cmd.hold else sf.filter(cmd.position)
        assert violations(q, prev, step, bounds) == []
        prev, step = q, q - prev


def test_camera_dropout_holds_never_a_silent_zero_image():
    sync = ObservationSync(StateLayout(JOINTS), cameras=["top"], max_age=0.25, max_image_age=0.25)
    img = np.full((4, 4, 3), 7, np.uint8)
    sync.add_image("top", 0.0, img)
    for k in range(10):
        t = 0.05 * k
        assert sync.add_joint_state(t, list(JOINTS), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
        res = sync.sample(t)
        if t <= 0.25 + 1e-9:
            assert res.obs is not None and np.array_equal(res.obs["observation.images.top"], img)
        else:  # the camera stopped: no observation at all (the streamer runs its queue out, then holds)
            assert res.obs is None and "camera 'top' dropped out" in res.reason
    assert sync.add_image("top", 0.5, img) and sync.sample(0.5).obs is not None  # recovers with the camera


def test_command_checker_flags_unsafe_commands():
    """Negative control of the fault harness: the checker must report what it exists to catch."""
    from streamdp.ros_nodes.safety_oracle import check_commands

    bounds = Bounds.from_params({"position_min": [-1.0] * 3, "position_max": [1.0] * 3, "max_velocity": [4.0] * 3,
                                 "max_acceleration": [100.0] * 3, "max_delta": [0.2] * 3}, 3, 0.05)
    seed = np.zeros(3)

    def run(points_list):
        log = [{"points": np.atleast_2d(p), "hold": False, "segment": 1, "status": "", "reason": ""}
               for p in points_list]
        return check_commands(log, bounds, {1: seed})

    assert run([[0.1, 0, 0], [0.2, 0, 0]]).unsafe == 0
    assert run([[0.5, 0, 0]]).unsafe == 1  # a jump
    assert run([[np.nan, 0, 0]]).unsafe == 1  # non-finite
    assert run([[0.1, 0, 0], [0.2, 0, 0], [0.3, 0, 0], [0.4, 0, 0], [0.5, 0, 0], [0.6, 0, 0], [0.7, 0, 0],
                [0.8, 0, 0], [0.9, 0, 0], [1.0, 0, 0], [1.1, 0, 0]]).unsafe == 1  # position limit
    assert run([[0.15, 0, 0], [0.0, 0, 0]]).unsafe == 1  # acceleration: +0.15 then -0.15 in one tick
    assert run([[[0.1, 0, 0], [0.5, 0, 0]]]).unsafe == 1  # a look-ahead point jumps

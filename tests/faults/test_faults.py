"""Fault injection on the real nodes (sim_bridge_node + policy_node over rclpy, in this process).

For every fault and seeded trial, every command the policy node publishes (each trajectory point) is
checked: finite, within the position limits, |step| within the delta/velocity limit, |step change|
within the acceleration limit (the oracle of streamdp.ros_nodes.safety_oracle), chained across the whole
trial, each activation from its measured joint state. Then the expected transition (docs/safety.md): a
hold within a stated number of ticks, and recovery after the fault clears (or after re-activation, where
the table says so).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import RESULTS

pytestmark = pytest.mark.slow

SEEDS = [1, 2]
PRE, FAULT, AFTER = 16, 30, 40  # ticks before / during / after a fault
TA, DELAY, RATE, MAX_OBS_AGE = 5, 1, 20.0, 0.25  # the bundled checkpoint and config/ros/sim.yaml
# Stale input: the last fresh sample is used for MAX_OBS_AGE, a chunk requested then still runs for
# up to Ta actions after its delay, plus slack for a loaded machine (an inference of ~2 ticks).
STALE_HOLD_BOUND = math.ceil(MAX_OBS_AGE * RATE) + DELAY + TA + 4
OUTPUT_HOLD_BOUND = TA + DELAY + 4  # the queue of clean actions in flight, then hold
JOINTS = ["joint1", "joint2", "joint3"]


def _record(fault: str, seed: int, rep, mark: int | None = None, end: int | None = None) -> None:
    """One row of the report: the first hold after the injection, and from when on it held for good."""
    first = rep.ticks_to_hold(mark) if mark is not None else None
    sustained = rep.ticks_to_sustained_hold(mark, end) if mark is not None and end is not None else None
    RESULTS.append({"fault": fault, "seed": seed, "commands": rep.commands, "points": rep.points,
                    "unsafe": rep.unsafe, "ticks_to_first_hold": first, "ticks_to_sustained_hold": sustained})
    print(f"\n{fault} seed={seed}: commands={rep.commands} points={rep.points} unsafe={rep.unsafe} "
          f"first_hold={first} sustained_hold={sustained}")


def _assert_safe(rep) -> None:
    assert rep.commands > 0
    assert rep.unsafe == 0, rep.violations[:5]


def _assert_escalated(rep, mark: int, end: int, n: int) -> None:
    """Clamped commands escalate to a latched hold after at most `n` non-hold commands from the first clamp
    (holds in between, e.g. a slow inference on a loaded machine, do not reset the clamp count)."""
    sus = rep.ticks_to_sustained_hold(mark, end)
    assert sus is not None and sus <= (end - mark) - 5, rep.holds[mark:end]
    start = mark + sus
    status = [e["status"] for e in rep.log]
    first = next(i for i in range(mark, start + 1) if status[i] in ("clamped", "holding"))
    assert sum(not h for h in rep.holds[first:start]) <= n, status[mark:end]


def _stale_input_trial(rig, seed: int, fault: str, inject) -> None:
    """The robot's stream stops; `inject()` (if any) publishes bad JointStates instead, every tick."""
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    s0 = rig.node.stats()
    mark = rig.mark()
    rig.sim_pause()
    rig.run_ticks(FAULT, every_tick=inject)
    end = rig.mark()
    s1 = rig.node.stats()
    rig.sim_resume()
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)
    t = rep.ticks_to_hold(mark)
    _record(fault, seed, rep, mark, end)
    assert t is not None and t <= STALE_HOLD_BOUND, (t, s1)
    assert rep.held_from(mark + STALE_HOLD_BOUND, end), rep.holds[mark:end]  # held for the rest of the fault
    assert s1["stale_ticks"] > s0["stale_ticks"]
    recovered = rep.first_action_after(resume)
    assert recovered is not None, rep.stats  # clean actions again once the stream is back
    return s0, s1


@pytest.mark.parametrize("seed", SEEDS)
def test_stream_stops_then_resumes(rig, seed):
    _stale_input_trial(rig, seed, "stream stops", None)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("seed", SEEDS)
def test_nonfinite_joint_positions(rig, seed, bad):
    def inject():
        rig.injector.publish(JOINTS, [0.1, bad, -0.2], [0.0, 0.0, bad])

    s0, s1 = _stale_input_trial(rig, seed, f"{bad} joint positions", inject)
    assert s1["nonfinite_inputs"] > s0["nonfinite_inputs"]


@pytest.mark.parametrize("seed", SEEDS)
def test_wrong_joint_names(rig, seed):
    def inject():
        rig.injector.publish(["shoulder", "elbow", "wrist"], [0.1, 0.2, 0.3])

    s0, s1 = _stale_input_trial(rig, seed, "wrong joint names", inject)
    assert s1["rejected_msgs"] > s0["rejected_msgs"]


@pytest.mark.parametrize("seed", SEEDS)
def test_out_of_order_and_duplicate_stamps(rig, seed):
    def inject():
        rig.injector.republish_latest(-0.3)  # older than what was accepted: out of order
        rig.injector.republish_latest(0.0)  # the same stamp again: duplicate

    rig.start_trial(seed)
    rig.run_ticks(PRE)
    s0 = rig.node.stats()
    rig.run_ticks(FAULT, every_tick=inject)
    s1 = rig.node.stats()
    rep = rig.finish()
    _assert_safe(rep)
    _record("out-of-order/duplicate stamps", seed, rep)
    assert s1["out_of_order_drops"] > s0["out_of_order_drops"] and s1["duplicate_drops"] > s0["duplicate_drops"]
    assert s1["actions_sent"] > s0["actions_sent"]  # dropped and counted; the stream goes on
    assert s1["fault"] == ""


@pytest.mark.parametrize("seed", SEEDS)
def test_nan_from_the_network(rig, seed):
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    s0 = rig.node.stats()
    mark = rig.mark()
    rig.node.hooks.output = lambda a: a * np.nan
    rig.run_ticks(FAULT)
    end = rig.mark()
    s1 = rig.node.stats()
    rig.node.hooks.output = None
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)
    t = rep.ticks_to_hold(mark)
    _record("NaN from the network", seed, rep, mark, end)
    assert s1["nonfinite_outputs"] > s0["nonfinite_outputs"]
    assert t is not None and t <= OUTPUT_HOLD_BOUND
    assert rep.held_from(mark + OUTPUT_HOLD_BOUND, end), rep.holds[mark:end]
    assert rep.first_action_after(resume) is not None  # buffer reset from the measured state, streams again


@pytest.mark.parametrize("seed", SEEDS)
def test_huge_jumps_are_clamped_then_held(rig, seed):
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    mark = rig.mark()
    rig.node.hooks.output = lambda a: a * 100.0
    rig.run_ticks(FAULT)
    end = rig.mark()
    s1 = rig.node.stats()
    rig.node.hooks.output = None
    rig.run_ticks(10)
    assert rig.node.fault  # latched: holds until re-activated
    rig.deactivate()
    rig.activate()
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)
    n = rig.limits.escalate_after
    bound = OUTPUT_HOLD_BOUND + n
    t = rep.ticks_to_hold(mark)
    _record("policy output x100", seed, rep, mark, end)
    assert "consecutive clamped" in s1["fault"] and s1["safety_clamped"] >= n
    assert t is not None and t <= bound
    _assert_escalated(rep, mark, end, n)
    assert rep.first_action_after(resume) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_inference_five_times_slower_than_the_period(rig, seed):
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    s0 = rig.node.stats()
    mark = rig.mark()
    rig.node.hooks.inference_delay_s = 5.0 / RATE
    rig.run_ticks(FAULT)
    end = rig.mark()
    s1 = rig.node.stats()
    rig.node.hooks.inference_delay_s = 0.0
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)
    _record("inference 5x slower", seed, rep, mark)
    assert s1["deadline_misses"] > s0["deadline_misses"]
    # Late actions are skipped (only the next clean slots are sent); the arm holds in between.
    assert s1["late_actions_dropped"] > s0["late_actions_dropped"]
    assert sum(rep.holds[mark:end]) >= (end - mark) // 2
    assert s1["fault"] == ""
    assert rep.first_action_after(resume) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_backward_clock_jump_holds_until_reactivated(rig, seed):
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    mark = rig.mark()
    rig.node.hooks.clock_offset_s = -5.0
    rig.run_ticks(FAULT)
    s1 = rig.node.stats()
    rig.node.hooks.clock_offset_s = 0.0
    rig.run_ticks(5)
    still = rig.mark()
    assert rig.node.fault  # the clock is back, but the node holds until re-activated
    rig.deactivate()
    rig.activate()
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)
    t = rep.ticks_to_hold(mark)
    _record("backward clock jump", seed, rep, mark, still)
    assert "clock jumped" in s1["fault"]
    assert t is not None and t <= 2
    assert rep.held_from(mark + 2, still)
    # re-activation clears the clock fault and actions flow again
    assert rep.first_action_after(resume) is not None
    assert "clock jumped" not in rig.node.fault


@pytest.mark.parametrize("seed", SEEDS)
def test_deactivate_and_activate_mid_motion(rig, seed):
    rig.start_trial(seed)
    rig.run_ticks(PRE)
    rig.deactivate()
    last = rig.node.command_log[-1]
    assert last["hold"] and last["lifecycle"] == "active"  # the final hold as it deactivates
    n = len(rig.node.command_log)
    rig.spin(0.3)
    assert len(rig.node.command_log) == n  # inactive: nothing published
    rig.activate()
    seed_q = rig.seeds[rig.node.segment]
    resume = rig.mark()
    rig.run_ticks(AFTER)
    rep = rig.finish()
    _assert_safe(rep)  # includes: the first command after re-activation is within one step of the seed
    _record("deactivate/activate mid-motion", seed, rep)
    first = rep.log[resume]["points"][0]
    assert np.all(np.abs(first - seed_q) <= rig.bounds.step + 1e-9)
    assert rep.first_action_after(resume) is not None


def test_float64_output_is_filtered_and_every_command_reaches_the_wire(ros_env, bundled_ckpt):
    """forward_command_controller output: the same filter; the DDS-side recording matches the node's log."""
    import rclpy
    from rclpy.context import Context

    from tests.ros.helpers import CommandRecorder

    from .conftest import LIMITS, release
    from .rig import FaultRig

    ctx = Context()
    rclpy.init(context=ctx)
    rig = FaultRig(ctx, str(bundled_ckpt), LIMITS, output_type="float64_multi_array")
    rec = CommandRecorder(context=ctx)
    rig.ex.add_node(rec)
    try:
        rig.start_trial(3)
        rig.run_ticks(PRE)
        mark = rig.mark()
        rig.node.hooks.output = lambda a: a * 100.0
        rig.run_ticks(FAULT)
        end = rig.mark()
        rig.spin(0.3)
        n_wire = len(rec.arrays)
        rep = rig.finish()
        rig.spin(0.3)
        _assert_safe(rep)
        _record("policy output x100 (Float64MultiArray)", 3, rep, mark, end)
        assert all(e["points"].shape[0] == 1 for e in rep.log)
        _assert_escalated(rep, mark, end, rig.limits.escalate_after)
        wire = np.array([m.data for m in rec.arrays])
        logged = np.array([e["points"][0] for e in rep.log])
        assert n_wire > 0 and len(wire) == len(logged), (len(wire), len(logged))  # none lost, none extra
        np.testing.assert_allclose(wire, logged)  # what was checked is what went out
    finally:
        rig.close()
        rec.destroy_node()
        release(ctx)


def _own_rig(ctx_holder: list, ckpt, limits=None, **kw):
    import rclpy
    from rclpy.context import Context

    from .conftest import LIMITS
    from .rig import FaultRig

    ctx = Context()
    rclpy.init(context=ctx)
    ctx_holder.append(ctx)
    return FaultRig(ctx, str(ckpt), limits or LIMITS, **kw)


def test_camera_stops_then_resumes(ros_env, untrained_image_ckpt):
    """An image policy on the image-mode sim: the camera stream stops while joint states go on. The per-camera
    watchdog holds within the queue + image-age bound (never a silent zero image), and actions resume once
    frames are back. The random-weight image policy's chunks are replaced by a gentle motion around the
    measured state, so what is judged is the watchdog, not the policy."""
    from .conftest import release

    max_image_age = 0.25
    held: list = []
    rig = _own_rig(held, untrained_image_ckpt, sim_params={"obs_mode": "image"},
                   state_layout=["joint_state.position", "joint_state.velocity"], camera_names=["top"],
                   camera_topics=["/camera/top/image_raw"], max_image_age_s=max_image_age)
    bound = math.ceil(max_image_age * RATE) + DELAY + TA + 4
    try:
        for seed in SEEDS:
            rig.start_trial(seed)
            rig.node.hooks.output = lambda a: np.repeat(rig.measured()[None], len(a), 0) + 0.01
            rig.run_ticks(PRE)
            s0 = rig.node.stats()
            assert s0["chunks"] >= 1 and s0["image_rejected"] == 0, s0
            mark = rig.mark()
            rig.cameras(False)
            rig.run_ticks(FAULT)
            end = rig.mark()
            s1 = rig.node.stats()
            rig.cameras(True)
            resume = rig.mark()
            rig.run_ticks(AFTER)
            rep = rig.finish()
            _assert_safe(rep)
            _record("camera stops", seed, rep, mark, end)
            t = rep.ticks_to_hold(mark)
            assert t is not None and t <= bound, (t, s1)
            assert rep.held_from(mark + bound, end), rep.holds[mark:end]
            assert s1["stale_ticks"] > s0["stale_ticks"]
            assert "camera 'top' dropped out" in s1["stale_reason"], s1["stale_reason"]
            assert rep.first_action_after(resume) is not None, rep.stats  # frames back: actions again
    finally:
        rig.close()
        release(held[0])


def test_workspace_box_from_the_urdf(ros_env, bundled_ckpt):
    """limits.urdf + limits.tip_link + a workspace box: a policy forced toward a pose whose tip is outside the
    box is refused, the arm brakes to rest inside it (every published point's tip checked by FK), and the
    clamps escalate to a latched hold."""
    from pathlib import Path

    from streamdp.ros_nodes.kinematics import UrdfChain

    from .conftest import LIMITS, release

    urdf = Path(__file__).resolve().parents[2] / "sim" / "assets" / "arm_reach_dynamic.urdf"
    box = {"workspace_min": [-0.75, -0.25, -1.0], "workspace_max": [0.75, 0.75, 1.0]}
    held: list = []
    rig = _own_rig(held, bundled_ckpt, {**LIMITS, **box, "urdf": str(urdf), "tip_link": "ee_link"})
    chain = UrdfChain(urdf, "ee_link", JOINTS)
    outside = np.array([-1.5, 0.0, 0.0])  # arm stretched along -y: tip at y = -0.70
    try:
        assert rig.node.safety.fk is not None
        trials = 0
        for seed in range(1, 40):
            rig.start_trial(seed)
            if not rig.node.safety.in_workspace(rig.seeds[rig.node.segment]):
                rig.finish()  # an episode starting outside the box: every command is refused; next one
                continue
            rig.run_ticks(PRE)
            mark = rig.mark()
            rig.node.hooks.output = lambda a: np.repeat(outside[None], len(a), 0)
            rig.run_ticks(FAULT)
            s1 = rig.node.stats()
            for _ in range(2 * FAULT):  # on a loaded machine, starved-inference holds thin out the clamps
                if "consecutive clamped" in s1["fault"]:
                    break
                rig.run_ticks(1)
                s1 = rig.node.stats()
            end = rig.mark()
            rep = rig.finish()
            _assert_safe(rep)  # includes the workspace check of every point
            _record("workspace box (policy forced outside)", seed, rep, mark, end)
            tips = np.array([chain.fk(p) for e in rep.log for p in e["points"]])
            assert tips[:, 1].min() >= -0.25 - 1e-6, tips[:, 1].min()
            _assert_escalated(rep, mark, end, rig.limits.escalate_after)
            assert s1["safety_clamped"] >= 1 and "consecutive clamped" in s1["fault"], s1
            trials += 1
            if trials == len(SEEDS):
                break
        assert trials == len(SEEDS)
    finally:
        rig.close()
        release(held[0])

"""The safety filter, judged by an independent oracle (streamdp.ros_nodes.safety_oracle): every command it returns is
checked against the raw limit numbers (finite, position range, |dq| per tick, velocity, acceleration, the
workspace box through the URDF chain's FK), never against the filter's own idea of them."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdp.ros_nodes.safety import SafetyConfigError, SafetyFilter, SafetyLimits, SafetyStatus
from streamdp.ros_nodes.safety_oracle import Bounds, urdf_limits, violations

NAMES = ["j1", "j2", "j3"]
BASE = dict(position_lower=[-1.0, -2.0, -1.5], position_upper=[1.0, 2.0, 1.5], max_velocity=2.0,
            max_acceleration=40.0, max_delta=0.08, dt=0.05, escalate_after=5)


def limits(**kw) -> SafetyLimits:
    return SafetyLimits.from_dict({"joint_names": NAMES, **BASE, **kw})


def bounds(fk=None, **kw) -> Bounds:
    """The oracle's copy of the same numbers (parameter names: position_min, workspace_min, ...)."""
    d = {**BASE, **kw}
    names = {"position_lower": "position_min", "position_upper": "position_max", "workspace_lower": "workspace_min",
             "workspace_upper": "workspace_max"}
    return Bounds.from_params({names.get(k, k): v for k, v in d.items()}, len(NAMES), d["dt"], fk=fk)


def run(filt: SafetyFilter, commands, b: Bounds) -> tuple[list[np.ndarray], list[SafetyStatus]]:
    """Every command through the filter; each output checked by the oracle against the one before."""
    prev, prev_step = filt.last_command, np.zeros(len(filt.last_command))
    outs, sts = [], []
    for c in commands:
        q, s = filt.filter(c)
        assert violations(q, prev, prev_step, b) == [], (c, q, s)
        prev_step, prev = q - prev, q
        outs.append(q)
        sts.append(s)
    return outs, sts


def test_ok_commands_pass_unchanged():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0])
    cmds = [np.array([0.01, -0.01, 0.0]) * (i + 1) for i in range(5)]
    outs, sts = run(f, cmds, bounds())
    assert all(s is SafetyStatus.OK for s in sts)
    np.testing.assert_allclose(outs[-1], cmds[-1])


def test_nan_and_inf_never_published():
    f = SafetyFilter(limits())
    f.reset([0.1, 0.2, 0.3])
    outs, sts = run(f, [[np.nan, 0, 0], [0, np.inf, 0], [0.1, 0.2, 0.3]], bounds())
    assert sts[:2] == [SafetyStatus.FAULT, SafetyStatus.FAULT]
    assert all(np.isfinite(o).all() for o in outs)
    assert f.counts["fault"] == 2


def test_huge_jump_is_rate_limited_then_escalates_to_hold():
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0])
    outs, sts = run(f, [[1.0, 2.0, -1.5]] * 12, bounds())
    assert sts[0] is SafetyStatus.CLAMPED
    assert np.max(np.abs(outs[0])) <= 0.08 + 1e-12
    # after escalate_after consecutive clamps the filter latches a hold (decelerating, then still)
    assert sts[4] is SafetyStatus.HOLDING and all(s is SafetyStatus.HOLDING for s in sts[5:])
    assert np.allclose(outs[-1], outs[-2])
    f.reset(outs[-1])  # re-activation clears the latch
    _, s = f.filter(outs[-1])
    assert s is SafetyStatus.OK


def run_with_holds(filt: SafetyFilter, commands, b: Bounds) -> tuple[list[np.ndarray], list[SafetyStatus]]:
    """As :func:`run`; a None command is a tick without an action (the node holds: ``hold()``)."""
    prev, prev_step = filt.last_command, np.zeros(len(filt.last_command))
    outs, sts = [], []
    for c in commands:
        q, s = filt.hold() if c is None else filt.filter(c)
        assert violations(q, prev, prev_step, b) == [], (c, q, s)
        prev_step, prev = q - prev, q
        outs.append(q)
        sts.append(s)
    return outs, sts


def ramp(speed: float, ticks: range) -> list[np.ndarray]:
    """A plan moving joint 2 (limits +-2 rad) at `speed` rad per tick, the others still, at the given ticks."""
    return [np.array([0.0, speed * k, 0.0]) for k in ticks]


def test_catching_up_after_a_hold_does_not_escalate():
    """A plan at 0.06 rad/tick (limit 0.08); three ticks without an action (a late chunk); the plan resumes
    where it would be by now. The arm closes the gap at 0.02 rad/tick: 12 rate-limited ticks, more than
    escalate_after = 5, and not one of them counts as a clamp: no latch, and it ends on the plan."""
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0])
    plan = ramp(0.06, range(1, 6)) + [None] * 3 + ramp(0.06, range(9, 26))
    outs, sts = run_with_holds(f, plan, bounds())
    after = sts[8:]
    assert SafetyStatus.CATCHING_UP in after and SafetyStatus.CLAMPED not in after, after
    assert sum(s is SafetyStatus.CATCHING_UP for s in after) > f.limits.escalate_after
    assert not f.latched and f.consecutive_clamps == 0 and f.counts["clamped"] == 0
    np.testing.assert_allclose(outs[-1], plan[-1])  # caught up


def test_a_plan_faster_than_the_limit_still_escalates_after_a_hold():
    """After the hold the plan resumes within reach but runs at 0.1 rad/tick against a 0.08 limit: the gap
    grows once the arm is at full speed, so it is pushing past the limits: clamps, then the latch."""
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0])
    plan = ramp(0.06, range(1, 4)) + [None] * 3 + [np.array([0.0, 0.18 + 0.1 * k, 0.0]) for k in range(1, 14)]
    _, sts = run_with_holds(f, plan, bounds())
    assert sts[6] is SafetyStatus.CATCHING_UP  # the first step after the hold is within what the hold explains
    assert f.latched and SafetyStatus.CLAMPED in sts
    first = sts.index(SafetyStatus.CLAMPED)
    assert first <= 8 and sts.index(SafetyStatus.HOLDING, first) - first == f.limits.escalate_after - 1


def test_a_jump_larger_than_the_hold_explains_still_escalates():
    """One tick of hold explains 2 step limits of gap, not 1 rad: the jump counts as clamps and latches."""
    f = SafetyFilter(limits())
    f.reset([0.0, 0.0, 0.0])
    _, sts = run_with_holds(f, [None] + [[1.0, 0.0, 0.0]] * 8, bounds())
    assert SafetyStatus.CATCHING_UP not in sts and f.latched


def test_a_position_limit_clamp_after_a_hold_counts():
    f = SafetyFilter(limits())
    f.reset([0.95, 0.0, 0.0])
    _, sts = run_with_holds(f, [None, None] + [[1.2, 0.0, 0.0]] * 6, bounds())
    assert SafetyStatus.CATCHING_UP not in sts and f.latched


def test_position_limits_and_wrong_size():
    f = SafetyFilter(limits(max_delta=10.0, max_velocity=1000.0, max_acceleration=1e9))
    f.reset([0.95, 0.0, 0.0])
    q, s = f.filter([1.5, 0.0, 0.0])
    assert s is SafetyStatus.CLAMPED and q[0] == pytest.approx(1.0, abs=1e-6) and q[0] <= 1.0
    q, s = f.filter([0.0, 0.0])
    assert s is SafetyStatus.FAULT and q.shape == (3,)


def test_hold_decelerates_within_acceleration_limit():
    f = SafetyFilter(limits(max_delta=1.0, max_velocity=100.0, max_acceleration=20.0))
    f.reset([0.0, 0.0, 0.0])
    prev, prev_step = f.last_command, np.zeros(3)
    for _ in range(10):  # accelerate
        q, _ = f.filter(prev + prev_step + 0.04)
        prev_step, prev = q - prev, q
    speed = np.abs(prev_step).max()
    assert speed > 0.1
    steps = []
    b = bounds(max_delta=1.0, max_velocity=100.0, max_acceleration=20.0)
    for _ in range(20):
        q, s = f.hold(SafetyStatus.STALE)
        assert violations(q, prev, prev_step, b) == []
        steps.append(np.abs(q - prev).max())
        prev_step, prev = q - prev, q
    assert steps[-1] == 0.0 and all(a >= b for a, b in zip(steps, steps[1:]))


def test_workspace_box_refuses_target():
    def fk(q):
        return np.array([np.cos(q[0]), np.sin(q[0]), 0.0])

    f = SafetyFilter(limits(workspace_lower=[-2, -0.05, -1], workspace_upper=[2, 0.05, 1]), fk=fk)
    f.reset([0.0, 0.0, 0.0])
    q, s = f.filter([0.08, 0.0, 0.0])  # ee y = sin(0.08) > 0.05: outside
    assert s is SafetyStatus.CLAMPED and q[0] == 0.0


def test_config_errors():
    with pytest.raises(SafetyConfigError, match="unknown safety keys"):
        SafetyLimits.from_dict({"joint_names": NAMES, "dt": 0.1, "max_vel": 1})
    with pytest.raises(SafetyConfigError, match="3 joints"):
        limits(position_lower=[0, 0])
    with pytest.raises(SafetyConfigError, match="dt or control_rate_hz"):
        SafetyLimits.from_dict({"joint_names": NAMES})


def test_urdf_limits(tmp_path):
    urdf = tmp_path / "arm.urdf"
    urdf.write_text("""<robot name="a">
      <joint name="j1" type="revolute"><limit lower="-1.2" upper="1.3" velocity="2.5" effort="1"/></joint>
      <joint name="j2" type="continuous"/>
      <joint name="j3" type="prismatic"><limit lower="0" upper="0.4" velocity="0.5" effort="1"/></joint>
    </robot>""")
    lim = SafetyLimits.from_dict({"urdf": str(urdf), "joint_names": NAMES, "control_rate_hz": 20, "max_delta": 0.1})
    assert lim.position_lower.tolist() == [-1.2, -np.inf, 0.0]
    assert lim.max_velocity.tolist() == [2.5, np.inf, 0.5]
    assert np.allclose(lim.step_limit, [0.1, 0.1, 0.025])
    with pytest.raises(SafetyConfigError, match="not in URDF"):
        SafetyLimits.from_urdf(urdf, ["j1", "nope"], 0.05)


finite_or_not = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan")), st.just(float("inf")), st.just(-float("inf"))
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(finite_or_not, min_size=3, max_size=3), min_size=1, max_size=40),
       st.lists(st.floats(-0.9, 0.9), min_size=3, max_size=3))
def test_property_every_output_is_safe(commands, start):
    """Whatever the policy asks for, every published command is finite and within every limit."""
    f = SafetyFilter(limits())
    f.reset(start)
    run(f, commands, bounds())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(st.floats(-3, 3), min_size=3, max_size=3)), min_size=1, max_size=60),
       st.lists(st.floats(-0.9, 0.9), min_size=3, max_size=3))
def test_property_holds_and_catching_up_stay_safe(commands, start):
    """Holds (None) interleaved with any commands: catching up is never a way around a limit."""
    f = SafetyFilter(limits())
    f.reset(start)
    run_with_holds(f, commands, bounds())


ARM_URDF = __import__("pathlib").Path(__file__).resolve().parents[2] / "sim" / "assets" / "arm_reach_dynamic.urdf"
ARM_JOINTS = ["joint1", "joint2", "joint3"]
BOX = dict(workspace_lower=[-0.2, -0.5, -1.0], workspace_upper=[0.65, 0.65, 1.0])


def arm_filter(**kw) -> SafetyFilter:
    from streamdp.ros_nodes.kinematics import UrdfChain

    base = dict(joint_names=ARM_JOINTS, urdf=str(ARM_URDF), max_acceleration=60.0, max_delta=0.25,
                control_rate_hz=20, escalate_after=1000, **BOX)
    base.update(kw)
    return SafetyFilter(SafetyLimits.from_dict(base), fk=UrdfChain(ARM_URDF, "ee_link", ARM_JOINTS))


def arm_bounds() -> Bounds:
    """The oracle's limits of arm_filter(): the URDF's own numbers, the box, FK of the URDF chain."""
    from streamdp.ros_nodes.kinematics import UrdfChain

    p = {**urdf_limits(ARM_URDF, ARM_JOINTS), "max_acceleration": 60.0, "max_delta": 0.25,
         "workspace_min": BOX["workspace_lower"], "workspace_max": BOX["workspace_upper"]}
    return Bounds.from_params(p, 3, 0.05, fk=UrdfChain(ARM_URDF, "ee_link", ARM_JOINTS).fk)


def test_urdf_chain_matches_mujoco():
    """FK of the shipped URDF equals MuJoCo's `ee` site of the task's MJCF at random joint positions."""
    import mujoco

    from streamdp.ros_nodes.kinematics import UrdfChain
    from streamdp.sim import make_task

    env = make_task("arm_reach_dynamic", "state", seed=0).unwrapped
    chain = UrdfChain(ARM_URDF, "ee_link", ARM_JOINTS)
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(env.q_low, env.q_high)
        env.data.qpos[:3] = q
        mujoco.mj_forward(env.model, env.data)
        np.testing.assert_allclose(chain.fk(q), env.data.site_xpos[env._ee], atol=1e-9)


def test_urdf_chain_errors(tmp_path):
    from streamdp.ros_nodes.kinematics import KinematicsError, UrdfChain

    with pytest.raises(KinematicsError, match="tip link 'hand'"):
        UrdfChain(ARM_URDF, "hand", ARM_JOINTS)
    with pytest.raises(KinematicsError, match="'joint3' on the chain"):
        UrdfChain(ARM_URDF, "ee_link", ["joint1", "joint2"])
    with pytest.raises(KinematicsError, match=r"\['joint9'\] are not on the chain"):
        UrdfChain(ARM_URDF, "link2", ["joint1", "joint2", "joint9"])
    with pytest.raises(KinematicsError, match="not valid XML"):
        UrdfChain("<robot><link", "ee_link", ARM_JOINTS)
    with pytest.raises(KinematicsError, match="neither a readable file"):
        UrdfChain(tmp_path / "missing.urdf", "ee_link", ARM_JOINTS)
    with pytest.raises(SafetyConfigError, match="below workspace_upper"):
        limits(workspace_lower=[0, 0, 0], workspace_upper=[1, -1, 1])


def test_urdf_chain_rpy_and_prismatic():
    """A non-planar chain: rpy origins and a prismatic joint, against hand-computed poses."""
    from streamdp.ros_nodes.kinematics import UrdfChain

    urdf = """<robot name="r"><link name="b"/><link name="l1"/><link name="l2"/><link name="t"/>
      <joint name="a" type="revolute"><parent link="b"/><child link="l1"/>
        <origin xyz="0 0 1" rpy="1.5707963267948966 0 0"/>
        <axis xyz="0 0 1"/><limit lower="-3" upper="3" velocity="1" effort="1"/></joint>
      <joint name="p" type="prismatic"><parent link="l1"/><child link="l2"/><axis xyz="1 0 0"/>
        <limit lower="0" upper="1" velocity="1" effort="1"/></joint>
      <joint name="f" type="fixed"><parent link="l2"/><child link="t"/><origin xyz="0 0.5 0"/></joint></robot>"""
    c = UrdfChain(urdf, "t", ["p", "a"])
    # rpy roll 90 deg maps the link's y onto world z; the revolute turns about the link's z (world -y)
    np.testing.assert_allclose(c.fk([0.0, 0.0]), [0, 0, 1.5], atol=1e-12)
    np.testing.assert_allclose(c.fk([0.3, 0.0]), [0.3, 0, 1.5], atol=1e-12)
    np.testing.assert_allclose(c.fk([0.0, np.pi / 2]), [-0.5, 0, 1.0], atol=1e-12)


def test_workspace_box_counts_the_stopping_distance():
    """Heading for the box wall at speed, the filter holds early enough that the braking arm stops inside."""
    f = arm_filter()
    q = np.array([0.0, -1.2, 0.0])
    assert f.in_workspace(q)
    f.reset(q)
    outs, sts = run(f, [[0.0, 1.2, 0.0]] * 30, arm_bounds())  # unfold fast toward x > 0.65
    assert SafetyStatus.CLAMPED in sts
    tips = np.array([f.fk(o) for o in outs])
    assert tips[:, 0].max() <= 0.65 + 1e-6, tips[:, 0].max()
    steps = np.diff(np.vstack([q, *outs]), axis=0)
    assert np.abs(steps[-1]).max() < 1e-9  # came to rest


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3), min_size=1, max_size=40),
       st.integers(0, 10_000))
def test_property_workspace_box_holds(commands, seed):
    """Any command stream from any start inside the box: every published tip position stays in the box."""
    f = arm_filter()
    rng = np.random.default_rng(seed)
    while True:
        start = rng.uniform([-3, -2.5, -2.5], [3, 2.5, 2.5])
        if f.in_workspace(start):
            break
    f.reset(start)
    run(f, commands + [commands[-1]] * 15, arm_bounds())  # the oracle checks each tip against the box


@pytest.mark.parametrize("config", ["sim", "sim_image"])
def test_sim_params_limits_are_the_urdf_limits(config):
    """config/ros/sim*.yaml turn the safety filter on with the arm URDF's position and velocity limits."""
    import yaml

    doc = yaml.safe_load((ARM_URDF.parents[2] / "config" / "ros" / f"{config}.yaml").read_text())
    lim = doc["policy_node"]["ros__parameters"]["limits"]
    urdf = SafetyLimits.from_urdf(ARM_URDF, ARM_JOINTS, 0.05)
    np.testing.assert_allclose(lim["position_min"], urdf.position_lower)
    np.testing.assert_allclose(lim["position_max"], urdf.position_upper)
    np.testing.assert_allclose(lim["max_velocity"], urdf.max_velocity)
    # the expert moves at most 0.25 rad per tick: a policy that imitates it streams unclamped
    assert min(lim["max_delta"]) > 0.25 and min(lim["max_velocity"]) * 0.05 > 0.25


def test_unset_position_limits_mean_unlimited():
    """Only motion limits given (no position_min/max, no URDF): commands stay finite and move the arm.
    An unset lower limit once defaulted to +inf, so every command came out as inf."""
    lim = SafetyLimits.from_dict({"joint_names": NAMES, "control_rate_hz": 20, "max_delta": 0.1})
    assert np.all(lim.position_lower == -np.inf) and np.all(lim.position_upper == np.inf)
    f = SafetyFilter(lim)
    f.reset([0.0, 0.0, 0.0])
    outs, sts = run(f, [[1.0, -1.0, 0.05]] * 3, bounds(position_lower=None, position_upper=None, max_velocity=None,
                                                        max_acceleration=None, max_delta=0.1))
    np.testing.assert_allclose(outs[0], [0.1, -0.1, 0.05])
    assert sts[0] is SafetyStatus.CLAMPED and np.all(np.isfinite(outs))

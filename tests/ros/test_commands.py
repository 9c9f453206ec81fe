"""The policy node's command pipeline and parameter table, without rclpy (streamdp.ros_nodes.commands/params)."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.ros_nodes.commands import decide
from streamdp.ros_nodes.params import PARAMETERS, ParameterError, Unset, read_settings, safety_filter_from
from streamdp.ros_nodes.safety import SafetyFilter, SafetyLimits
from streamdp.ros_nodes.safety_oracle import Bounds, violations

PREV = np.array([0.1, -0.2, 0.3])
J = ["joint1", "joint2", "joint3"]


def _rows(n: int, step: float = 0.01) -> list[np.ndarray]:
    return [PREV + step * (i + 1) for i in range(n)]


def test_clean_action_and_look_ahead_pass_unchanged():
    r = _rows(4)
    d = decide(r[0], r[1:], False, PREV)
    assert not d.hold and d.status == "" and d.nonfinite == 0 and not d.errors
    np.testing.assert_array_equal(d.points, np.vstack(r))
    assert decide(r[0], r[1:], False, PREV, max_points=2).points.shape == (2, 3)


def test_hold_repeats_the_last_published_position_and_skips_the_user_filter():
    calls = []
    d = decide(PREV + 5.0, [], True, PREV, command_filter=lambda p, q: calls.append(1) or p)
    assert d.hold and calls == []
    np.testing.assert_array_equal(d.points, PREV[None])


@pytest.mark.parametrize("broken", [
    lambda p, q: np.full_like(p, np.nan),
    lambda p, q: p[:, :2],
    lambda p, q: np.empty((0, 3)),
])
def test_a_broken_user_filter_becomes_a_counted_hold(broken):
    r = _rows(3)
    d = decide(r[0], r[1:], False, PREV, command_filter=broken)
    assert d.hold and d.nonfinite == 1 and "command filter" in d.errors[0]
    np.testing.assert_array_equal(d.points, PREV[None])


def test_a_raising_user_filter_becomes_a_hold():
    def boom(p, q):
        raise RuntimeError("bug")

    d = decide(PREV + 0.01, [], False, PREV, command_filter=boom)
    assert d.hold and "bug" in d.errors[0]
    np.testing.assert_array_equal(d.points, PREV[None])


def test_the_user_filter_sees_a_copy_of_the_previous_position():
    def mutate(p, q):
        q[:] = 99.0
        return p

    prev = PREV.copy()
    decide(PREV + 0.01, [], False, prev, command_filter=mutate)
    np.testing.assert_array_equal(prev, PREV)


def _safety(**kw) -> tuple[SafetyFilter, Bounds]:
    raw = dict(position_min=[-1.0] * 3, position_max=[1.0] * 3, max_delta=[0.05] * 3, max_velocity=[10.0] * 3,
               max_acceleration=[1000.0] * 3, **kw)
    lim = SafetyLimits.from_dict({"joint_names": J, "dt": 0.05, "escalate_after": 2, "position_lower":
                                  raw["position_min"], "position_upper": raw["position_max"], "max_delta":
                                  raw["max_delta"], "max_velocity": raw["max_velocity"],
                                  "max_acceleration": raw["max_acceleration"]})
    f = SafetyFilter(lim)
    f.reset(PREV)
    return f, Bounds.from_params(raw, 3, 0.05)


def test_safety_filter_has_the_last_word_after_the_user_filter():
    f, b = _safety()
    # the user's filter asks for a jump; the safety filter clamps it and drops the look-ahead
    d = decide(PREV + 0.01, _rows(3)[1:], False, PREV, command_filter=lambda p, q: p + 0.5, safety=f)
    assert d.status == "clamped" and not d.hold and d.points.shape == (1, 3)
    assert violations(d.points[0], PREV, np.zeros(3), b) == []


def test_look_ahead_is_chained_and_cut_at_the_first_point_that_needs_clamping():
    f, b = _safety()
    r = [PREV + 0.02, PREV + 0.04, PREV + 0.2, PREV + 0.22]
    d = decide(r[0], r[1:], False, PREV, safety=f)
    assert d.status == "ok" and d.points.shape == (2, 3)
    prev, step = PREV, np.zeros(3)
    for q in d.points:
        assert violations(q, prev, step, b) == []
        prev, step = q, q - prev


def test_safety_escalation_turns_into_a_hold():
    f, _ = _safety()
    for _ in range(3):
        d = decide(PREV + 0.9, [], False, f.last_command, safety=f)
    assert d.hold and d.status == "holding" and f.latched


def test_nonfinite_policy_action_is_never_published_even_without_a_safety_filter():
    d = decide(np.array([np.nan, 0.0, 0.0]), [], False, PREV)
    assert d.hold and d.nonfinite == 1
    np.testing.assert_array_equal(d.points, PREV[None])


# ------------------------------------------------------------------------------------ parameters
def _getter(**values):
    defaults = {p.name: None if isinstance(p.default, Unset) else p.default for p in PARAMETERS}
    defaults.update(values)
    return defaults.get


def test_parameter_table_is_unique_and_documented():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names)) and all(p.description for p in PARAMETERS)
    assert "cache_options" not in names


def test_read_settings_defaults_and_errors():
    s = read_settings(_getter(checkpoint="/ck", extra_state_names=["target"], extra_state_topics=["/target"]))
    assert s.checkpoint == "/ck" and s.command_topic == "/joint_trajectory_controller/joint_trajectory"
    assert [(e.name, e.topic, e.fields) for e in s.extras] == [("target", "/target", "xy")]
    assert safety_filter_from(s) == (None, "")
    for bad, msg in [({}, "checkpoint"), ({"output_type": "x"}, "output_type"),
                     ({"camera_names": ["top"]}, "camera_topics"), ({"policy_overrides": "{"}, "JSON"),
                     ({"action_delay_ticks": 0}, "action_delay_ticks"), ({"num_threads": 0}, "num_threads")]:
        with pytest.raises(ParameterError, match=msg):
            read_settings(_getter(**{"checkpoint": "/ck", **bad}) if bad else _getter())


def test_limits_parameters_become_a_safety_filter():
    s = read_settings(_getter(checkpoint="/ck", **{"limits.max_delta": [0.1, 0.1, 0.1]}))
    s.joint_names, s.control_rate_hz = J, 20.0
    f, summary = safety_filter_from(s)
    assert isinstance(f, SafetyFilter) and "safety filter on" in summary
    np.testing.assert_allclose(f.limits.max_delta, 0.1)
    s.limits.update({"workspace_min": [0, 0, 0], "workspace_max": [1, 1, 1]})
    with pytest.raises(ParameterError, match="limits.urdf and limits.tip_link"):
        safety_filter_from(s)

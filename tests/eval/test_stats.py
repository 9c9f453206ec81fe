"""Pure helpers of the evaluator: Wilson interval, delay rule, jerk and chunk-boundary jumps, parsing."""

import math

import numpy as np
import pytest

from streamdp.sim.evaluate import (
    LatencyModel,
    SamplerSpec,
    chunk_jumps,
    delay_steps,
    load_config,
    mean_abs_jerk,
    percentiles,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (25, 50, 0.3664, 0.6336),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-4) and b == pytest.approx(hi, abs=1e-4)
    assert 0.0 <= a <= k / n <= b <= 1.0


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


@pytest.mark.parametrize(
    ("d", "fps", "n"),
    [
        (0.0, 20, 0),
        (1e-4, 20, 1),
        (0.05, 20, 1),
        (0.0500001, 20, 2),
        (0.1, 20, 2),
        (0.12, 20, 3),
        (0.15, 20, 3),
        (0.3, 10, 3),
        (2.5, 10, 25),
    ],
)
def test_delay_rule_is_ceil_of_compute_time_times_fps(d, fps, n):
    assert delay_steps(d, fps) == n


def test_latency_model():
    assert LatencyModel().measured and LatencyModel().compute_time(0.3, 7) == 0.3
    m = LatencyModel(fixed_s=0.01, per_call_s=0.002)
    assert not m.measured and m.compute_time(99.0, 10) == pytest.approx(0.03)
    assert LatencyModel(per_call_s=0.011).compute_time(0.0, 10) == pytest.approx(0.11)
    with pytest.raises(ValueError):
        LatencyModel(fixed_s=-1.0)
    with pytest.raises(ValueError):
        LatencyModel(per_call_s=math.nan)


def test_jerk_units_and_values():
    t = np.arange(12, dtype=float)[:, None]
    assert mean_abs_jerk(np.hstack([t**2, 3 * t]), fps=20) == pytest.approx(0.0, abs=1e-9)
    # a = t^3 (t in ticks): third difference 6 per tick^3 -> 6 * fps^3 per s^3; second dim constant
    assert mean_abs_jerk(np.hstack([t**3, 0 * t]), fps=10) == pytest.approx(0.5 * 6 * 1000)
    assert mean_abs_jerk(np.zeros((3, 2)), fps=10) is None


def test_chunk_jumps_separate_boundaries_from_within_chunks():
    a = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.1], [1.1], [0.5], [0.6]])
    ids = [0, 0, 0, 1, 1, -1, -1, 2, 2]  # two held steps before chunk 2
    boundary, within = chunk_jumps(a, ids)
    np.testing.assert_allclose(boundary, [0.8, 0.6])  # 0.2 -> 1.0, held 1.1 -> 0.5
    np.testing.assert_allclose(within, [0.1, 0.1, 0.1, 0.1])
    b, w = chunk_jumps(a[:1], ids[:1])
    assert b.size == 0 and w.size == 0


def test_percentiles_and_sampler_parsing():
    p = percentiles(list(range(1, 101)))
    assert p["n"] == 100 and p["max"] == 100 and p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert percentiles([])["p50"] is None
    assert SamplerSpec.parse("ddim:10") == SamplerSpec("ddim", 10)
    assert SamplerSpec.parse("SDP", default_k=7) == SamplerSpec("sdp", 7)
    with pytest.raises(ValueError):
        SamplerSpec.parse("ddim=10")
    cfg = load_config(["checkpoint=c", "sampler=ddpm,sdp", "episodes=3"])
    assert cfg.sampler == ["ddpm", "sdp"] and cfg.episodes == 3  # a list, not a hydra sweep
    assert load_config(["checkpoint=c", "sampler=[a,b]"]).sampler == ["a", "b"]
    assert load_config(["checkpoint=c", "sampler=sdp"]).sampler == ["sdp"]
    assert load_config(["checkpoint=c"]).sampler is None  # the checkpoint's

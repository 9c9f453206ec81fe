"""Closed-loop evaluator on a tiny trained arm policy: every reported field, NFE accounting, the
latency-aware delay model, serial == parallel, and the CLI (JSON, plots, video)."""

import json
import math

import numpy as np
import pytest

from streamdp.sim.evaluate import LatencyModel, evaluate, main, wilson_interval

from .conftest import TASK

SHORT = 24  # env steps per episode: six chunks of Ta = 4


def _summary_keys():
    return {
        "sampler",
        "num_inference_steps",
        "label",
        "policy",
        "episodes",
        "successes",
        "success_rate",
        "success_ci95",
        "mean_max_coverage",
        "mean_final_distance",
        "mean_steps",
        "held_steps_per_episode",
        "latency_ms",
        "calls_per_tick",
        "calls_per_inference",
        "compute_s_per_inference",
        "encoder",
        "smoothness",
        "per_episode",
    }


@pytest.fixture(scope="module")
def two_samplers(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    res = evaluate(tiny_ckpt, TASK, sampler="ddim:10,sdp", episodes=2, seed=5, max_steps=SHORT, out=out)
    return res, out


def test_result_has_every_field_with_sane_values(two_samplers):
    res, out = two_samplers
    data = json.loads((out / "result.json").read_text())
    for key in (
        "format",
        "checkpoint",
        "task",
        "obs_mode",
        "episodes",
        "seed",
        "seeds",
        "max_steps",
        "fps",
        "latency_aware",
        "latency_model",
        "workers",
        "threads",
        "hardware",
        "runs",
        "files",
    ):
        assert key in data, key
    assert data["seeds"] == [5, 6] and data["task"] == TASK and data["obs_mode"] == "state"
    assert data["hardware"]["cpu"] and data["hardware"]["logical_cores"] >= 1
    assert [r["label"] for r in data["runs"]] == ["DDIM-10", "SDP K=12"]
    for run in data["runs"]:
        assert _summary_keys() <= set(run), _summary_keys() - set(run)
        lo, hi = run["success_ci95"]
        assert 0.0 <= lo <= run["success_rate"] <= hi <= 1.0
        assert (lo, hi) == pytest.approx(wilson_interval(run["successes"], run["episodes"]))
        assert run["mean_max_coverage"] is None  # the arm reports distance, not coverage
        assert isinstance(run["mean_final_distance"], float) and run["mean_final_distance"] >= 0
        for kind in ("tick", "inference", "pop"):
            lat = run["latency_ms"][kind]
            assert lat["n"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert run["latency_ms"]["tick"]["n"] == run["latency_ms"]["inference"]["n"] + run["latency_ms"]["pop"]["n"]
        sm = run["smoothness"]
        for key in ("mean_abs_jerk", "boundary_jump_max", "within_jump_max", "boundary_jump_mean", "within_jump_mean"):
            assert isinstance(sm[key], float) and sm[key] >= 0, key
        assert len(run["per_episode"]) == 2
        for ep in run["per_episode"]:
            assert isinstance(ep["success"], bool) and ep["steps"] == SHORT and ep["held_steps"] == 0
            assert ep["policy_ticks"] == SHORT and len(ep["tick_ms"]) == SHORT
            assert ep["inferences"] == SHORT // 4 and len(ep["boundary_jumps"]) == SHORT // 4 - 1
    assert (out / "latency_hist.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "success.png").read_bytes()[:4] == b"\x89PNG"


def test_network_calls_match_the_sampler(two_samplers):
    res, _ = two_samplers
    runs = res.by_label()
    ddim, sdp = runs["DDIM-10"], runs["SDP K=12"]
    # DDIM-10 with Ta = 4: exactly 10 calls per inference, one inference every 4 ticks.
    assert ddim.calls_per_inference == {"mean": 10.0, "min": 10.0, "max": 10.0}
    assert ddim.calls_per_tick == pytest.approx(10 / 4)
    # SDP, K = 12 on h = 3 chunks: ceil(12 / 3) = 4 calls once the ladder is running (the very first
    # chunk also needs its own ladder step count, never more than the top chunk's level).
    calls = [c for e in sdp.episodes for c in e.calls_per_inference[1:]]
    assert set(calls) == {4}
    assert all(1 <= e.calls_per_inference[0] <= 12 for e in sdp.episodes)
    assert sdp.calls_per_tick < ddim.calls_per_tick
    for e in ddim.episodes + sdp.episodes:
        assert e.calls == sum(e.calls_per_inference)
    # the observation encoder runs once per observation that is denoised on, never once per call
    assert ddim.encoder["encodes"] == sum(e.inferences for e in ddim.episodes)
    assert ddim.encoder["calls_per_encode"] == pytest.approx(10.0)
    ticks = sum(e.policy_ticks for e in sdp.episodes)
    assert sdp.encoder["encodes"] <= ticks and sdp.encoder["calls_per_encode"] >= 1.0
    assert ddim.encoder["ms"]["n"] == ddim.encoder["encodes"]


def test_image_policy_encoder_runs_once_per_observation(tmp_path):
    """An image checkpoint (camera 'top', random weights) in the arm's image mode: the CNN runs once per
    denoised observation however many network calls use it, and the table says so."""
    import torch

    from streamdp.policy.policy import Policy
    from streamdp.sim.expert_policy import policy_config_for

    cfg = policy_config_for(TASK, "image", num_inference_steps=4, sampler="ddim", n_action_steps=4,
                            encoder={"backbone": "small"})
    one = {"min": -np.ones(3), "max": np.ones(3), "mean": np.zeros(3), "std": np.ones(3)}
    stats = {"action": one, "observation.state": {k: np.concatenate([v, v]) for k, v in one.items()}}
    torch.manual_seed(0)
    Policy(cfg, stats=stats).save_pretrained(tmp_path / "ckpt")
    res = evaluate(tmp_path / "ckpt", TASK, episodes=1, seed=5, max_steps=12, out=tmp_path / "out")
    (run,) = res.runs
    enc = run.encoder
    assert enc["encodes"] == run.episodes[0].inferences == 3  # 12 ticks, Ta = 4
    assert enc["calls_per_encode"] == pytest.approx(4.0) and enc["ms"]["p50"] > 0
    assert "encoder 0.25/tick, 4.0 calls/run" in res.table()


def test_seeds_make_episodes_repeatable(tiny_ckpt, two_samplers):
    res, _ = two_samplers
    again = evaluate(tiny_ckpt, TASK, sampler="sdp", episodes=1, seed=5, max_steps=SHORT)
    a, b = again.run.episodes[0], res.by_label()["SDP K=12"].episodes[0]
    assert a.seed == b.seed == 5
    np.testing.assert_array_equal(np.array(a.actions), np.array(b.actions))


@pytest.mark.parametrize(
    ("model", "sampler", "expect_hold"),
    [
        (LatencyModel(fixed_s=0.12), "sdp", 3),  # ceil(0.12 s * 20 Hz) = ceil(2.4)
        (LatencyModel(per_call_s=0.011), "ddim:10", 3),  # 10 calls * 11 ms = 0.11 s -> ceil(2.2)
        (LatencyModel(fixed_s=0.05), "sdp", 1),
    ],  # exactly one period -> 1
)
def test_latency_aware_mode_holds_for_the_modelled_compute_time(tiny_ckpt, model, sampler, expect_hold):
    res = evaluate(
        tiny_ckpt, TASK, sampler=sampler, episodes=1, seed=3, max_steps=40, latency_aware=True, latency_model=model
    )
    ep = res.run.episodes[0]
    _check_hold_pattern(ep, expect_hold, ta=4, limit=40)
    assert all(d == pytest.approx(model.compute_time(0.0, c)) for d, c in zip(ep.compute_s, ep.calls_per_inference))


def test_latency_aware_measured_path_uses_the_clock(tiny_ckpt):
    """Measured mode with an injected clock: every policy tick appears to take 70 ms -> ceil(1.4) = 2."""
    t = [0.0]

    def clock():  # read twice per tick (before and after select_action)
        t[0] += 0.07
        return t[0]

    res = evaluate(tiny_ckpt, TASK, sampler="sdp", episodes=1, seed=4, max_steps=30, latency_aware=True, clock=clock)
    ep = res.run.episodes[0]
    assert ep.tick_ms == pytest.approx([70.0] * len(ep.tick_ms))
    assert ep.compute_s == pytest.approx([0.07] * ep.inferences)
    _check_hold_pattern(ep, 2, ta=4, limit=30)


def _check_hold_pattern(ep, hold, ta, limit):
    """Every inference is followed by exactly `hold` held steps (fewer only when the episode ends),
    which repeat the previous command; then the chunk's Ta actions run."""
    ids, acts = ep.chunk_ids, np.array(ep.actions)
    assert len(ids) == ep.steps and (ep.steps == limit or ep.success)
    expected, chunk = [], 0
    while len(expected) < ep.steps:
        expected += [-1] * hold + [chunk] * ta
        chunk += 1
    assert ids == expected[: ep.steps]
    assert ep.held_steps == ids.count(-1) >= (ep.steps // (hold + ta)) * hold
    assert ep.inferences == len({i for i in ids if i >= 0}) + (ids[-1] == -1)  # last chunk may never run
    for i in range(1, len(ids)):
        if ids[i] == -1:
            np.testing.assert_array_equal(acts[i], acts[i - 1])  # the held command is the previous one
    assert math.isfinite(ep.mean_abs_jerk)


def test_latency_aware_off_never_holds_and_model_needs_it(tiny_ckpt):
    with pytest.raises(ValueError, match="latency-aware"):
        evaluate(tiny_ckpt, TASK, sampler="sdp", episodes=1, max_steps=8, latency_model=LatencyModel(fixed_s=0.1))


def test_parallel_workers_match_serial(tiny_ckpt):
    kw = dict(sampler="sdp", episodes=4, seed=11, max_steps=SHORT)
    serial = evaluate(tiny_ckpt, TASK, workers=1, **kw).run.episodes
    par = evaluate(tiny_ckpt, TASK, workers=2, **kw).run.episodes
    assert [e.seed for e in par] == [e.seed for e in serial] == [11, 12, 13, 14]
    assert [(e.success, e.steps, e.calls_per_inference) for e in par] == [
        (e.success, e.steps, e.calls_per_inference) for e in serial
    ]
    for a, b in zip(par, serial):
        assert a.final_distance == pytest.approx(b.final_distance, abs=1e-9)
        np.testing.assert_allclose(a.actions, b.actions, atol=1e-9)


def test_checkpoint_must_fit_the_task(tiny_ckpt):
    with pytest.raises(ValueError, match="does not fit"):
        evaluate(tiny_ckpt, "pusht", episodes=1, max_steps=4)


def test_cli_writes_json_plots_and_video(tiny_ckpt, tmp_path):
    out = tmp_path / "cli"
    rc = main(
        [
            f"checkpoint={tiny_ckpt}",
            f"task={TASK}",
            "sampler=ddim:4,sdp",
            "episodes=2",
            "max_steps=12",
            "seed=7",
            "video=1",
            "video_size=64",
            "progress=false",
            f"out={out}",
            "latency_aware=true",
            "latency_s=0.06",
        ]
    )
    assert rc == 0
    data = json.loads((out / "result.json").read_text())
    assert data["latency_aware"] is True and data["latency_model"]["fixed_s"] == 0.06
    assert [r["label"] for r in data["runs"]] == ["DDIM-4", "SDP K=12"]
    assert all(ep["held_steps"] > 0 for r in data["runs"] for ep in r["per_episode"])
    vids = data["files"]["videos"]
    assert len(vids) == 2 and all(v.endswith(".mp4") for v in vids)
    for v in vids:
        import imageio.v2 as imageio

        frames = imageio.mimread(v)
        assert len(frames) == 13 and frames[0].shape[:2] == (64, 64)
    assert (out / "success.png").exists() and (out / "latency_hist.png").exists()


def test_pusht_reports_max_coverage(tmp_path):
    """PushT reports coverage instead of distance; the tiny policy's max coverage is a fraction."""
    import torch

    from streamdp.sim.expert_policy import train_expert_policy

    from .conftest import TINY

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_expert_policy("pusht", out=tmp_path / "pusht", episodes=2, steps=10, batch_size=16, **TINY)
    finally:
        torch.set_num_threads(prev)
    run = evaluate(tmp_path / "pusht", "pusht", sampler="sdp", episodes=2, max_steps=8).run
    assert run.mean_final_distance is None
    assert all(e.max_coverage is not None and 0.0 <= e.max_coverage <= 1.0 for e in run.episodes)
    assert 0.0 <= run.mean_max_coverage <= 1.0
    assert all(e.steps == 8 and e.inferences == 2 for e in run.episodes)


def test_cli_writes_rerun_recordings_that_rerun_reads_back(tiny_ckpt, tmp_path):
    """rerun=1: the first episode of each sampler as an .rrd; rerun's own reader finds every entity, one camera
    frame and one state row per step (the final one too), one command per env step (the holds marked), and
    the buffer's ladder per policy tick."""
    from streamdp.policy.policy import Policy
    from streamdp.policy.samplers.rolling_buffer import ladder
    from streamdp.sim.rerun_log import read_recording

    out = tmp_path / "rr"
    rc = main([f"checkpoint={tiny_ckpt}", f"task={TASK}", "sampler=sdp,ddim:4", "episodes=2", "max_steps=12",
               "seed=3", "rerun=1", "video_size=48", "progress=false", f"out={out}", "latency_aware=true",
               "latency_s=0.06"])
    assert rc == 0
    data = json.loads((out / "result.json").read_text())
    files = data["files"]["rerun"]
    assert len(files) == 2 and all(f.endswith("_ep000_seed3.rrd") for f in files)
    c = Policy.from_pretrained(tiny_ckpt).config
    for run in data["runs"]:
        first, second = run["per_episode"]
        assert first["rerun"] in files and second["rerun"] is None
        rec = read_recording(first["rerun"])
        steps = first["steps"]
        assert steps == 12
        frames = list(range(steps + 1))
        assert rec["/state"]["step"] == frames and rec["/camera/render"]["step"] == frames
        assert len(rec["/state"]["Scalars:scalars"][0]) == 8  # joint positions, velocities, target xy
        assert rec["/action/commanded"]["step"] == list(range(steps))
        held = [v[0] for v in rec["/action/held"]["Scalars:scalars"]]
        assert sum(held) == first["held_steps"] > 0  # latency-aware: the holds are on the timeline
        if run["sampler"] == "sdp":  # a rolling buffer: its grid levels after every policy tick
            levels = [v[0]["buffer"] for v in rec["/buffer/noise_levels"]["BarChart:values"]]
            assert len(levels) == len(first["tick_ms"])
            # K = 12 on h = 3 chunks: every observation starts from the same ladder (4 calls each), 3 / 7 / 11
            want = [float(x) for x in ladder(c.horizon, c.n_obs_steps, c.n_action_steps, c.num_inference_steps)]
            assert want[-1] == 11.0 and all(lv == want for lv in levels)
        else:
            assert "/buffer/noise_levels" not in rec

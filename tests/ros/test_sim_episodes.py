"""Scored episodes over ROS 2 (two processes, lifecycle and parameter services) and the main job."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_scored_episodes_through_the_nodes(ros_env, bundled_ckpt):
    from streamdp.ros_nodes.sim_episodes import markdown, run_sampler_episodes

    seen = []
    r = run_sampler_episodes(bundled_ckpt, "sdp", 0, episodes=2, seed=10000, on_episode=seen.append)
    assert [e.seed for e in r.episodes] == [10000, 10001] and seen == r.episodes
    assert r.label.startswith("SDP")
    for e in r.episodes:
        d = e.diagnostics
        assert 1 <= e.steps <= 120 and len(e.distance_trace) >= 1
        assert d["ticks"] >= 1 and d["chunks"] >= 1 and d["nfe_per_chunk_mean"] > 0
        assert d["nonfinite_outputs"] == 0
        if e.success:
            assert e.final_distance < 0.03  # the sim's own criterion, reported over ROS
        else:
            assert e.steps == 120  # a time-out runs the whole episode
    s = r.summary()
    assert s["episodes"] == 2 and 0 <= s["success_ci95"][0] <= s["success_rate"] <= s["success_ci95"][1] <= 1
    assert math.isfinite(s["obs_to_cmd_ms_p50"]) and s["nfe_per_chunk"] < 20  # streaming: a few calls per chunk
    assert "| SDP" in markdown([r])


def test_image_policy_episode_through_the_camera_bringup(ros_env, untrained_image_ckpt):
    """config/ros/sim_image.yaml: the bridge publishes the camera and no /target, the policy node reads
    /camera/top/image_raw; an image checkpoint runs a scored episode (random weights: it times out)."""
    from streamdp.ros_nodes.bringup import default_params
    from streamdp.ros_nodes.sim_episodes import run_sampler_episodes

    r = run_sampler_episodes(untrained_image_ckpt, "sdp", 0, episodes=1, seed=10000,
                             params=[default_params("sim_image")])
    (e,) = r.episodes
    d = e.diagnostics
    assert e.steps >= 1 and d["ticks"] >= 1 and d["chunks"] >= 1 and d["nonfinite_outputs"] == 0
    assert e.success or e.steps == 120


def test_main_job_end_to_end_reduced(ros_env, tmp_path, capsys):
    """`make demo` in small: collect demos, train a policy from them, cost table, ROS episodes, plots."""
    from streamdp.ros_nodes import demo

    out = tmp_path / "demo"
    assert demo.main(["--demos", "4", "--train-steps", "30", "--episodes", "1", "--samplers", "sdp", "ddim:4",
                      "--latency-obs", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for step in range(1, 6):
        assert f"[demo {step}/5]" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["collect"]["episodes_kept"] >= 1
    assert "trained 30 steps" in doc["policy"]
    assert [x["label"] for x in doc["offline_latency"]] == ["SDP K=16", "DDIM-4"]
    assert doc["offline_latency"][1]["calls"] == 4
    # one name per run: the offline timing and the ROS episodes of a sampler carry the same label
    assert [r["sampler"] for r in doc["ros"]] == [x["label"] for x in doc["offline_latency"]]
    assert doc["hardware"]["device"] == "cpu" and doc["hardware"]["threads"] == 1
    assert all(r["episodes"] == 1 for r in doc["ros"])
    assert (out / "success_latency.png").stat().st_size > 0 and (out / "distance.png").stat().st_size > 0
    assert (out / "data" / "arm_reach_dynamic" / "meta" / "info.json").is_file()  # a LeRobot dataset

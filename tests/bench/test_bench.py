"""streamdp-bench quick=true on tiny models: the one table has every mode of every task and every field."""

from __future__ import annotations

import json
import math

import pytest

from streamdp.sim import bench

pytestmark = pytest.mark.slow

LOOPS = ["DDPM-100", "DDIM-10", "SDP K=", "RTI K=", "SDP+RTI K="]


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """A tiny transformer per task, trained briefly on expert demos (weights need not be good here)."""
    import torch

    from streamdp.policy.config import TransformerConfig
    from streamdp.sim.expert_policy import train_expert_policy

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench_ckpt")
    out = {}
    for task in ("arm_reach_dynamic", "pusht"):
        out[task] = root / task
        train_expert_policy(task, out=out[task], episodes=3, steps=40, denoiser="transformer",
                            transformer=TransformerConfig(d_model=32, n_heads=2, n_layers=2), num_inference_steps=8)
    return out


def test_quick_bench_has_every_mode_and_field(tiny_ckpts, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["quick=true", "episodes=1", "latency_obs=4", "calib_obs=2", f"out={out}"]
    for task, path in tiny_ckpts.items():
        argv += [f"+checkpoints.{task}={path}"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert doc["quick"] and doc["hardware"]["device"] == "cpu" and "cpu" in doc["hardware"]
    assert [t["task"] for t in doc["tasks"]] == ["arm_reach_dynamic", "pusht"]
    table = (out / "table.md").read_text()
    for t in doc["tasks"]:
        rows = t["rows"]
        assert len(rows) == 10  # 5 inner loops x (none, bac), eager path on a CPU
        assert {(r["sampler"], r["cache"]) for r in rows} == {
            (s, c) for s in ("ddpm", "ddim", "sdp", "rti", "sdp_rti") for c in ("none", "bac")}
        for r in rows:
            assert any(r["label"].startswith(p) for p in LOOPS), r["label"]
            for key in ("calls_per_obs", "ms_p50", "ms_p99", "ratio_ddpm", "ratio_ddim", "calls_ratio_ddpm"):
                assert math.isfinite(r[key]) and r[key] > 0, (key, r)
            assert r["episodes"] == 1 and 0 <= r["successes"] <= 1
            lo, hi = r["success_ci95"]
            assert 0 <= lo <= r["success_rate"] <= hi <= 1
            assert f"| {t['task']} | {r['label']} | {r['cache']} |" in table
        by = {(r["sampler"], r["cache"]): r for r in rows}
        # NFE, not wall time, is what a test may assert: DDPM runs all 100 train levels, DDIM 10
        assert by[("ddpm", "none")]["calls_per_obs"] == 100 and by[("ddim", "none")]["calls_per_obs"] == 10
        assert by[("ddpm", "none")]["ratio_ddpm"] == 1.0 and by[("ddim", "none")]["ratio_ddim"] == 1.0
        assert by[("sdp", "none")]["calls_per_obs"] < 10  # K=8 grid over h=3 chunks: about 3 calls
        # BAC: same calls, fewer residual-branch computations than the 3 x layers per call uncached
        for s in ("ddpm", "sdp"):
            assert by[(s, "bac")]["calls_per_obs"] == by[(s, "none")]["calls_per_obs"]
            assert by[(s, "bac")]["branch_computes_per_obs"] < by[(s, "none")]["branch_computes_per_obs"]
        assert t["calibration"]["rti"]["start_level"] >= 0
        # every BAC row says whether its schedule is vouched for: open-loop error next to the sample spread
        for r in rows:
            vouched = (r["bac_error"], r["bac_spread"]) if r["cache"] == "bac" else (None, None)
            assert (None not in vouched) == (r["cache"] == "bac"), r
            if r["cache"] == "bac":
                assert vouched == (t["calibration"][f"bac/{r['sampler']}"]["open_loop_error"],
                                   t["calibration"][f"bac/{r['sampler']}"]["sample_spread"])
                assert f"open-loop error {r['bac_error']:.4f} vs spread {r['bac_spread']:.4f}" in table
    pusht_rows = doc["tasks"][1]["rows"]
    assert all(r["mean_max_coverage"] is not None for r in pusht_rows)
    for name in ("latency.png", "success.png", "tradeoff.png"):
        assert (out / name).stat().st_size > 0
    assert "Triton kernels and CUDA graphs: no CUDA device" in printed


def test_bench_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert bench.main([f"+checkpoints.arm_reach_dynamic={tmp_path}", f"out={tmp_path / 'o'}"]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert bench.main(["--checkpoint", "nonsense"]) == 2  # the old argparse flags are gone: key=value only
    assert "expected key=value" in capsys.readouterr().err


def test_bench_keys_compose():
    cfg = bench.load_config(["quick=true", "workers=2", "tasks=arm_reach_dynamic,arc", "+checkpoints.arc=/x"])
    assert cfg.quick and cfg.workers == 2 and cfg.tasks == ["arm_reach_dynamic", "arc"]
    assert cfg.checkpoints == {"arc": "/x"} and cfg.preset("episodes") == 4 and cfg.preset("calib_episodes") == 2


def test_arc_task_benches_without_a_checkpoint(tmp_path):
    """The synthetic two-mode task has no bundled policy: the bench trains a small one first."""
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "arc"
    argv = ["tasks=arc", "quick=true", "train_steps=30", "episodes=1", "latency_obs=3", "calib_obs=2", f"out={out}"]
    assert bench.main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    (t,) = doc["tasks"]
    assert t["task"] == "arc" and t["denoiser"] == "transformer" and len(t["rows"]) == 10
    assert (out / "arc" / "trained" / "config.json").is_file()
    for r in t["rows"]:
        assert r["episodes"] == 1 and any(r["label"].startswith(p) for p in LOOPS)
        assert (r["start_level"] is not None) == (r["sampler"] in ("rti", "sdp_rti"))

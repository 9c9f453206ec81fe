"""streamdp-bench --quick on tiny models: the one table has every mode of every task and every field."""

from __future__ import annotations

import json
import math

import pytest

from streamdp.sim import bench

pytestmark = pytest.mark.slow

LOOPS = ["DDPM-100", "DDIM-10", "SDP K=", "RTI k'=", "SDP+RTI k'="]


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
    argv = ["--quick", "--episodes", "1", "--latency-obs", "4", "--calib-obs", "2", "--out", str(out)]
    for task, path in tiny_ckpts.items():
        argv += ["--checkpoint", f"{task}={path}"]
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
    pusht_rows = doc["tasks"][1]["rows"]
    assert all(r["mean_max_coverage"] is not None for r in pusht_rows)
    assert (out / "latency.png").stat().st_size > 0 and (out / "success.png").stat().st_size > 0
    assert "Triton kernels and CUDA graphs: no CUDA device" in printed


def test_bench_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        bench.main(["--checkpoint", f"arm_reach_dynamic={tmp_path}", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="expected TASK=DIR"):
        bench.main(["--checkpoint", "nonsense", "--out", str(tmp_path / "o")])

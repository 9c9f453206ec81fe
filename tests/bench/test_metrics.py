"""One label, one cost count and one hardware record for the benchmark, the evaluator and the main job."""

from __future__ import annotations

import numpy as np
import pytest

from streamdp.sim.metrics import hardware, measure, policy_label, sampler_label, summarize, timed


@pytest.mark.parametrize(
    "sampler,k,label",
    [("ddpm", None, "DDPM-100"), ("ddim", 10, "DDIM-10"), ("sdp", 16, "SDP K=16"), ("rti", 16, "RTI K=16"),
     ("sdp_rti", 16, "SDP+RTI K=16")],
)
def test_sampler_label(sampler, k, label):
    assert sampler_label(sampler, k, 100) == label


def test_one_label_per_run_in_bench_eval_and_demo(tmp_path):
    """The defect: one run was "SDP K=16" in the offline timing and "SDP (K=16)" in the episodes."""
    from streamdp.policy.policy import Policy
    from streamdp.sim.evaluate import evaluate
    from streamdp.sim.tasks.arc import ArcTask, make_dataset

    from ..policy.helpers import tiny_config

    cfg = tiny_config(action_dim=2, state_dim=2, horizon=16, n_obs_steps=2, n_action_steps=4, primer="state",
                      num_inference_steps=6, joint_names=["x", "y"], action_names=["target_x", "target_y"])
    stats = make_dataset(ArcTask(), 4, cfg.n_obs_steps, cfg.horizon).stats
    ckpt = Policy(cfg, stats=stats).save_pretrained(tmp_path / "ckpt")
    res = evaluate(ckpt, "arc", sampler="sdp,ddim:4", episodes=1)
    offline = [policy_label(Policy.from_pretrained(ckpt, sampler=s, num_inference_steps=k))
               for s, k in (("sdp", 6), ("ddim", 4))]
    assert [r.label for r in res.runs] == offline == ["SDP K=6", "DDIM-4"]


def test_costs_count_the_policys_own_calls():
    class Fake:
        nfe_total, cache = 0, None

        def observe(self, obs):
            pass

        def denoise(self, _):
            self.nfe_total += 3

        def pop_ready(self):
            pass

    ticks = iter([0.0, 0.002, 1.0, 1.005])
    _, cost = timed(Fake(), lambda: None, clock=lambda: next(ticks))
    assert cost.calls == 0 and cost.branches is None and cost.ms == pytest.approx(2.0)
    costs = measure(Fake(), [{}] * 5, warmup=2)
    assert len(costs) == 3 and all(c.calls == 3 for c in costs)
    s = summarize(costs, branches_per_call=6)
    assert s["calls"] == 3 and s["branches"] == 18 and s["n_obs"] == 3 and np.isfinite(s["ms_p50"])


def test_hardware_says_where():
    hw = hardware("cpu")
    assert hw["device"] == "cpu" and hw["cpu"] and hw["threads"] >= 1 and "torch" in hw

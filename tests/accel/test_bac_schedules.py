"""BAC as published: the forced last call, schedules indexed by what a call is, one update budget across
branches, Bubbling Union ranked by the all-pairs l1 change, and a calibration that vouches for itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamdp.policy.bac import BlockCache, BranchRecorder, SolveSchedule, allocate_updates, build_schedules
from streamdp.policy.calibration import CalibrateBACConfig, run_bac_calibration, save_observations
from streamdp.policy.cli import UserError

from .util import KW, BranchCounter, obs_stream, perturb, tiny_policy, twin, with_bac


class PerCallBranches:
    """Branch computes of every network call (util.BranchCounter), with the call's `remaining` count."""

    def __init__(self, policy) -> None:
        self.rows: list[tuple[int | None, int]] = []
        branches, rows = BranchCounter(policy), self.rows

        class Spy(type(policy.call)):  # the samplers call ctx.call(...): watch every call with its `remaining`
            def __call__(self, x, k, cond, remaining=None):
                branches.take()
                out = super().__call__(x, k, cond, remaining=remaining)
                rows.append((remaining, branches.take()))
                return out

        policy.call.__class__ = Spy


@pytest.mark.parametrize("sampler", ["ddim", "sdp", "rti"])
def test_last_call_of_every_solve_recomputes_every_branch(sampler):
    base = perturb(tiny_policy(seed=2, sampler=sampler, rti_divergence=0.0, **KW))
    cached = twin(with_bac(base, updates=1, top=0, n_obs=4), seed=1)  # minimum budget: first + last only
    n_branches = 3 * base.config.transformer.n_layers
    rec = PerCallBranches(cached)
    for obs in obs_stream(20, seed=2):
        cached.select_action(obs)
    lasts = [n for r, n in rec.rows if r == 1]
    middles = [n for r, n in rec.rows if r not in (1, None)]
    assert lasts and all(n == n_branches for n in lasts)
    assert middles and min(middles) < n_branches  # caching does skip work elsewhere


def test_sdp_cycle_calls_are_indexed_by_calls_remaining():
    """K=8, h=3: solves take 3, 3, 2 calls. A call with r calls left is step num_steps - r of the
    schedule in every phase of the cycle, in calibration and at run time alike."""
    base = perturb(tiny_policy(seed=3, sampler="sdp", **KW))
    rec = BranchRecorder()
    base.attach_cache(rec)
    seen = []
    orig = rec.begin_step
    rec.begin_step = lambda r: (seen.append(r), orig(r))[1]  # type: ignore[method-assign]
    for obs in obs_stream(24):
        base.select_action(obs)
    base.detach_cache()
    res = rec.results()["sdp-ddpm-K8"]
    lengths = sorted(int(k) for k in res["steps"])
    assert len(lengths) == 2 and res["num_steps"] == max(lengths)  # the cycle has two solve lengths
    assert set(seen) == set(range(1, max(lengths) + 1))
    sched = SolveSchedule(res["num_steps"], {"0.ffn": [0]})
    cache = BlockCache({"k": sched})
    cache.begin_solve("k")
    cache.valid.add("0.ffn")
    for r in range(res["num_steps"], 0, -1):
        cache.begin_step(r)
        assert sched.index(r) == res["num_steps"] - r
        assert cache.is_update("0.ffn") == (r == 1 or sched.index(r) == 0)
        cache.end_step()


def test_one_budget_goes_to_the_branches_that_change():
    k = 8
    rng = np.random.default_rng(0)
    steady = np.ones((k, k))  # input never changes: reusing its first delta costs nothing
    moving = np.eye(k) + 0.2 * rng.random((k, k))
    sims = {"0.cross_attn": steady, "0.ffn": moving, "1.ffn": moving.T.copy()}
    ups = allocate_updates(sims, {n: 1.0 for n in sims}, per_branch=4)
    assert ups["0.cross_attn"] == [0, k - 1]  # the minimum: first and (forced) last
    assert sum(len(v) for v in ups.values()) == 4 * len(sims)  # the whole budget, no more
    assert all(0 in v and k - 1 in v for v in ups.values())


def test_bubbling_union_ranks_by_all_pairs_l1_change():
    """Volatility is the paper's measure: mean l1 change over all pairs of steps (not consecutive ones)."""
    torch.manual_seed(0)
    rec = BranchRecorder()

    class B:
        def __init__(self, layer, kind, seq):
            self.layer, self.kind, self.seq, self.i = layer, kind, seq, 0

        def __call__(self, x, memory, mask):
            out = self.seq[self.i]
            self.i += 1
            return out

    # a: alternates (large consecutive change, small all-pairs mean); b: drifts steadily
    a_seq = [torch.full((1, 4), v) for v in (0.0, 1.0, 0.0, 1.0, 0.0, 1.0)]
    b_seq = [torch.full((1, 4), v) for v in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5)]
    branches = [B(0, "ffn", a_seq), B(1, "ffn", b_seq)]
    rec.bind(branches)
    rec.begin_solve("k")
    for r in range(6, 0, -1):
        rec.begin_step(r)
        for b in branches:
            rec.hook(b, torch.zeros(1, 4), None, None)
        rec.end_step()
    res = rec.results()["k"]
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    for name, seq in (("0.ffn", a_seq), ("1.ffn", b_seq)):
        want = np.mean([float((seq[i] - seq[j]).abs().mean()) for i, j in pairs])
        assert res["volatility"][name] == pytest.approx(want)
    assert res["volatility"]["1.ffn"] > res["volatility"]["0.ffn"]
    out = build_schedules({"k": res}, updates=2, top_blocks=1)["k"]
    assert out["bubbled"] == ["1.ffn"]


def test_calibration_refuses_a_schedule_worse_than_sampling_noise(tmp_path, monkeypatch, capsys):
    from streamdp.policy import calibration

    pol = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(16, seed=0)])
    real = calibration.calibrate_bac
    entry = real(pol, calibration.load_episodes(data), update_ratio=0.5, max_obs=4)
    assert entry["open_loop_error"] >= 0 and entry["sample_spread"] > 0  # both measured
    monkeypatch.setattr(
        calibration, "calibrate_bac", lambda *a, **k: {**entry, "open_loop_error": 2 * entry["sample_spread"]}
    )
    cfg = CalibrateBACConfig(checkpoint=str(ckpt), dataset=str(data), max_obs=4)
    with pytest.raises(UserError, match="not stored.*force=true"):
        run_bac_calibration(cfg)
    assert "bac" not in json.loads((ckpt / "config.json").read_text())["extras"]
    cfg.force = True
    run_bac_calibration(cfg)
    assert "bac" in json.loads((ckpt / "config.json").read_text())["extras"]


def test_calibration_search_raises_the_update_ratio_until_the_schedule_is_vouched_for(monkeypatch):
    """search=True: from one recording, schedules at growing update ratios until the open-loop error is within
    the sampling spread (here made to happen at 0.75, as for the arm's RTI warm solves), and that one is kept."""
    from streamdp.policy import calibration

    pol = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    eps = [obs_stream(16, seed=0)]
    real = calibration.open_loop_actions

    plain_runs = []

    def fake(policy, episodes, max_obs):  # reference 0, the other full sample 0.5; cached: 2 x (1 - ratio)
        n = len(real(policy, episodes, max_obs))
        if policy.config.cache == "bac":
            return torch.full((n, 2), 2 * (1 - policy.extras["bac"]["update_ratio"]))
        plain_runs.append(n)
        return torch.full((n, 2), 0.0 if len(plain_runs) % 2 else 0.5)

    monkeypatch.setattr(calibration, "open_loop_actions", fake)
    entry = calibration.calibrate_bac(pol, eps, update_ratio=0.5, max_obs=4, search=True)
    assert [t["update_ratio"] for t in entry["search"]] == [0.5, 0.625, 0.75]
    assert [t["open_loop_error"] for t in entry["search"]] == pytest.approx([1.0, 0.75, 0.5])
    assert entry["update_ratio"] == 0.75 and entry["open_loop_error"] <= entry["sample_spread"] == 0.5
    (sched,) = entry["schedules"].values()
    assert sched["num_updates"] == max(1, round(0.75 * sched["num_steps"]))
    plain = calibration.calibrate_bac(pol, eps, update_ratio=0.5, max_obs=4)  # no search: the one ratio asked
    assert [t["update_ratio"] for t in plain["search"]] == [0.5] and plain["open_loop_error"] == 1.0

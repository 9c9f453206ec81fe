"""BAC: the Adaptive Caching Scheduler, Bubbling Union, exactness with every step an update step,
and that caching saves branch computations but never network calls."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamdp.policy import Policy
from streamdp.policy.bac import (
    BACScheduleError,
    BlockCache,
    SolveSchedule,
    acs_brute_force,
    acs_schedule,
    acs_value,
    bubbling_union,
)
from streamdp.policy.calibration import bac_cli, save_observations
from streamdp.policy.schedule import ScheduleConfig

from .util import KW, BranchCounter, CallCounter, obs_stream, perturb, run_stream, tiny_policy, twin, with_bac


def _random_similarity(k: int, rng: np.random.Generator) -> np.ndarray:
    feats = rng.normal(size=(k, 6)).cumsum(0)  # a drifting trajectory, like branch outputs over steps
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats @ feats.T


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 9])
def test_acs_dp_matches_brute_force(k):
    rng = np.random.default_rng(k)
    for _ in range(4):
        sim = _random_similarity(k, rng) if rng.random() < 0.5 else rng.uniform(-1, 1, size=(k, k))
        for m in range(1, k + 1):
            steps = acs_schedule(sim, m)
            assert steps[0] == 0 and len(steps) == m == len(set(steps)) and steps == sorted(steps)
            assert max(steps) < k
            _, best = acs_brute_force(sim, m)
            assert acs_value(sim, steps) == pytest.approx(best, abs=1e-12)


def test_acs_picks_the_regime_changes():
    # three regimes of steps: {0,1,2}, {3,4}, {5,6,7}; within a regime outputs are identical
    regime = [0, 0, 0, 1, 1, 2, 2, 2]
    sim = np.array([[1.0 if a == b else 0.1 for b in regime] for a in regime])
    assert acs_schedule(sim, 3) == [0, 3, 5]
    assert acs_schedule(sim, 1) == [0]


@pytest.mark.parametrize("seed,top_n", [(0, 1), (1, 3), (2, 5), (3, 12)])
def test_bubbling_union_gives_selected_blocks_every_deeper_ffn_update(seed, top_n):
    rng = np.random.default_rng(seed)
    names = [f"{layer}.{kind}" for layer in range(4) for kind in ("self_attn", "cross_attn", "ffn")]
    k = 12
    ups = {n: sorted({0, *rng.choice(np.arange(1, k), size=3, replace=False).tolist()}) for n in names}
    vol = {n: float(rng.random()) for n in names}
    out, selected = bubbling_union(ups, vol, top_n)
    assert selected == sorted(names, key=lambda n: -vol[n])[:top_n]
    for b in selected:
        layer = int(b.split(".")[0])
        for f in names:
            if f.endswith(".ffn") and int(f.split(".")[0]) >= layer:
                assert set(out[f]) <= set(out[b]), (b, f)
        assert set(ups[b]) <= set(out[b])
    for n in set(names) - set(selected):
        assert out[n] == ups[n]
    # the union really adds steps somewhere (the property is not vacuous)
    assert any(out[b] != ups[b] for b in selected) or top_n == 1


def _kw(sampler: str) -> dict:
    # DDPM runs every train level: a 25-level schedule keeps it cheap (the N=100 count is in test_calls)
    return {**KW, "schedule": ScheduleConfig(num_train_steps=25)} if sampler == "ddpm" else KW


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "sdp", "rti", "sdp_rti"])
def test_bac_with_every_step_updated_is_bit_exact(sampler):
    ref = perturb(tiny_policy(seed=5, sampler=sampler, rti_full_every=3, **_kw(sampler)))
    cached = with_bac(ref, updates=10_000, n_obs=4)  # M >= K: every step an update step
    for sched in cached.extras["bac"]["schedules"].values():
        assert all(len(v) == sched["num_steps"] for v in sched["updates"].values())
    stream = obs_stream(20, seed=1)
    a_ref, _ = run_stream(twin(ref, seed=9), stream)
    a_bac, _ = run_stream(twin(cached, seed=9), stream)
    assert np.array_equal(a_ref, a_bac)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "sdp", "rti", "sdp_rti"])
def test_bac_saves_branch_computations_not_network_calls(sampler):
    base = perturb(tiny_policy(seed=2, sampler=sampler, rti_divergence=0.0, rti_full_every=4, **_kw(sampler)))
    cached = with_bac(base, ratio=0.3, top=1, n_obs=5)
    plain = twin(base, seed=4)
    cached = twin(cached, seed=4)
    stream = obs_stream(24, seed=3)
    n_branches = 3 * base.config.transformer.n_layers
    cc_p, bc_p = CallCounter(plain), BranchCounter(plain)
    cc_c, bc_c = CallCounter(cached), BranchCounter(cached)
    _, calls_p = run_stream(plain, stream, cc_p)
    _, calls_c = run_stream(cached, stream, cc_c)
    assert calls_p == calls_c and len(calls_p) == 6  # same network calls, observation by observation
    total = sum(calls_c)
    assert bc_p.take() == total * n_branches  # uncached: every branch on every call
    computed = bc_c.take()
    cache = cached.cache
    assert isinstance(cache, BlockCache)
    assert computed == cache.computed and cache.computed + cache.reused == total * n_branches
    assert computed < 0.8 * total * n_branches  # caching really skips work


def test_bac_branch_computes_per_observation_follow_the_schedule():
    base = perturb(tiny_policy(seed=3, sampler="ddim", **KW))
    cached = twin(with_bac(base, ratio=0.25, top=2, n_obs=4), seed=0)
    key = cached.settings.solve_key("full")
    sched = SolveSchedule.from_dict(cached.extras["bac"]["schedules"][key])
    assert sched.num_steps == 8
    bc, cc = BranchCounter(cached), CallCounter(cached)
    for obs in obs_stream(12):
        cached.observe(obs)
        cached.denoise()
        cached.pop_ready()
        assert cc.take() == 8
        assert bc.take() == sched.computes() < 8 * 6


def test_bac_without_schedule_fails_clearly():
    pol = tiny_policy(sampler="ddim", cache="bac", **KW)
    pol.observe(obs_stream(1)[0])
    with pytest.raises(BACScheduleError, match="streamdp-calibrate-bac"):
        pol.denoise()


def test_bac_needs_transformer():
    from streamdp.policy import ConfigError

    with pytest.raises(ConfigError, match="transformer"):
        tiny_policy(cache="bac", denoiser="unet")


def test_calibrate_bac_cli_writes_schedules_and_merges(tmp_path):
    pol = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(16, seed=0), obs_stream(16, seed=1)])
    bac_cli([f"checkpoint={ckpt}", f"dataset={data}", "sampler=ddim", "update_ratio=0.5", "max_obs=4"])
    bac_cli([f"checkpoint={ckpt}", f"dataset={data}", "sampler=sdp", "num_inference_steps=16"])
    loaded = Policy.from_pretrained(ckpt)
    assert loaded.config == pol.config  # overrides used for calibration are not written into the config
    keys = set(loaded.extras["bac"]["schedules"])
    assert {"full-ddim-K8", "sdp-ddpm-K16"} <= keys
    run = Policy.from_pretrained(ckpt, sampler="sdp", num_inference_steps=16, cache="bac")
    bc = BranchCounter(run)
    _, _ = run_stream(run, obs_stream(8))
    assert 0 < bc.take() < run.nfe_total * 6
    with pytest.raises(BACScheduleError, match="no BAC schedule for solve kind 'full-ddim-K10'"):
        run_stream(Policy.from_pretrained(ckpt, sampler="ddim", num_inference_steps=10, cache="bac"), obs_stream(1))


def test_acs_is_optimal_on_exhaustive_tiny_grid():
    # every 0/1 similarity pattern of a 3-step solve, plus random 0/1 patterns of 5 steps (ties galore)
    for bits in itertools.product([0.0, 1.0], repeat=9):
        sim = np.array(bits).reshape(3, 3)
        assert acs_value(sim, acs_schedule(sim, 2)) == acs_brute_force(sim, 2)[1]
    rng = np.random.default_rng(0)
    for _ in range(300):
        sim = rng.integers(0, 2, size=(5, 5)).astype(float)
        for m in (2, 3, 4):
            assert acs_value(sim, acs_schedule(sim, m)) == acs_brute_force(sim, m)[1]


def test_console_scripts_exit_zero(tmp_path):
    """The installed entry points (sys.exit(calibrate_main())) succeed and write the checkpoint."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    bindir = Path(sys.executable).parent
    scripts = [bindir / "streamdp-calibrate-rti", bindir / "streamdp-calibrate-bac"]
    if not all(s.exists() for s in scripts):
        pytest.skip("console scripts not installed in this environment (pip install -e .)")
    pol = perturb(tiny_policy(seed=1, sampler="ddim", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(13)])
    common = [f"checkpoint={ckpt}", f"dataset={data}", "max_obs=3"]
    for script, extra in zip(scripts, (["candidates=9,99", "steps=2"], ["sampler=rti"])):
        r = subprocess.run([sys.executable, str(script), *common, *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    extras = json.loads((ckpt / "config.json").read_text())["extras"]
    assert extras["rti"]["start_level"] in (9, 99)
    assert {"full-ddpm-K8", f"warm-ddpm-k{extras['rti']['start_level']}-S2"} <= set(extras["bac"]["schedules"])


def test_graph_accounting_matches_eager_counting():
    """The CUDA-graph path decides a step's recompute pattern up front and accounts for it after the
    replay (hooks do not run then). On CPU: predicting the pattern, running with counting off and
    accounting must give the same decisions and counters as eager counting."""
    base = perturb(tiny_policy(seed=3, sampler="sdp", **KW))
    cached = with_bac(base, ratio=0.4, top=1, n_obs=3)
    eager, graphlike = twin(cached, seed=1), twin(cached, seed=1)
    a_eager, _ = run_stream(eager, obs_stream(16))

    def fake_graph(fn):
        """Stands in for a captured CUDA graph: the policy decides the variant up front, with counting
        off; here the hooks run anyway, so what they really compute can be checked against it."""

        def replay(x, k, cond, variant=None):
            cache = graphlike.cache
            seen = []
            for b in graphlike.model.denoiser.branches():
                f = b.forward

                def spy(*a, _f=f, _b=b, **kw):
                    seen.append(cache.names[id(_b)])
                    return _f(*a, **kw)

                b.forward = spy
            try:
                out = fn(x, k, cond)
            finally:
                for b in graphlike.model.denoiser.branches():
                    del b.forward
            assert seen == [n for n, u in zip(cache.order, variant) if u]  # the predicted pattern ran
            return out

        return replay

    graphlike.call._use_graph = lambda: True  # the CPU stands in for CUDA: same accounting path
    graphlike.call._make_graph = fake_graph
    a_graph, _ = run_stream(graphlike, obs_stream(16))
    assert np.array_equal(a_graph, a_eager)
    assert (graphlike.cache.computed, graphlike.cache.reused) == (eager.cache.computed, eager.cache.reused)
    assert eager.cache.reused > 0


def test_one_acs_table_gives_the_optimum_of_every_budget():
    from streamdp.policy.bac import acs_best_values

    rng = np.random.default_rng(1)
    for k in (1, 3, 8, 20):
        sim = rng.random((k, k))
        best = acs_best_values(sim)
        assert [round(b, 9) for b in best] == [round(acs_value(sim, acs_schedule(sim, m)), 9) for m in range(1, k + 1)]

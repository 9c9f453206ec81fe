"""RTI warm start and the SDP/RTI hybrid: grids, reproduction of full sampling, shift bookkeeping,
discrete dims, resampling, and the calibration tool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamdp.policy import Policy
from streamdp.policy.calibration import load_episodes, rti_cli, save_observations
from streamdp.policy.samplers.rolling_buffer import shift_trajectory
from streamdp.policy.samplers.rti import warm_start
from streamdp.policy.samplers.settings import rti_grid
from streamdp.policy.schedule import sampler_grid

from .util import KW, CallCounter, obs_stream, perturb, run_stream, tiny_policy, twin


def test_rti_grid():
    assert rti_grid(99, 10) == sampler_grid(100, 10)
    assert rti_grid(99, 100) == list(range(99, -1, -1))
    g = rti_grid(29, 4)
    assert g[0] == 29 and len(g) == 4 and all(a > b >= 0 for a, b in zip(g, g[1:]))
    assert rti_grid(2, 5) == [2, 1, 0]  # more steps than levels: clamped


@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
@pytest.mark.parametrize("denoiser", ["transformer", "unet"])
def test_rti_from_top_level_without_shift_reproduces_full_sampling(mode, denoiser):
    """k' = N-1, rti_steps = K, shift 0: the warm solve is the full solve, draw for draw (k' = N-1 is the
    pure-Gaussian level, as in sampler_grid), so the outputs are bit-identical."""
    kw = {**KW, "denoiser": denoiser}
    p = tiny_policy(seed=3, sampler="rti", rti_start_level=99, rti_steps=8, step_mode=mode, rti_divergence=0.0, **kw)
    perturb(p)
    assert p.settings.warm_grid() == p.settings.full_grid() == sampler_grid(100, 8)
    o = obs_stream(1)[0]
    p.observe(o)
    p.denoise()  # first call: full solve
    assert p.executed_since_solution == 0  # nothing popped: no shift
    state = p.generator.get_state()
    p.observe(o)
    assert p.denoise() == 8
    assert p.rti_stats["full"] == 1 and p.rti_stats["warm"] == 1
    warm = p.pop_ready()[4:]
    q = twin(p, sampler="ddim", step_mode=mode)  # the plain full sampler on the same grid
    q.generator.set_state(state)
    q.observe(o)
    q.denoise()
    assert np.array_equal(warm, q.pop_ready())
    # the draws really are aligned: one extra draw makes the outputs differ
    q2 = twin(p, sampler="ddim", step_mode=mode)
    q2.generator.set_state(state)
    torch.randn(1, generator=q2.generator)
    q2.observe(o)
    q2.denoise()
    assert np.abs(warm - q2.pop_ready()).max() > 1e-3


def test_warm_start_noises_the_guess_below_the_top_level():
    p = tiny_policy(sampler="rti", rti_start_level=20, rti_divergence=0.0, **KW)
    sched = p.model.schedule
    g = torch.full((1, 16, 2), 0.5)
    noise = torch.randn(1, 16, 2, generator=torch.Generator().manual_seed(0))
    ab = sched.alpha_bar(torch.tensor([20]), torch.float64).item()
    torch.testing.assert_close(warm_start(sched, g, noise, 20), ab**0.5 * g + (1 - ab) ** 0.5 * noise)
    assert torch.equal(warm_start(sched, g, noise, 99), noise)


def test_warm_guess_is_solution_shifted_by_popped_actions():
    p = perturb(tiny_policy(seed=1, sampler="rti", rti_steps=3, rti_divergence=0.0, **KW))
    stream = obs_stream(3)
    p.observe(stream[0])
    p.denoise()
    a = p.sampler_impl.solution.clone()
    p.pop_ready(3)
    assert p.executed_since_solution == 3
    p.observe(stream[1])
    assert p.denoise(budget=1) == 1  # the warm solve is now in flight: inspect it
    s = p.sampler_impl.solve
    assert s.kind == "warm" and s.valid == 16 - 3
    assert torch.equal(s.guess, shift_trajectory(a, 3))
    assert torch.equal(s.guess[-4:], a[-1:].expand(4, -1))  # tail holds the last row
    assert p.denoise() == 2
    assert p.num_ready == 1 + 4  # one old action left, then the new chunk
    # the new chunk's first action comes after the old leftover: popping it is not counted for A
    p.pop_ready(1)
    assert p.executed_since_solution == 0
    p.pop_ready(2)
    assert p.executed_since_solution == 2


def test_select_action_shifts_by_ta():
    p = perturb(tiny_policy(seed=1, sampler="rti", rti_divergence=0.0, **KW))
    stream = obs_stream(9)
    for o in stream[:4]:
        p.select_action(o)
    a = p.sampler_impl.solution.clone()
    p.observe(stream[4])
    assert p.executed_since_solution == 4
    p.denoise(budget=1)
    assert torch.equal(p.sampler_impl.solve.guess, shift_trajectory(a, 4))


def test_predict_action_chunk_counts_the_whole_chunk_executed():
    p = perturb(tiny_policy(seed=1, sampler="rti", rti_divergence=0.0, **KW))
    p.predict_action_chunk(obs_stream(1)[0])
    assert p.executed_since_solution == 4


def test_discrete_dims_snapped_in_guess_and_thresholded_in_output():
    p = perturb(tiny_policy(seed=2, sampler="rti", discrete_action_dims=[1], rti_divergence=0.0, **KW))
    stream = obs_stream(12)
    acts, _ = run_stream(p, stream[:8])
    # tiny stats map normalised -1/+1 to -1/2
    assert set(np.round(acts[:, 1], 5)) <= {-1.0, 2.0}
    assert not set(np.round(acts[:, 0], 5)) <= {-1.0, 2.0}  # continuous dims are left alone
    p.observe(stream[8])
    p.denoise(budget=1)
    assert set(p.sampler_impl.solve.guess[:, 1].tolist()) <= {-1.0, 1.0}


def test_discrete_dims_scaled_mode(tmp_path):
    """RTI-DP's alternative to snapping: the gripper dim lives on [-1/s, 1/s] in the network's space (the
    trainer's targets and the sampler's outputs alike); guesses are not snapped; actions round-trip."""
    p = perturb(
        tiny_policy(seed=2, sampler="rti", discrete_action_dims=[1], discrete_action_mode="scale",
                    discrete_action_scale=10.0, rti_divergence=0.0, **KW)
    )  # fmt: skip
    assert p.config.snapped_dims == [] and p.config.action_gain() == [1.0, 0.1]
    from streamdp.policy.policy import ACTION_KEY

    raw = torch.tensor([[-1.0, -1.0], [2.0, 2.0], [0.5, 0.5]])  # tiny stats: -1/2 are the extremes
    net = p.normalizer.normalize(ACTION_KEY, raw)
    assert torch.allclose(net[:, 0], torch.tensor([-1.0, 1.0, 0.0])) and torch.allclose(net[:, 1], net[:, 0] / 10)
    assert torch.allclose(p.normalizer.unnormalize(ACTION_KEY, net), raw)
    stream = obs_stream(12)
    acts, _ = run_stream(p, stream[:8])
    assert np.isfinite(acts).all()
    p.observe(stream[8])
    p.denoise(budget=1)
    g = p.sampler_impl.solve.guess[:, 1]
    assert not set(g.tolist()) <= {-1.0, 1.0}  # not snapped
    # the gain comes from the config: it survives a checkpoint round trip
    q = Policy.from_pretrained(p.save_pretrained(tmp_path / "ckpt"))
    assert torch.allclose(q.normalizer.normalize(ACTION_KEY, raw), net)
    from streamdp.policy import ConfigError

    with pytest.raises(ConfigError, match="discrete_action_mode"):
        tiny_policy(sampler="rti", discrete_action_dims=[1], discrete_action_mode="clip", **KW)


def test_divergence_forces_full_resample_and_is_counted():
    p = perturb(tiny_policy(seed=4, sampler="rti", rti_steps=3, rti_divergence=1e-9, **KW))
    cc = CallCounter(p)
    _, calls = run_stream(p, obs_stream(16), cc)
    assert calls == [8] + [3 + 8] * 3
    assert p.rti_stats["divergence_resamples"] == 3 and p.rti_stats["warm"] == 3 and p.rti_stats["full"] == 4
    q = twin(p, rti_divergence=0.0)
    cq = CallCounter(q)
    _, calls = run_stream(q, obs_stream(16), cq)
    assert calls == [8, 3, 3, 3] and q.rti_stats["divergence_resamples"] == 0


def test_periodic_full_resample():
    p = perturb(tiny_policy(seed=4, sampler="rti", rti_steps=2, rti_full_every=3, rti_divergence=0.0, **KW))
    cc = CallCounter(p)
    _, calls = run_stream(p, obs_stream(28), cc)
    assert calls == [8, 2, 2] * 2 + [8]
    assert p.rti_stats["periodic_resamples"] == 2


def test_hybrid_fresh_tail_from_shifted_solution():
    p = perturb(tiny_policy(seed=6, sampler="sdp_rti", rti_divergence=0.0, **KW))
    buf = p.buffer
    k0 = p.settings.rti_start_level
    assert k0 == 29 and int(buf.grid_asc[-1]) == k0 and buf.K == len(p.settings.stream_grid())
    seen = []
    orig = buf.roll

    def spy(generator=None, fresh=None):
        seen.append((buf.x0_hat.clone(), fresh))
        orig(generator=generator, fresh=fresh)

    buf.roll = spy
    stream = obs_stream(16)
    for o in stream:
        p.select_action(o)
    assert len(seen) == 3  # first observation: full solve and reseed (no roll)
    for x0_hat, fresh in seen:
        assert fresh is not None
        expect = shift_trajectory(x0_hat, 4)[buf.keep_end - 4 :]
        assert torch.equal(fresh, expect)
    # the fresh tail enters at k', not at N-1
    assert set(buf.labels()[buf.keep_end - 4 :].tolist()) <= {k0}


def test_hybrid_divergence_triggers_full_resolve():
    p = perturb(tiny_policy(seed=6, sampler="sdp_rti", rti_divergence=1e-9, **KW))
    cc = CallCounter(p)
    _, calls = run_stream(p, obs_stream(12), cc)
    steady = twin(p, sampler="sdp", num_inference_steps=len(p.settings.stream_grid()))
    cs = CallCounter(steady)
    _, sdp_calls = run_stream(steady, obs_stream(12), cs)
    assert calls[0] == 8 and calls[1:] == [c + 8 for c in sdp_calls[:2]]
    assert p.rti_stats["divergence_resamples"] == 2


def test_rti_config_validation():
    from streamdp.policy import ConfigError

    with pytest.raises(ConfigError, match="rti_start_level"):
        tiny_policy(sampler="rti", rti_start_level=100, **KW)
    with pytest.raises(ConfigError, match="discrete_action_dims"):
        tiny_policy(sampler="rti", discrete_action_dims=[2], **KW)
    with pytest.raises(ConfigError, match="min_max"):
        tiny_policy(sampler="rti", discrete_action_dims=[1], normalization="mean_std", **KW)
    with pytest.raises(ConfigError, match="raise rti_start_level"):
        tiny_policy(sampler="sdp_rti", rti_start_level=1, **KW)
    with pytest.raises(ConfigError, match="h=floor"):
        tiny_policy(sampler="sdp_rti", **{**KW, "n_action_steps": 8})


def test_calibrate_rti_cli_picks_smallest_accepted_level(tmp_path):
    pol = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(13, seed=0), obs_stream(9, seed=1)])
    assert [len(e) for e in load_episodes(data)] == [13, 9]
    base = [f"checkpoint={ckpt}", f"dataset={data}", "candidates=9,49,99", "max_obs=5", "per_episode=0"]
    entry = rti_cli([*base, "tol=1e9", "steps=3", "follow=1"])
    # chained: 5 inferences (4 in episode 0, 1 in episode 1), 3 warm starts x 3 draws
    assert entry["start_level"] == 9 and entry["within_tolerance"] and entry["compared"] == 9
    assert entry["chained"] and entry["draws"] == 3 and entry["episodes"] == 1
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["extras"]["rti"]["start_level"] == 9 and meta["policy"]["sampler"] == "sdp"
    loaded = Policy.from_pretrained(ckpt, sampler="rti")
    assert loaded.settings.rti_start_level == 9 and loaded.settings.rti_steps == 3  # k' was calibrated for 3 warm steps
    assert Policy.from_pretrained(ckpt, sampler="rti", rti_steps=5).settings.rti_steps == 5
    assert Policy.from_pretrained(ckpt, sampler="rti", rti_start_level=40).settings.rti_start_level == 40
    entry = rti_cli([*base, "tol=0"])
    errs = {int(k): v for k, v in entry["errors"].items()}
    best = min(errs, key=errs.get)
    assert entry["best"] == best and entry["excess_upper"][str(best)] == 0.0
    # tol=0: only the best candidate has no excess (unless a jump check rejects it)
    assert entry["start_level"] == best
    # a tolerance between the excess bounds selects the smallest level that meets it
    ub = {int(k): v for k, v in entry["excess_upper"].items()}
    mid = sorted(ub.values())[1]
    entry = rti_cli([*base, f"tol={mid}", "follow=1"])
    assert entry["start_level"] == min(k for k, v in ub.items() if v <= mid)
    # default tolerance: the median spread between two full samples
    entry = rti_cli(base)
    assert entry["tolerance"] == entry["baseline_median"] > 0
    # the jump check: a level that must remove all of every jump is never accepted
    entry = rti_cli([*base, "tol=1e-6", "follow=1e-9"])
    kept = {int(k): v for k, v in entry["jump_kept"].items()}
    assert entry["jumps"] >= 5 and all(v is not None and v > 0 for v in kept.values())
    assert not entry["within_tolerance"] and entry["start_level"] == entry["best"]


def test_calibrate_rti_is_reproducible_across_seeds(tmp_path):
    """Two calibrations of the same policy on the same episodes with different noise seeds agree (the
    bound, not the mean, decides), and the counts are those of the chained protocol."""
    pol = perturb(tiny_policy(seed=2, sampler="sdp", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    data = save_observations(tmp_path / "obs.npz", [obs_stream(9, seed=s) for s in range(6)])
    levels, counts = set(), set()
    for seed in (0, 1, 2):
        entry = rti_cli(
            [f"checkpoint={ckpt}", f"dataset={data}", "candidates=9,49,99", "steps=3", "max_obs=18",
             "per_episode=3", "draws=2", f"seed={seed}"]
        )  # fmt: skip
        levels.add(entry["start_level"])
        counts.add((entry["inferences"], entry["compared"], entry["episodes"]))
    assert counts == {(18, 6 * 2 * 2, 6)}  # 6 episodes x 3 inferences; 2 warm starts each; 2 draws
    assert len(levels) == 1


def test_lerobot_dataset_source(tmp_path):
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    root = tmp_path / "ds"
    ds = lerobot_dataset.LeRobotDataset.create(
        repo_id="local/obs",
        fps=10,
        root=root,
        features={
            "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
            "action": {"dtype": "float32", "shape": (2,), "names": None},
        },
        use_videos=False,
    )
    for ep in range(2):
        for o in obs_stream(5, seed=ep):
            ds.add_frame({"observation.state": o["observation.state"], "action": np.zeros(2, np.float32), "task": "t"})
        ds.save_episode()
    ds.finalize()
    eps = load_episodes(root)
    assert [len(e) for e in eps] == [5, 5]
    np.testing.assert_allclose(eps[1][2]["observation.state"], obs_stream(5, seed=1)[2]["observation.state"])


def test_calibration_refuses_a_dataset_with_nan_like_training(tmp_path, capsys):
    from streamdp.policy.calibration import rti_main

    pol = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    frames = [obs_stream(9, seed=0), obs_stream(9, seed=1)]
    frames[1][4]["observation.state"] = np.array([0.1, np.nan], dtype=np.float32)
    data = save_observations(tmp_path / "obs.npz", frames)
    before = (ckpt / "config.json").read_text()
    assert rti_main([f"checkpoint={ckpt}", f"dataset={data}", "max_obs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DataError" in err
    assert "'observation.state' has a non-finite value (nan) at episode 1, frame 4, dim 1" in err
    assert (ckpt / "config.json").read_text() == before  # nothing written


def test_one_action_per_prediction_loop():
    """RTI-DP's own loop: Ta = 1, a fresh observation every control tick, the previous solution shifted
    by one action; after the first (full) solve every tick is one warm solve of rti_steps calls."""
    p = perturb(tiny_policy(seed=4, sampler="rti", rti_start_level=29, rti_steps=3, **{**KW, "n_action_steps": 1}))
    calls = []
    for o in obs_stream(10):
        before = p.nfe_total
        a = p.select_action(o)
        assert np.isfinite(a).all()
        calls.append(p.nfe_total - before)
    assert calls == [len(p.settings.full_grid())] + [3] * 9
    assert p.rti_stats["full"] == 1 and p.rti_stats["warm"] == 9

import numpy as np
import pytest
import torch

from streamdp.policy import Policy
from streamdp.policy.config import ConfigError
from streamdp.policy.samplers.rolling_buffer import (
    RollingBuffer,
    chunk_index,
    ladder,
    training_label_patterns,
    training_labels,
)
from streamdp.policy.schedule import NoiseSchedule

from .helpers import CallCounter, tiny_config, tiny_policy, tiny_stats


def test_ladder_worked_example_tp20():
    lad = ladder(20, 2, 8, 100)
    assert lad[:9] == [49] * 9
    assert lad[9:] == [99] * 11


def test_ladder_three_chunks_and_tail():
    assert chunk_index(16, 2, 5) == [0] * 6 + [1] * 5 + [2] * 5
    assert ladder(16, 2, 5, 16) == [4] * 6 + [9] * 5 + [15] * 5
    # a leftover tail joins the last chunk: Tp=18, To=2, Ta=5 -> h=3, slots 16,17 are tail
    assert chunk_index(18, 2, 5)[-3:] == [2, 2, 2]


@pytest.mark.parametrize("tp,to,ta", [(16, 2, 8), (10, 3, 5), (8, 1, 5)])
def test_single_chunk_rejected_with_fix(tp, to, ta):
    with pytest.raises(ConfigError, match=r"h=floor\(\(Tp-To\+1\)/Ta\)=1.*raise horizon Tp"):
        ladder(tp, to, ta, 100)


def _nfe_sequence(tp, to, ta, k, n_obs, denoiser="unet"):
    kw = dict(horizon=tp, n_obs_steps=to, n_action_steps=ta, num_inference_steps=k, denoiser=denoiser)
    pol = tiny_policy(**kw)
    counter = CallCounter(pol)
    seq = []
    for t in range(n_obs):
        assert pol.observe({"observation.state": np.array([0.1 * t, 0.0])}, stamp=float(t))
        made = pol.denoise()
        assert made == counter.calls
        seq.append(counter.take())
        assert pol.num_ready == ta
        pol.pop_ready()
    return seq


def test_nfe_per_observation_tp20_is_50():
    assert _nfe_sequence(20, 2, 8, 100, 4, denoiser="transformer") == [50, 50, 50, 50]


def test_nfe_per_observation_cycles_5_5_6():
    assert _nfe_sequence(16, 2, 5, 16, 9) == [5, 5, 6] * 3


def test_nfe_ta1_cycles_6_7_7():
    assert _nfe_sequence(16, 2, 1, 100, 6, denoiser="transformer")[-3:] == [6, 7, 7]


def test_one_call_per_observation_when_grid_equals_chunks():
    # Ta = 1, K = h = Tp - To + 1 -> the floor: one network call per observation.
    assert _nfe_sequence(16, 2, 1, 15, 5, denoiser="transformer") == [1] * 5


def test_roll_invariants():
    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    buf = RollingBuffer(sched, 16, 3, 4, 2, 100)
    buf.reset(generator=g)
    for _ in range(buf.steps_until_ready()):
        buf.step(torch.zeros(16, 2), generator=g)
    assert buf.chunk0_clean()
    before_x, before_pos = buf.x.clone(), buf.pos.clone()
    ready = buf.ready_actions()
    assert torch.equal(ready, before_x[2:6])  # slots To-1 .. To-1+Ta-1
    assert (before_pos[:6] == -1).all()
    buf.roll(generator=g)
    h, keep_end = buf.h, buf.keep_end
    assert keep_end == 2 + h * 4
    # kept slots shifted left by Ta, labels carried over (past slots excepted)
    assert torch.equal(buf.x[2 : keep_end - 4], before_x[6:keep_end])
    assert torch.equal(buf.pos[2 : keep_end - 4], before_pos[6:keep_end])
    # fresh tail at the top grid level
    assert (buf.pos[keep_end - 4 :] == 99).all()
    # past slots take the label of slot To-1 and are really re-noised (no longer the clean values)
    assert (buf.pos[:2] == buf.pos[2]).all() and buf.pos[2] >= 0
    assert not torch.allclose(buf.x[:2], before_x[4:6])
    # re-noise has the right scale: many draws of the noised slot have variance 1 - alpha_bar
    ab = sched.alpha_bar(buf.labels()[:1], torch.float64)
    assert 0 < ab.item() < 1


def test_emitted_actions_are_clean_slots_unnormalised():
    pol = tiny_policy(num_inference_steps=10, horizon=16, n_action_steps=4)
    buf = pol.buffer
    pol.observe({"observation.state": np.zeros(2)})
    # run the loop by hand to capture the buffer just before the roll
    cond = pol.condition()
    while not buf.chunk0_clean():
        buf.step(pol.call(buf.x[None], buf.labels()[None], cond)[0], generator=pol.generator)
    expect = pol.normalizer.unnormalize("action", buf.x[1:5]).numpy()
    assert (buf.labels()[1:5] == -1).all()
    assert pol.denoise() == 0  # chunk 0 already clean: emit and roll without another call
    got = pol.pop_ready()
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    # min-max stats: normalised [-1, 1] maps to [min, max] = [-1, 2]
    assert got.min() >= -1 - 1e-5 and got.max() <= 2 + 1e-5


def test_training_labels_mix_visited_patterns_and_uniform():
    cfg = tiny_config(num_inference_steps=16, n_action_steps=4)
    patterns = training_label_patterns(cfg)
    g = torch.Generator().manual_seed(0)
    k = training_labels(4000, 100, patterns, 0.8, 16, generator=g)
    assert k.shape == (4000, 16) and k.min() >= 0 and k.max() <= 99
    shared = (k == k[:, :1]).all(1)
    assert 0.15 < shared.float().mean().item() < 0.25
    rows = {tuple(r) for r in patterns.tolist()}
    assert all(tuple(r) in rows for r in k[~shared].tolist())  # every ladder label is a visited pattern
    assert len({tuple(r) for r in k[~shared].tolist()}) == len(rows)  # and all of them get trained


@pytest.mark.parametrize(
    "sampler,k,ta,k_prime",
    [("sdp", 16, 4, None), ("sdp", 100, 4, None), ("sdp", 10, 5, None), ("sdp_rti", 16, 4, 59)],
)
def test_training_labels_are_the_patterns_inference_visits(sampler, k, ta, k_prime):
    """The labels the network sees at inference, over every phase of the SDP cycle (and the hybrid's
    truncated ladder), are exactly the ladder patterns training samples from."""
    extra = {"rti_start_level": k_prime, "rti_divergence": 0.0} if k_prime else {}
    cfg = tiny_config(sampler=sampler, num_inference_steps=k, n_action_steps=ta, **extra)
    pol = Policy(cfg, stats=tiny_stats(), seed=0)
    seen: set[tuple[int, ...]] = set()
    orig = pol.model.eps

    def spy(x, labels, cond):
        if bool((labels != labels[:, :1]).any()):  # ladder calls (a full solve's labels are all equal)
            seen.add(tuple(labels[0].tolist()))
        return orig(x, labels, cond)

    pol.model.eps = spy
    rng = np.random.default_rng(0)
    for _ in range(40):
        pol.select_action({"observation.state": rng.normal(size=2).astype(np.float32)})
    train = {tuple(r) for r in training_label_patterns(cfg).tolist()}
    if sampler == "sdp":
        assert seen == train
    else:  # the hybrid's run visits its own truncated ladder; training also keeps the plain K-grid one
        plain = {tuple(r) for r in training_label_patterns(cfg.replace(sampler="sdp")).tolist()}
        assert seen and seen <= train and seen.isdisjoint(plain) and train == seen | plain


def test_readme_example_cycles_33_33_34():
    assert ladder(16, 2, 4, 100) == [32] * 5 + [65] * 4 + [99] * 7
    assert _nfe_sequence(16, 2, 4, 100, 6, denoiser="transformer") == [33, 33, 34] * 2

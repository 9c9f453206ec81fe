"""Every sampler goes through one protocol and one denoiser-call wrapper (streamdp.policy.samplers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdp.policy.samplers import SAMPLER_CLASSES, DenoiserCall, Sampler
from streamdp.policy.schedule import NoiseSchedule, ScheduleConfig

from ..accel.util import KW, obs_stream, perturb, tiny_policy

SAMPLERS = sorted(SAMPLER_CLASSES)


def _policy(sampler: str, seed: int = 1):
    extra = {"rti_start_level": 59, "rti_divergence": 0.0} if sampler in ("rti", "sdp_rti") else {}
    return perturb(tiny_policy(seed=seed, sampler=sampler, **{**KW, **extra}))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_network_call_goes_through_the_one_wrapper(sampler):
    """The network is called only by DenoiserCall, and its count is the policy's NFE count."""
    p = _policy(sampler)
    assert isinstance(p.sampler_impl, Sampler) and isinstance(p.call, DenoiserCall)
    assert p.sampler_impl.ctx.call is p.call
    seen = [0]
    orig = p.model.denoiser.forward

    def counted(*a, **k):
        seen[0] += 1
        return orig(*a, **k)

    p.model.denoiser.forward = counted
    for o in obs_stream(12):
        p.select_action(o)
    assert seen[0] == p.nfe_total > 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_budgeted_advance_never_overspends_and_emits_once(sampler):
    p = _policy(sampler)
    stream = obs_stream(20)
    for o in stream[:5]:
        p.select_action(o)
    p.pop_ready()
    p.observe(stream[5])
    calls = []
    while p.num_ready == 0:
        made = p.denoise(budget=1)
        assert made <= 1
        calls.append(made)
        assert len(calls) < 200
    assert sum(calls) == p.last_nfe  # every call of this chunk was counted for it
    assert p.num_ready == p.config.n_action_steps
    assert p.denoise(budget=5) == 0  # nothing more to do until a new observation arrives


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_state_dict_restores_the_sampler_exactly(sampler):
    """Saving the sampler's state (and the RNG) and restoring it replays the same chunks bit for bit,
    also when saved in the middle of a budgeted solve."""
    p = _policy(sampler)
    stream = obs_stream(24)
    for o in stream[:8]:
        p.select_action(o)
    p.observe(stream[8])
    p.denoise(budget=1)
    state, rng = p.sampler_impl.state_dict(), p.generator.get_state()
    history, executed = list(p._history), p._executed

    def finish() -> np.ndarray:
        out = [p.pop_ready()] if p.denoise() or p.num_ready else []
        for o in stream[9:14]:
            out.append(np.array([p.select_action(o)]))
        return np.concatenate(out)

    first = finish()
    p.sampler_impl.load_state_dict(state)
    p.generator.set_state(rng)
    p._history.clear()
    p._history.extend(history)
    p._ready.clear()
    p._executed, p._ahead, p._fresh, p._cond = executed, 0, True, None
    again = finish()
    np.testing.assert_array_equal(first, again)


def test_step_maths_live_in_one_place():
    """NoiseSchedule.step is exactly the affine update of step_coefficients (which the kernel uses)."""
    sched = NoiseSchedule(ScheduleConfig(num_train_steps=100))
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(1, 16, 3, generator=g) for _ in range(3))
    k = torch.tensor([[-1, -1, 0, 5, 9, 20, 40, 60, 80, 99, 99, 50, 30, 10, 3, 1]])
    k_prev = torch.where(k > 0, k // 2, torch.full_like(k, -1))
    for mode in ("ddpm", "ddim"):
        s1, s2, c0, ck, sig = sched.step_coefficients(k, k_prev, mode)[..., None]
        x0 = ((x.double() - s1 * eps.double()) * s2).clamp(-1, 1)
        want = (c0 * x0 + ck * x.double() + (sig * z.double() if mode == "ddpm" else 0)).float()
        got = sched.step(x, eps, k, k_prev, mode=mode, noise=z)
        torch.testing.assert_close(got, torch.where((k == -1)[..., None], x, want), rtol=0, atol=0)

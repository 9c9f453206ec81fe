"""Fused kernels on CPU through the Triton interpreter (TRITON_INTERPRET=1, set in tests/conftest.py)
against their PyTorch references, on random inputs of odd sizes, float32 and bfloat16.

Tolerances: float32 1e-5 (abs and rel; same float32 arithmetic, different operation order);
bfloat16 outputs 1.6e-2 rel / 2e-2 abs (two bf16 ulps: the interpreter truncates when it casts
float32 -> bfloat16 where torch rounds to nearest, so results may differ by one ulp).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from streamdp.kernels import use_triton
from streamdp.kernels.film_norm import film_group_norm, film_group_norm_reference
from streamdp.kernels.residual_cache import cached_residual, cached_residual_reference
from streamdp.kernels.roll_step import RollNoise, RollPlan, roll_step, roll_step_reference
from streamdp.policy.samplers.rolling_buffer import RollingBuffer
from streamdp.policy.schedule import NoiseSchedule

from .util import KW, obs_stream, perturb, tiny_policy, twin

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2)}
DTYPES = [torch.float32, torch.bfloat16]


def _nonzero(*shape, g, dtype=torch.float32, scale=1.0):
    x = torch.randn(*shape, generator=g) * scale
    x = torch.where(x.abs() < 1e-3, torch.full_like(x, 0.5), x)  # never (near) zeros
    return x.to(dtype)


def test_dispatch_rules(monkeypatch):
    cpu = torch.zeros(3)
    monkeypatch.delenv("STREAMDP_TRITON", raising=False)
    assert not use_triton(cpu)
    assert use_triton(cpu, force=True)
    monkeypatch.setenv("STREAMDP_TRITON", "1")
    assert use_triton(cpu)
    monkeypatch.setenv("STREAMDP_TRITON", "0")
    assert not use_triton(cpu)


# ---------------------------------------------------------------------------------------- (a) roll_step
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tp,to,ta,d", [(13, 3, 4, 5), (17, 1, 5, 3), (11, 2, 3, 7)])
def test_roll_step_triton_matches_reference(dtype, tp, to, ta, d):
    g = torch.Generator().manual_seed(tp * d)
    h = (tp - to + 1) // ta
    keep_end = to - 1 + h * ta
    keep_len, n_past = keep_end - ta, to - 1
    n_fresh = tp - keep_len
    coef = torch.rand(5, tp, generator=g) + 0.1
    coef[:, :2] = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])[:, None]  # two clean slots: identity
    x, eps = _nonzero(tp, d, g=g, dtype=dtype), _nonzero(tp, d, g=g, dtype=dtype)
    z_step, z_fresh, z_past, guess = (_nonzero(n, d, g=g) for n in (tp, n_fresh, n_past, n_fresh))
    noise = RollNoise(z_step, z_fresh, z_past, guess)
    plan = RollPlan(
        shift=ta,
        keep_len=keep_len,
        n_past=n_past,
        emit_start=to - 1,
        n_emit=ta,
        past_coef=(0.7, 0.3),
        fresh_coef=(0.2, 0.9),
        clip=1.5,
    )
    out_t, ready_t = roll_step(x, eps, coef, noise, plan, force=True)
    out_r, ready_r = roll_step_reference(x, eps, coef, noise, plan)
    assert out_t.dtype == dtype and out_t.shape == (tp, d) and ready_t.shape == (ta, d)
    torch.testing.assert_close(out_t.float(), out_r.float(), **TOL[dtype])
    torch.testing.assert_close(ready_t.float(), ready_r.float(), **TOL[dtype])
    assert out_r.abs().min() > 0  # the comparison is on non-trivial values


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("mode", ["ddpm", "ddim"])
@pytest.mark.parametrize("tp,to,ta,k,with_fresh", [(16, 2, 4, 10, False), (15, 3, 3, 7, True), (13, 1, 4, 100, True)])
def test_fused_step_and_roll_matches_rolling_buffer(monkeypatch, backend, mode, tp, to, ta, k, with_fresh):
    """The fused path (kernel or its reference) against RollingBuffer.step + ready_actions + roll,
    with identical generator draws."""
    monkeypatch.setenv("STREAMDP_TRITON", "1" if backend == "triton" else "0")
    sched = NoiseSchedule()
    d = 3
    bufs = [RollingBuffer(sched, tp, to, ta, d, k) for _ in range(2)]
    g0 = torch.Generator().manual_seed(1)
    for b in bufs:
        b.reset(primer=_nonzero(tp, d, g=torch.Generator().manual_seed(2), scale=0.5), generator=g0.clone_state())
    gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)]
    eps_g = torch.Generator().manual_seed(4)
    for _ in range(3):  # three observations
        while bufs[0].steps_until_ready() > 1:
            eps = _nonzero(tp, d, g=eps_g)
            for b, gen in zip(bufs, gens):
                b.step(eps, mode=mode, generator=gen)
        eps = _nonzero(tp, d, g=eps_g)
        fresh = _nonzero(bufs[0].tp - bufs[0].keep_end + ta, d, g=eps_g, scale=0.3) if with_fresh else None
        ready_u = bufs[0].step_and_roll(eps, mode=mode, generator=gens[0], fresh=fresh, fused=False)
        ready_f = bufs[1].step_and_roll(eps, mode=mode, generator=gens[1], fresh=fresh, fused=True)
        torch.testing.assert_close(ready_f, ready_u, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bufs[1].x, bufs[0].x, atol=1e-5, rtol=1e-5)
        assert torch.equal(bufs[1].pos, bufs[0].pos)
        assert torch.equal(gens[0].get_state(), gens[1].get_state())  # same draws, same order


def test_step_coefficients_reproduce_schedule_step():
    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([-1, 0, 5, 37, 99, 64, -1])
    k_prev = torch.tensor([-1, -1, 2, 20, 90, 63, -1])
    x, eps, z = (_nonzero(7, 3, g=g) for _ in range(3))
    for mode in ("ddpm", "ddim"):
        s1, s2, c0, ck, sig = sched.step_coefficients(k, k_prev, mode)[..., None]
        x0 = ((x.double() - s1 * eps.double()) * s2).clamp(-1, 1)
        ours = c0 * x0 + ck * x.double() + sig * z.double()
        ref = sched.step(x[None], eps[None], k[None], k_prev[None], mode=mode, noise=z[None])[0]
        torch.testing.assert_close(ours.float(), ref, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------- (b) film_norm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,c,groups,length", [(3, 12, 4, 7), (1, 15, 5, 9), (2, 8, 8, 13)])
def test_film_group_norm_triton_matches_reference(dtype, b, c, groups, length):
    g = torch.Generator().manual_seed(c * length)
    h = (_nonzero(b, c, length, g=g, scale=2.0) + 0.7).to(dtype)
    w, bias = _nonzero(c, g=g, dtype=dtype), _nonzero(c, g=g, dtype=dtype)
    scale, shift = _nonzero(b, c, g=g, dtype=dtype), _nonzero(b, c, g=g, dtype=dtype)
    out = film_group_norm(h, w, bias, scale, shift, groups, force=True)
    ref = film_group_norm_reference(h, w, bias, scale, shift, groups)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])


def test_film_group_norm_is_the_unet_film_block():
    from streamdp.policy.nets import FiLMResBlock

    torch.manual_seed(0)
    blk = FiLMResBlock(5, 16, 11, 5, 4).eval()
    with torch.no_grad():
        blk.block1.norm.weight.normal_()
        blk.block1.norm.bias.normal_()
        x, cond = torch.randn(2, 5, 9), torch.randn(2, 11)
        scale, shift = blk.film(cond).chunk(2, dim=1)
        want = scale[..., None] * blk.block1(x) + shift[..., None]
        h = blk.block1.conv(x)
        got = film_group_norm(h, blk.block1.norm.weight, blk.block1.norm.bias, scale, shift, 4, force=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- (c) residual_cache
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 13, 37), (3, 7, 129), (2051,)])
def test_cached_residual_triton_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(len(shape))
    x, delta = _nonzero(*shape, g=g, dtype=dtype), _nonzero(*shape, g=g, dtype=dtype)
    cache_t, cache_r = torch.full(shape, 9.0, dtype=dtype), torch.full(shape, 9.0, dtype=dtype)
    out_t = cached_residual(x, delta, cache=cache_t, force=True)
    out_r = cached_residual_reference(x, delta, cache=cache_r)
    torch.testing.assert_close(out_t.float(), out_r.float(), **TOL[dtype])
    assert torch.equal(cache_t, delta) and torch.equal(cache_r, delta)  # the store is an exact copy
    reuse = cached_residual(x, cache_t, force=True)  # reuse step: x + cached delta, nothing stored
    torch.testing.assert_close(reuse.float(), (x + delta).float(), **TOL[dtype])
    if dtype == torch.float32:
        assert torch.equal(out_t, x + delta)  # one float32 add: bit-identical


def test_bac_runtime_with_fused_kernel_matches_reference_path():
    from .util import with_bac

    base = perturb(tiny_policy(seed=3, sampler="ddim", **KW))
    cached = with_bac(base, ratio=0.5, top=1, n_obs=2)
    outs = []
    for fused in (False, True):
        pol = twin(cached, seed=1)
        pol.observe(obs_stream(1)[0])
        pol.call.begin_solve(pol.settings.solve_key("full"))  # builds the cache from extras
        pol.cache.fused = fused
        pol.denoise()
        outs.append(pol.pop_ready())
        assert pol.cache.reused > 0
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-6, rtol=1e-6)

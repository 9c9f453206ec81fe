"""GPU-only checks: compiled Triton kernels, the fused SDP roll in the runtime, and CUDA-graph replay.
Skipped without CUDA (this project's development machines have none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamdp.policy import Policy

from .util import KW, obs_stream, perturb, run_stream, tiny_policy, twin, with_bac

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the dev machines)")

# No tl.dot in these kernels, so no TF32; GPU runs of the network itself get 1e-4.
KTOL = dict(atol=1e-5, rtol=1e-5)
NTOL = dict(atol=1e-4, rtol=1e-4)


def _to_cuda(policy: Policy, **overrides) -> Policy:
    return policy.twin(seed=0, device="cuda", **overrides)


def test_kernels_compiled_on_gpu_match_reference():
    from streamdp.kernels.film_norm import film_group_norm, film_group_norm_reference
    from streamdp.kernels.residual_cache import cached_residual, cached_residual_reference

    g = torch.Generator(device="cuda").manual_seed(0)
    x, d = torch.randn(3, 17, 129, device="cuda", generator=g), torch.randn(3, 17, 129, device="cuda", generator=g)
    cache = torch.empty_like(d)
    torch.testing.assert_close(cached_residual(x, d, cache=cache), cached_residual_reference(x, d), **KTOL)
    assert torch.equal(cache, d)
    h = torch.randn(2, 24, 16, device="cuda", generator=g)
    w, b = torch.randn(24, device="cuda", generator=g), torch.randn(24, device="cuda", generator=g)
    s, t = torch.randn(2, 24, device="cuda", generator=g), torch.randn(2, 24, device="cuda", generator=g)
    torch.testing.assert_close(film_group_norm(h, w, b, s, t, 8), film_group_norm_reference(h, w, b, s, t, 8), **KTOL)


def test_unet_on_gpu_runs_the_fused_film_norm_and_matches_cpu():
    """The U-Net's FiLM blocks call the fused GroupNorm kernel on CUDA; same outputs as the CPU path."""
    from streamdp.kernels import film_norm

    calls = [0]
    orig = film_norm.film_group_norm_triton

    def counted(*a, **k):
        calls[0] += 1
        return orig(*a, **k)

    film_norm.film_group_norm_triton = counted
    try:
        cpu = perturb(tiny_policy(seed=1, sampler="ddim", **{**KW, "denoiser": "unet"}))
        a_cpu, _ = run_stream(twin(cpu, seed=0), obs_stream(8))
        a_gpu, _ = run_stream(_to_cuda(cpu), obs_stream(8))
    finally:
        film_norm.film_group_norm_triton = orig
    assert calls[0] > 0
    np.testing.assert_allclose(a_gpu, a_cpu, **NTOL)


def test_sdp_on_gpu_uses_fused_roll_and_matches_cpu():
    cpu = perturb(tiny_policy(seed=1, sampler="sdp", **KW))
    gpu = _to_cuda(cpu)
    stream = obs_stream(12)
    a_cpu, _ = run_stream(twin(cpu, seed=0), stream)
    a_gpu, _ = run_stream(gpu, stream)
    np.testing.assert_allclose(a_gpu, a_cpu, **NTOL)


def _run_nfe(policy: Policy, stream: list[dict]) -> tuple[np.ndarray, list[int]]:
    """Actions and calls per inference from policy.nfe_total (graph replays bypass Python forward hooks)."""
    acts, calls = [], []
    for obs in stream:
        before = policy.nfe_total
        acts.append(policy.select_action(obs))
        if policy.nfe_total > before:
            calls.append(policy.nfe_total - before)
    return np.stack(acts), calls


@pytest.mark.parametrize("sampler", ["ddim", "sdp", "rti", "sdp_rti"])
@pytest.mark.parametrize("cache", ["none", "bac"])
def test_cuda_graph_replay_matches_eager(sampler, cache):
    base = perturb(tiny_policy(seed=2, sampler=sampler, rti_divergence=0.0, **KW))
    if cache == "bac":
        base = with_bac(base, ratio=0.5, top=1, n_obs=3)
    eager = _to_cuda(base, cuda_graph=False)
    graphed = _to_cuda(base, cuda_graph=True)
    stream = obs_stream(16)
    a_e, calls_e = _run_nfe(eager, stream)
    a_g, calls_g = _run_nfe(graphed, stream)
    assert calls_e == calls_g
    np.testing.assert_allclose(a_g, a_e, **NTOL)
    graph = graphed._graph
    assert graph is not None and graph.replays == sum(calls_g) and graph.captures == len(graph.graphs)
    if cache == "bac":
        assert graphed.cache.computed == eager.cache.computed and graphed.cache.reused == eager.cache.reused
        assert graph.captures >= 2  # all-update step 0 plus at least one reuse pattern
    else:
        assert graph.captures == 1

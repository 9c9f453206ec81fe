"""Network calls per observation for every inner loop, with and without BAC (which must change only
branch computations, never calls). Counted on the denoiser itself, never timed."""

from __future__ import annotations

import pytest

from .util import BranchCounter, CallCounter, obs_stream, run_stream, tiny_policy, twin, with_bac

KW5 = dict(
    denoiser="transformer",
    horizon=16,
    n_obs_steps=2,
    n_action_steps=5,
    num_inference_steps=16,
    rti_steps=3,
    rti_divergence=0.0,
    rti_full_every=5,
)
EXPECTED = {
    "ddpm": [100] * 3,  # DDPM-N: every train level (3 observations: it is the slow one)
    "ddim": [16] * 6,  # the K-level grid
    "sdp": [5, 5, 6, 5, 5, 6],  # ceil(K/h) with h = 3, K = 16 (docs/timing.md worked example)
    "rti": [16, 3, 3, 3, 3, 16],  # full, warm x (full_every - 1), periodic full
    # full solve, then SDP on the 5-level grid [29 ... 0] (k' = 29, K = 16 spacing): 1, 2, 2 repeating
    "sdp_rti": [16, 1, 2, 2, 1, 16],
}


@pytest.mark.parametrize("sampler", list(EXPECTED))
def test_calls_per_observation(sampler):
    plain = tiny_policy(seed=0, sampler=sampler, **KW5)
    cached = with_bac(twin(plain), ratio=0.5, top=1, n_obs=2 if sampler == "ddpm" else 3)
    stream = obs_stream(5 * len(EXPECTED[sampler]), seed=2)
    results = {}
    for name, pol in (("none", twin(plain, seed=1)), ("bac", twin(cached, seed=1))):
        cc, bc = CallCounter(pol), BranchCounter(pol)
        _, calls = run_stream(pol, stream, cc)
        results[name] = (calls, bc.take())
        assert pol.last_nfe == calls[-1]
    assert results["none"][0] == EXPECTED[sampler]
    assert results["bac"][0] == EXPECTED[sampler]  # BAC: same network calls ...
    total = sum(EXPECTED[sampler])
    assert results["none"][1] == total * 6  # 2 layers x 3 branches, every call
    assert results["bac"][1] < results["none"][1]  # ... fewer branch computations

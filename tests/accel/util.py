"""Shared builders for the accelerated-runtime tests (tiny transformer policies, counters, streams)."""

from __future__ import annotations

import numpy as np
import torch

from streamdp.policy import Policy
from streamdp.policy.calibration import calibrate_bac

from ..policy.helpers import CallCounter
from ..policy.helpers import tiny_policy as _tiny_policy

__all__ = ["BranchCounter", "CallCounter", "obs_stream", "run_stream", "tiny_policy", "twin", "with_bac"]

KW = dict(denoiser="transformer", horizon=16, n_obs_steps=2, n_action_steps=4, num_inference_steps=8)


def tiny_policy(seed: int = 0, **kw) -> Policy:
    """tests/policy's tiny policy with its weight initialisation seeded too (order-independent tests)."""
    torch.manual_seed(10_000 + seed)
    return _tiny_policy(seed=seed, **kw)


def obs_stream(n: int, seed: int = 0) -> list[dict]:
    """A smooth state trajectory (so warm starts have something to follow)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    base = np.concatenate([np.sin(0.2 * t), np.cos(0.15 * t)], axis=1) * 0.8
    return [{"observation.state": (base[i] + 0.01 * rng.normal(size=2)).astype(np.float32)} for i in range(n)]


class BranchCounter:
    """Counts real computations of every transformer residual branch (wraps each Branch.forward)."""

    def __init__(self, policy: Policy) -> None:
        self.calls = 0
        for b in policy.model.denoiser.branches():
            orig = b.forward

            def counted(*a, _orig=orig, **k):
                self.calls += 1
                return _orig(*a, **k)

            b.forward = counted

    def take(self) -> int:
        c, self.calls = self.calls, 0
        return c


def twin(policy: Policy, seed: int = 0, **overrides) -> Policy:
    """A second policy with the same weights and stats (and the given config changes)."""
    return policy.twin(seed=seed, **overrides)


def with_bac(policy: Policy, updates: int | None = None, ratio: float = 0.5, top: int = 2, n_obs: int = 6) -> Policy:
    """Calibrate BAC schedules for `policy`'s sampler on a twin and return a cache='bac' twin."""
    calib = twin(policy, seed=123, cache="none")
    eps = [obs_stream(n_obs * policy.config.n_action_steps, seed=7)]
    entry = calibrate_bac(calib, eps, updates=updates, update_ratio=ratio, top_blocks=top, max_obs=n_obs)
    policy.extras = {**policy.extras, "bac": entry}
    return twin(policy, seed=0, cache="bac")


def run_stream(policy: Policy, stream: list[dict], counter: CallCounter | None = None) -> tuple[np.ndarray, list[int]]:
    """select_action over the stream; returns the actions and the network calls of each inference."""
    acts, calls = [], []
    for obs in stream:
        acts.append(policy.select_action(obs))
        if counter is not None:
            c = counter.take()
            if c:
                calls.append(c)
    return np.stack(acts), calls


def perturb(policy: Policy, scale: float = 0.05, seed: int = 0) -> Policy:
    """Make zero-initialised weights non-trivial so tests exercise every path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return policy

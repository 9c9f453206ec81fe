"""Small shared builders for policy tests."""

from __future__ import annotations

import numpy as np

from streamdp.policy import Policy, PolicyConfig
from streamdp.policy.config import TransformerConfig, UnetConfig


def tiny_config(**kw) -> PolicyConfig:
    base = dict(
        action_dim=2,
        state_dim=2,
        n_obs_steps=2,
        n_action_steps=4,
        horizon=16,
        sampler="sdp",
        num_inference_steps=100,
        unet=UnetConfig(down_dims=(16, 32), step_embed_dim=16, cond_dim=32, n_groups=8),
        transformer=TransformerConfig(d_model=32, n_heads=2, n_layers=2),
    )
    base.update(kw)
    return PolicyConfig(**base)


def tiny_stats(action_dim: int = 2, state_dim: int = 2) -> dict:
    return {
        "action": {
            "min": -np.ones(action_dim),
            "max": np.ones(action_dim) * 2,
            "mean": np.zeros(action_dim),
            "std": np.ones(action_dim),
        },
        "observation.state": {
            "min": -np.ones(state_dim),
            "max": np.ones(state_dim),
            "mean": np.zeros(state_dim),
            "std": np.ones(state_dim),
        },
    }


def tiny_policy(seed: int = 0, **kw) -> Policy:
    cfg = tiny_config(**kw)
    return Policy(cfg, stats=tiny_stats(cfg.action_dim, cfg.state_dim), seed=seed)


class CallCounter:
    """Wraps the denoiser's forward to count network calls (the NFE), independent of any timer."""

    def __init__(self, policy: Policy) -> None:
        self.calls = 0
        net = policy.model.denoiser
        orig = net.forward

        def counted(*a, **k):
            self.calls += 1
            return orig(*a, **k)

        net.forward = counted

    def take(self) -> int:
        c, self.calls = self.calls, 0
        return c

"""Behaviour: a tiny model trained briefly on a two-mode task reproduces both modes, not their average."""

import numpy as np
import pytest

from streamdp.policy import Policy
from streamdp.policy.config import UnetConfig
from streamdp.sim.tasks.arc import arc_rollouts, mode_summary, train_arc_policy

from .helpers import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config(
        horizon=16,
        n_obs_steps=2,
        n_action_steps=4,
        primer="state",
        num_inference_steps=20,
        unet=UnetConfig(down_dims=(32, 64), step_embed_dim=32, cond_dim=64),
    )
    policy, losses = train_arc_policy(cfg, steps=1500, episodes=64, seed=0)
    path = policy.save_pretrained(tmp_path_factory.mktemp("arc") / "ckpt")
    return path, losses


def test_loss_decreases(trained):
    _, losses = trained
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:20])


@pytest.mark.parametrize("sampler,grid", [("sdp", 20), ("ddpm", 100)])
def test_both_modes_not_average(trained, sampler, grid):
    path, _ = trained
    policy = Policy.from_pretrained(path, sampler=sampler, num_inference_steps=grid, seed=1)
    ys = arc_rollouts(policy, n=24, steps=24, seed=2)
    s = mode_summary(ys)
    # both arcs are produced (an averaging policy would give ~0 on both) and few rollouts sit in between
    assert s["upper"] >= 0.1 and s["lower"] >= 0.1, s
    assert s["neither"] <= 0.2, s

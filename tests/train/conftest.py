"""Session datasets for the training tests (collected once with the project's own sim + LeRobot)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def arm_state_ds(tmp_path_factory):
    """arm_reach_dynamic, state mode (8-D state, 3-D action), 3 scripted episodes (~250 frames)."""
    from streamdp.sim.collect import collect

    root = tmp_path_factory.mktemp("data") / "arm_state"
    res = collect("arm_reach_dynamic", 3, root=root, obs_mode="state", progress=False)
    assert res.episodes_kept == 3
    return root


@pytest.fixture(scope="session")
def arm_image_ds(tmp_path_factory):
    """arm_reach_dynamic, image mode with one 32x32 camera ('top'), 2 scripted episodes."""
    from streamdp.sim.collect import collect

    root = tmp_path_factory.mktemp("data") / "arm_image"
    res = collect("arm_reach_dynamic", 2, root=root, obs_mode="image", task_kwargs={"image_size": 32}, progress=False)
    assert res.episodes_kept == 2
    return root

"""Fixtures of the ROS tests: a fresh rclpy context per test, checkpoints, the ROS environment.

The suite-wide conftest makes rclpy loadable (rosenv.ensure_ros_env) and sets
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random ROS_DOMAIN_ID and ROS_LOG_DIR (build/ros_log); `ros_env`
asserts it, and every child process inherits it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from streamdp.ros_nodes.rosenv import ros_env_problems

TASK = "arm_reach_dynamic"


@pytest.fixture(scope="session")
def ros_env() -> dict[str, str]:
    problems = ros_env_problems()
    assert not problems, problems  # the suite conftest must have set them (never run DDS without them)
    Path(os.environ["ROS_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")}


@pytest.fixture
def ros_context(ros_env):
    """An initialised rclpy Context of its own, shut down after the test (no leaked executors)."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        release_context(ctx)


def release_context(ctx) -> None:
    """Shut the context down and free its DDS participant now: with localhost-only discovery a leaked
    participant holds one of the few discovery slots that later two-process tests need."""
    import gc

    import rclpy

    if ctx.ok():
        rclpy.shutdown(context=ctx)
    ctx.destroy()
    gc.collect()


def _small_unet():
    from streamdp.policy.config import UnetConfig

    return UnetConfig(down_dims=(32, 64), step_embed_dim=32, cond_dim=32)


@pytest.fixture(scope="session")
def untrained_ckpt(tmp_path_factory) -> Path:
    """A valid arm_reach_dynamic checkpoint with random weights (lifecycle and validation tests)."""
    from streamdp.policy.policy import Policy
    from streamdp.sim.expert_policy import policy_config_for

    cfg = policy_config_for(TASK, unet=_small_unet(), num_inference_steps=8)
    stats = {
        "action": {"min": -np.ones(3) * 2, "max": np.ones(3) * 2, "mean": np.zeros(3), "std": np.ones(3)},
        "observation.state": {"min": -np.ones(8) * 3, "max": np.ones(8) * 3, "mean": np.zeros(8), "std": np.ones(8)},
    }
    out = tmp_path_factory.mktemp("ckpt") / "untrained"
    Policy(cfg, stats=stats).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def untrained_image_ckpt(tmp_path_factory) -> Path:
    """An image-mode arm checkpoint (camera 'top', 96x96) with random weights."""
    from streamdp.policy.policy import Policy
    from streamdp.sim.expert_policy import policy_config_for

    cfg = policy_config_for(TASK, "image", unet=_small_unet(), num_inference_steps=4)
    stats = {
        "action": {"min": -np.ones(3) * 2, "max": np.ones(3) * 2, "mean": np.zeros(3), "std": np.ones(3)},
        "observation.state": {"min": -np.ones(6) * 3, "max": np.ones(6) * 3, "mean": np.zeros(6), "std": np.ones(6)},
    }
    out = tmp_path_factory.mktemp("ckpt") / "untrained_image"
    Policy(cfg, stats=stats).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bundled_ckpt() -> Path:
    """The arm policy shipped with the package (scripts/make_bundled_checkpoints.sh); part of the repo."""
    from streamdp.sim import bundled_checkpoint

    found = bundled_checkpoint(TASK)
    assert found is not None, "sim/assets/checkpoints/arm_reach_dynamic is missing: scripts/make_bundled_checkpoints.sh"
    return found

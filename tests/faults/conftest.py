"""Fixtures of the fault-injection tests: the ROS test fixtures reused, one rig per module.

`ros_env`, `trained_ckpt` and the rclpy re-exec hook come from tests/ros/conftest.py (imported, not
copied). Note: a run of tests/faults together with tests/ros trains the tiny checkpoint once per
directory, as session fixtures are cached per defining conftest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.ros.conftest import pytest_configure, ros_env, trained_ckpt  # noqa: F401 - reused fixtures and hook

# Limits for the tiny (jerky) test policy at 20 Hz: loose enough that it mostly streams unclamped,
# tight enough that a corrupted output is clamped and escalates to a hold.
LIMITS = {
    "position_min": [-3.1, -3.1, -3.1],
    "position_max": [3.1, 3.1, 3.1],
    "max_delta": [0.8, 0.8, 0.8],  # rad per tick
    "max_velocity": [14.0, 14.0, 14.0],  # rad/s -> 0.7 rad per tick: the binding step limit
    "max_acceleration": [1000.0, 1000.0, 1000.0],  # rad/s^2 -> 2.5 rad per tick^2
    "max_consecutive_clamps": 6,
}

RESULTS: list[dict] = []


def release(ctx) -> None:
    """Shut the context down and free its DDS participant now (a leaked participant takes a localhost
    discovery slot that the later two-process tests need)."""
    import gc

    import rclpy

    if ctx.ok():
        rclpy.shutdown(context=ctx)
    ctx.destroy()
    gc.collect()


@pytest.fixture(scope="module")
def rig(ros_env, trained_ckpt):  # noqa: F811 - the fixtures imported above
    import rclpy
    from rclpy.context import Context

    from streamdp.ros_nodes.faults import FaultRig

    ctx = Context()
    rclpy.init(context=ctx)
    r = FaultRig(ctx, str(trained_ckpt), LIMITS)
    try:
        yield r
    finally:
        r.close()
        release(ctx)
        out = Path(os.environ.get("ROS_LOG_DIR", "build")).parent / "fault_report.json"
        out.write_text(json.dumps(RESULTS, indent=1))

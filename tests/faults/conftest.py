"""Fixtures of the fault-injection tests: the ROS test fixtures reused, one rig per module.

`ros_env`, `bundled_ckpt` (the shipped arm policy) and the random-weight image checkpoint come from
tests/ros/conftest.py (imported, not copied).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.ros.conftest import (  # noqa: F401 - reused fixtures and hook
    bundled_ckpt,
    release_context,
    ros_env,
    untrained_image_ckpt,
)

# The real limits of config/ros/sim.yaml (the arm URDF's positions and velocities; 0.3 rad per 20 Hz tick
# binding, 0.5 rad/tick^2 of step change, hold after 10 clamps in a row): the bundled policy, trained on an
# expert that moves at most 0.25 rad per tick, streams within them, and a corrupted output does not.
LIMITS = {
    "position_min": [-3.1416, -2.6, -2.6],
    "position_max": [3.1416, 2.6, 2.6],
    "max_delta": [0.4, 0.4, 0.4],  # rad per tick
    "max_velocity": [6.0, 6.0, 6.0],  # rad/s -> 0.3 rad per tick: the binding step limit
    "max_acceleration": [200.0, 200.0, 200.0],  # rad/s^2 -> 0.5 rad per tick^2
    "max_consecutive_clamps": 10,
}

RESULTS: list[dict] = []


release = release_context  # shut down and free the DDS participant at once (see tests/ros/conftest.py)


@pytest.fixture(scope="module")
def rig(ros_env, bundled_ckpt):  # noqa: F811 - the fixtures imported above
    import rclpy
    from rclpy.context import Context

    from .rig import FaultRig

    ctx = Context()
    rclpy.init(context=ctx)
    r = FaultRig(ctx, str(bundled_ckpt), LIMITS)
    try:
        yield r
    finally:
        r.close()
        release(ctx)
        out = Path(os.environ.get("ROS_LOG_DIR", "build")).parent / "fault_report.json"
        out.write_text(json.dumps(RESULTS, indent=1))

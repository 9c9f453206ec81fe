"""Suite-wide environment. Set before any test module imports triton, rclpy or mujoco."""

import os
import pathlib
import random

_root = pathlib.Path(__file__).resolve().parents[1]

# ROS network hygiene: discovery stays on this machine, a domain of our own, logs inside the tree.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
os.environ.setdefault("ROS_LOG_DIR", str(_root / "build" / "ros_log"))
# Triton kernels run on CPU tensors only through the interpreter, which must be chosen before the
# first `import triton` in the process.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

# One thread: on 2 cores any concurrent process (a simulator, a ROS node, a test subprocess) makes two
# torch threads collapse by an order of magnitude (docs/architecture.md, Environment rules).
torch.set_num_threads(1)


def pytest_configure(config):
    """rclpy's libraries, once, before any test module imports rclpy: with the pip ROS wheels in a layered
    virtualenv they may not be on the loader path, and the run is then re-executed once with them (a no-op
    when rclpy already imports; without rclpy at all the ROS tests fail on their own). pytest's output
    capture is released before a re-execution."""
    from streamdp.ros_nodes.rosenv import ensure_ros_env

    capman = config.pluginmanager.getplugin("capturemanager")
    ensure_ros_env(before_exec=lambda: capman.suspend_global_capture(in_=True) if capman else None, required=False)


_SCHED_LOG = _root / "build" / "sched_changes.log"


def pytest_runtest_teardown(item):
    """Keep the test process (and every child it starts) on the normal scheduler. Something in a test run
    left pytest's main thread in SCHED_FIFO 99; children inherit that, and the soak's busy-loop process then
    held a core that the node processes, also FIFO 99, could not get back (nodes starved for minutes).
    Reset it after the test that changed it and name that test in build/sched_changes.log."""
    if not hasattr(os, "sched_getscheduler") or os.sched_getscheduler(0) == os.SCHED_OTHER:
        return
    policy = os.sched_getscheduler(0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    _SCHED_LOG.parent.mkdir(parents=True, exist_ok=True)
    with _SCHED_LOG.open("a") as f:
        f.write(f"{item.nodeid}: scheduling policy {policy} -> SCHED_OTHER\n")

"""Process harness for the ROS tools and tests: node processes with logs, a watcher node, clean stops.

Used by the user-facing measurement tools (``e2e_bench``, ``streamdp-sim-episodes``, ``streamdp-demo``)
and by the tests; no node of the robot itself lives here. Importing it imports rclpy: call
:func:`streamdp.ros_nodes.rosenv.ensure_ros_env` first in an entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import Float64
from trajectory_msgs.msg import JointTrajectory

from streamdp.ros_nodes import bringup


class Monitor(Node):
    """Subscribes to what the test observes: commands, task distance, diagnostics."""

    def __init__(self, node_name: str = "streamdp_e2e_monitor", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.commands: list[tuple[float, float, int]] = []  # (receive time, header stamp, points)
        self.distances: list[tuple[float, float]] = []
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", self._on_cmd,
                                 QoSProfile(depth=100))
        self.create_subscription(Float64, "/task/distance", self._on_dist, QoSProfile(depth=100))
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, QoSProfile(depth=10))

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_cmd(self, m: JointTrajectory) -> None:
        self.commands.append((self._now(), m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, len(m.points)))

    def _on_dist(self, m: Float64) -> None:
        self.distances.append((self._now(), m.data))

    def _on_diag(self, m: DiagnosticArray) -> None:
        for s in m.status:
            if "streaming policy" in s.name:
                self.diag = {kv.key: kv.value for kv in s.values}
                self.diag_count += 1


def die_with_parent() -> None:
    """``preexec_fn`` of a node child: SIGTERM it when the harness dies, even by SIGKILL (Linux
    ``PR_SET_PDEATHSIG``), so no node outlives a killed soak or test and keeps publishing on its domain."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def node_processes(descs: list[Any], log_dir: Path, watcher_cls: type, **watcher_kw: Any) -> Iterator[tuple]:
    """Start `descs` as child processes (logs in `log_dir`) and a `watcher_cls` node in a context of its own;
    yields (watcher, executor, processes); on exit stops the children and frees the DDS participant at once
    (localhost-only discovery has few participant slots per domain)."""
    ctx = Context()
    rclpy.init(context=ctx)
    watcher = watcher_cls(context=ctx, **watcher_kw)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(watcher)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for d in descs:
            out = open(log_dir / f"{d.name}.log", "w")  # noqa: SIM115 - closed with the process
            logs.append(out)
            procs.append(subprocess.Popen(bringup.command(d, log_dir), env=bringup.child_env(d),
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=die_with_parent))
        yield watcher, ex, procs
    finally:
        stop_processes(procs)
        for f in logs:
            f.close()
        ex.shutdown()
        watcher.destroy_node()
        rclpy.shutdown(context=ctx)
        ctx.destroy()


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGINT every child (they finalise: a last hold), then kill those still running after 10 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def log_tail(log_dir: Path, n: int = 25) -> str:
    """The last `n` lines of every ``*.log`` in `log_dir` (for error messages)."""
    out = []
    for f in sorted(log_dir.glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-n:]
        out.append(f"--- {f.name}\n" + "\n".join(lines))
    return "\n".join(out)

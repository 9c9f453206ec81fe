"""Where rclpy's libraries are loaded: by the entry points, once, never as a side effect of an import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PURE = [  # modules that must import without rclpy (the pure logic, the CLIs that call ensure_ros_env first)
    "rosenv", "cli", "bringup", "demo", "e2e_bench", "observation", "streamer", "trajectory", "stats",
    "inference", "safety", "kinematics", "params", "commands", "safety_oracle", "soak",
]
ALL = sorted(p.stem for p in (ROOT / "ros_nodes").glob("*.py") if p.stem != "__init__")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_no_module_executes_a_process_at_import():
    """Importing any streamdp.ros_nodes module never calls os.execve (the old import-time re-execution)."""
    code = ("import os, importlib\n"
            "def boom(*a, **k): raise SystemExit('execve at import')\n"
            "os.execve = boom\n"
            f"for m in {ALL!r}: importlib.import_module('streamdp.ros_nodes.' + m)\n"
            "print('ok')\n")
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_pure_modules_and_entry_points_do_not_import_rclpy():
    code = ("import importlib, sys\n"
            f"for m in {sorted(set(PURE) & set(ALL))!r}: importlib.import_module('streamdp.ros_nodes.' + m)\n"
            "print(sorted(k for k in sys.modules if k == 'rclpy' or k.startswith('rclpy.')))\n")
    r = _run(code)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_ensure_ros_env_is_a_no_op_when_rclpy_loads():
    from streamdp.ros_nodes.rosenv import ensure_ros_env

    assert ensure_ros_env(required=False) is True  # the suite conftest already made it loadable
    r = _run("from streamdp.ros_nodes.rosenv import ensure_ros_env; print(ensure_ros_env())")
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_node_children_die_with_a_killed_harness(tmp_path):
    """A harness (soak, test) killed with SIGKILL takes its node processes with it (PR_SET_PDEATHSIG), so no
    node keeps publishing on the domain; here a child started the way node_processes starts nodes."""
    import os
    import signal
    import time

    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from streamdp.ros_nodes.testing import die_with_parent\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True,"
        " preexec_fn=die_with_parent)\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(120)\n")])
    try:
        end = time.monotonic() + 120
        while not (pidfile.is_file() and pidfile.read_text()):
            assert parent.poll() is None and time.monotonic() < end
            time.sleep(0.1)
        child = int(pidfile.read_text())
        os.kill(child, 0)  # alive while the harness is
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return
            # a zombie (the harness is gone, init reaps it) counts as gone
            stat = Path(f"/proc/{child}/stat")
            if stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"):
                return
            time.sleep(0.1)
        raise AssertionError(f"child {child} outlived its SIGKILLed harness")
    finally:
        if parent.poll() is None:
            parent.kill()

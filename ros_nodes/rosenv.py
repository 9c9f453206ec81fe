"""Where rclpy comes from, and the ROS environment every streamdp process must run in.

Two ROS sources are supported and nothing in the code hard-codes a path:

* **A sourced ROS 2 install** (Jazzy, Kilted, ...: ``source /opt/ros/<distro>/setup.bash``): rclpy,
  the message packages, ``launch``/``launch_ros`` and the ``ros2`` CLI come from it and are used as
  they are. ``ros2 launch streamdp sim.launch.py`` works after a regular (non-editable) install or a
  colcon overlay, since only those put ``launch/`` and ``config/`` in the ament index.
* **The ``ros-rclpy`` pip wheels** (Kilted, Fast DDS) when no ROS is sourced: real rclpy and the
  message packages in the virtualenv, but no ``launch``/``launch_ros``/``ros2`` CLI. The nodes then
  start as console scripts (``policy_node``, ``sim_bridge_node``) or through ``streamdp-bringup``,
  which runs the same node descriptions the launch files use.

The wheels find their shared libraries through ``LD_LIBRARY_PATH``, which their bootstrapper
(``ros_wheels_bootstrapper.pth``) fills from ``sys.prefix`` by re-executing the interpreter. In a
*layered* virtualenv (a light per-checkout ``.venv`` whose site-packages point at a heavy cached base
through a ``.pth``), ``sys.prefix`` is the light venv and the libraries live in the base, so the
first ``import rclpy`` fails with ``librcl_action.so: cannot open shared object file``.
``scripts/setup_env.sh`` fixes that for its own venvs (its ``.pth`` puts the base's library folders
on the path before the bootstrapper re-executes). For any other layout, :func:`ensure_ros_env`
repairs it the way the bootstrapper does: extend the library path and re-execute once (the dynamic
loader reads the path only at start-up, and preloading the wheel libraries in-process is not safe:
the wheels ship several copies of Fast DDS under different file names). It is never called at
import: the entry points call it first (``streamdp.ros_nodes.cli`` for the node console scripts,
the ``main()`` of ``streamdp-demo``, ``streamdp-bringup --compose`` and ``e2e_bench``, and
``tests/conftest.py``), before anything imports rclpy. :func:`with_ros_library_path` gives child
processes the path directly.

ROS network hygiene (DESIGN.md 8): ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (without it Fast DDS
multicasts discovery off the machine; ``ROS_LOCALHOST_ONLY=1`` is not enough), a distinct
``ROS_DOMAIN_ID`` per run, and ``ROS_LOG_DIR`` inside the build tree. :func:`ros_env_problems` says
what is missing; ``streamdp-bringup`` refuses to start without them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

_WHEELS_GUARD = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"
_REEXEC_GUARD = "_STREAMDP_ROS_LIBS_REEXEC"


def ros_env_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """What is wrong with `env` (default: os.environ) for running ROS nodes here; empty when fine."""
    env = os.environ if env is None else env
    problems = []
    rng = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
    if rng != "LOCALHOST":
        problems.append(
            f"ROS_AUTOMATIC_DISCOVERY_RANGE must be LOCALHOST (got {rng!r}): otherwise Fast DDS multicasts "
            "discovery off this machine"
        )
    dom = env.get("ROS_DOMAIN_ID", "")
    if not dom:
        problems.append("ROS_DOMAIN_ID is not set: pick a distinct domain per run (e.g. 1..101)")
    elif not dom.isdigit() or not 0 <= int(dom) <= 232:
        problems.append(f"ROS_DOMAIN_ID must be an integer in 0..232, got {dom!r}")
    if not env.get("ROS_LOG_DIR"):
        problems.append("ROS_LOG_DIR is not set: point it inside the build tree (e.g. build/ros_log)")
    return problems


def _base_prefixes() -> list[Path]:
    """Prefixes of every site-packages directory on sys.path that holds ROS wheels."""
    out: list[Path] = []
    for entry in sys.path:
        p = Path(entry)
        if p.name == "site-packages" and (p / "rclpy").is_dir():
            prefix = p.parents[2]  # <prefix>/lib/pythonX.Y/site-packages
            if prefix not in out:
                out.append(prefix)
    return out


def ros_library_dirs() -> list[str]:
    """Shared-library directories of pip-installed ROS wheels (empty for a sourced ROS install)."""
    if os.environ.get("AMENT_PREFIX_PATH") and not _base_prefixes():
        return []
    dirs: list[str] = []
    for prefix in _base_prefixes():
        site = next(prefix.glob("lib/python*/site-packages"), None)
        cands = [prefix / "lib"] + (sorted(site.glob("ros_*.libs")) if site else [])
        for d in cands:
            if d.is_dir() and str(d) not in dirs:
                dirs.append(str(d))
    return dirs


def with_ros_library_path(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` whose LD_LIBRARY_PATH includes the ROS wheel libraries (for child processes)."""
    out = dict(env)
    have = [p for p in out.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    extra = [d for d in ros_library_dirs() if d not in have]
    if extra:
        out["LD_LIBRARY_PATH"] = os.pathsep.join(extra + have)
    return out


def rclpy_loadable() -> tuple[bool, str]:
    """Whether `import rclpy` works in this process (imports it when it does)."""
    if importlib.util.find_spec("rclpy") is None:
        return False, "rclpy is not installed (source a ROS 2 install or pip install ros-rclpy)"
    try:
        import rclpy  # noqa: F401
    except ImportError as e:
        return False, str(e)
    return True, ""


def ensure_ros_env(before_exec: Callable[[], object] | None = None, required: bool = True) -> bool:
    """Make `import rclpy` work in this process, re-executing it once with the wheel library path if needed.

    Call it first in an entry point, before anything imports rclpy: re-execution restarts the
    interpreter with the same argv and the libraries on LD_LIBRARY_PATH, so whatever ran before it
    runs again. `before_exec` runs just before (tests/conftest.py gives pytest's captured output back
    there). Inside pytest without `before_exec` it raises instead: re-executing with pytest's capture
    active would swallow the run's output. Returns whether rclpy imports; with ``required=False`` an
    rclpy that cannot be loaded (or is not installed) returns False instead of raising."""
    ok, why = rclpy_loadable()
    if ok:
        return True
    fixable = "cannot open shared object file" in why and not os.environ.get(_REEXEC_GUARD) and ros_library_dirs()
    if fixable and before_exec is None and "_pytest" in sys.modules:
        raise ImportError(f"cannot import rclpy: {why}. The ROS wheel libraries are not on LD_LIBRARY_PATH; "
                          f"start the process with LD_LIBRARY_PATH={os.pathsep.join(ros_library_dirs())}")
    if not fixable:
        if required:
            raise ImportError(f"cannot import rclpy: {why}")
        return False
    env = with_ros_library_path(os.environ)
    env[_REEXEC_GUARD] = "1"
    env[_WHEELS_GUARD] = "1"  # the path already holds everything the wheels' bootstrapper would add
    if before_exec is not None:
        before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)

"""What a ROS workspace needs from this package: package.xml's dependencies, and a regular (non-editable)
install with the share/ and lib/ layout that ``ros2 launch`` / ``ros2 run`` look up."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from streamdp.ros_nodes import bringup

ROOT = Path(__file__).resolve().parents[2]
NOT_ON_PYPI = {"launch", "launch_ros"}  # come with a ROS install only (no pip wheels of them exist)


def _exec_depends() -> list[str]:
    return [e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")]


def _ros_imports() -> set[str]:
    """Top-level modules imported by ros_nodes/ and launch/ that ROS provides (pip: a ros-* distribution)."""
    dists = importlib.metadata.packages_distributions()
    names: set[str] = set()
    for f in [*(ROOT / "ros_nodes").glob("*.py"), *(ROOT / "launch").glob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n in NOT_ON_PYPI or any(d.startswith("ros-") for d in dists.get(n, []))}


def test_package_xml_declares_exactly_the_ros_packages_the_code_imports():
    declared = _exec_depends()
    assert len(declared) == len(set(declared))
    assert set(declared) == _ros_imports()


@pytest.mark.parametrize("name", _exec_depends())
def test_every_declared_ros_dependency_is_importable(name):
    spec = importlib.util.find_spec(name)
    if name in NOT_ON_PYPI and (spec is None or spec.origin is None):  # none, or this repo's launch/ folder
        pytest.skip(f"{name} is not installable from PyPI (only with a ROS install); streamdp-bringup stands in")
    importlib.import_module(name)


def test_regular_install_has_what_a_ros_workspace_needs(tmp_path):
    """The way colcon builds an ament_python package (setup.py install with setup.cfg's lib/<pkg> scripts),
    into a temporary prefix; build files stay in tmp_path."""
    prefix, b = tmp_path / "install", tmp_path / "b"
    b.mkdir()
    r = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(b), "build", "--build-base",
                        str(b / "build"), "install", "--prefix", str(prefix), "--record", str(b / "files.txt"),
                        "--single-version-externally-managed"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    share = prefix / "share" / "streamdp"
    assert (share / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "streamdp").is_file()
    for name in ("sim", "real_arm"):
        assert (share / "launch" / f"{name}.launch.py").is_file()
    configs = [f.relative_to(ROOT) for f in (ROOT / "config").rglob("*") if f.is_file()]
    assert configs and all((share / c).is_file() for c in configs), [c for c in configs if not (share / c).is_file()]
    executables = {d.executable for c in bringup.CONFIG_NAMES for d in bringup.describe(c)}
    assert executables == {"policy_node", "sim_bridge_node"}
    for exe in executables | {"streamdp-bringup", "streamdp-demo", "streamdp-sim-episodes", "expert_teleop_node"}:
        assert (prefix / "lib" / "streamdp" / exe).is_file(), exe
    site = next((prefix / "lib").glob("python*/site-packages"))
    for folder in ("policy", "ros_nodes", "kernels", "sim"):  # every subpackage too, found without listing it
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT)
            assert (site / "streamdp" / rel).is_file(), rel

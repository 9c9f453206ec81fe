"""Node descriptions shared by the launch files and ``streamdp-bringup`` (which needs no ``ros2 launch``).

``launch/sim.launch.py`` and ``launch/real_arm.launch.py`` are :func:`launch_description`: :func:`describe`
as ``launch_ros.actions.Node`` actions on a real ROS install. Where ``launch``/``launch_ros`` are not
installable (the pip ``ros-rclpy`` wheels), the same descriptions run as child processes::

    export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=42 ROS_LOG_DIR=$PWD/build/ros_log
    streamdp-bringup sim -p policy_node.checkpoint:=/path/to/ckpt
    streamdp-bringup sim --params my_sim.yaml --compose          # all nodes in one process
    streamdp-bringup real_arm --params config/ros/real_arm.yaml --dry-run   # print the commands
    streamdp-bringup sim --teleop --record -p recorder.root:=data/sim_demos -p recorder.max_episodes:=20

Bring-up refuses to start (exit code 2, a message naming each variable) unless
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, ``ROS_DOMAIN_ID`` and ``ROS_LOG_DIR`` are set: it never
lets Fast DDS multicast discovery off the machine by accident.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from streamdp.ros_nodes.rosenv import ros_env_problems, with_ros_library_path

PACKAGE = "streamdp"
CONFIG_NAMES = ("sim", "real_arm")
ROS_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}  # carried by every description


@dataclass(frozen=True)
class NodeDescription:
    """One node to start: what ``launch_ros.actions.Node`` needs, plus how to run it without ROS tooling."""

    executable: str  # console script (setup.py entry point) == launch_ros executable
    name: str  # node name (remapped with __node:=)
    module: str  # python -m module of the executable
    node_class: str  # "module:Class" for composition in one process
    package: str = PACKAGE
    parameters: tuple[str | Mapping[str, Any], ...] = ()  # YAML files and dicts, applied in order
    remappings: tuple[tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: dict(ROS_ENV))
    arguments: tuple[str, ...] = ()


def config_dir() -> Path:
    """config/ros of this checkout, or of the installed package share (regular install / overlay)."""
    src = Path(__file__).resolve().parents[1] / "config" / "ros"
    if src.is_dir():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory(PACKAGE)) / "config"
    except Exception:  # noqa: BLE001 - not in the ament index
        share = Path(sys.prefix) / "share" / PACKAGE / "config"
    return share / "ros" if (share / "ros").is_dir() else share


def default_params(config: str) -> Path:
    return config_dir() / f"{config}.yaml"


def bridge_parameter(files: Sequence[str | Path], overrides: Mapping[str, Mapping[str, Any]] | None, name: str,
                     default: Any) -> Any:
    """The sim bridge's parameter `name` as ROS will apply it: the override, else the last parameter file
    that sets it, else `default`."""
    value = default
    for f in files:
        if not Path(f).is_file():
            continue  # main() names every missing file
        try:
            doc = yaml.safe_load(Path(f).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"parameter file {f}: unreadable: {e}") from e
        value = ((doc.get("sim_bridge") or {}).get("ros__parameters") or {}).get(name, value)
    return (overrides or {}).get("sim_bridge", {}).get(name, value)


def _node_params(name: str, overrides: Mapping[str, Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...]:
    o = (overrides or {}).get(name)
    return (dict(o),) if o else ()


# The sim round trip's extra nodes (`teleop` / `record` of describe): the expert as the operator, the recorder.
TELEOP = NodeDescription(executable="expert_teleop_node", name="expert_teleop", module="streamdp.ros_nodes.teleop_node",
                         node_class="streamdp.ros_nodes.teleop_node:ExpertTeleopNode")
RECORDER = NodeDescription(executable="streamdp-record", name="recorder", module="streamdp.ros_nodes.recorder_node",
                           node_class="streamdp.ros_nodes.recorder_node:RecorderNode")
# The recorder follows the bridge's episodes and asks for each next one once the last is written; the bridge
# waits for it (no auto reset), so no observation is lost while an episode is saved. One frame per bridge tick.
RECORD_FOLLOW = {"episode_topic": "/task/episode", "reset_topic": "/task/reset", "frame_trigger": "joint_state"}


def describe(
    config: str,
    params: Sequence[str | Path] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    teleop: bool = False,
    record: bool = False,
) -> list[NodeDescription]:
    """Nodes of bring-up `config` ('sim' | 'real_arm'). `params`: YAML files (default: config/ros/<config>.yaml);
    `overrides`: {node name: {parameter: value}} applied after the files. In the sim, `teleop` drives the arm with
    the bridge's scripted expert (expert_teleop_node instead of policy_node) and `record` adds the recorder
    (config/ros/record.yaml), which records the bridge's episodes one by one."""
    if config not in CONFIG_NAMES:
        raise ValueError(f"unknown bring-up {config!r}; choose one of {CONFIG_NAMES}")
    if (teleop or record) and config != "sim":
        raise ValueError("--teleop and --record are for the sim bring-up; on a real arm run streamdp-record")
    files = tuple(str(p) for p in (params or [default_params(config)]))
    # The simulation runs out of the box with the policy bundled for the bridge's task and observation
    # mode (arm_reach_dynamic, arm_reach_dynamic_image with the camera, pusht); any checkpoint given in a
    # parameter file or an override comes later in the list, so it wins.
    default: tuple[Mapping[str, Any], ...] = ()
    if config == "sim":
        from streamdp.sim import bundled_checkpoint

        task = bridge_parameter(files, overrides, "task", "arm_reach_dynamic")
        image = bridge_parameter(files, overrides, "obs_mode", "state") == "image"
        found = bundled_checkpoint(f"{task}_image" if image else str(task))
        default = ({"checkpoint": str(found)},) if found is not None else ()
    policy = NodeDescription(
        executable="policy_node",
        name="policy_node",
        module="streamdp.ros_nodes.policy_node",
        node_class="streamdp.ros_nodes.policy_node:PolicyNode",
        parameters=default + files + _node_params("policy_node", overrides),
    )
    if config == "real_arm":
        return [policy]
    # With teleop there is no policy node to coordinate resets with (sim.yaml names one).
    modes = {**({"expert": True, "policy_node": ""} if teleop else {}), **({"auto_reset": False} if record else {})}
    sim = NodeDescription(
        executable="sim_bridge_node",
        name="sim_bridge",
        module="streamdp.ros_nodes.sim_bridge_node",
        node_class="streamdp.ros_nodes.sim_bridge_node:SimBridgeNode",
        parameters=files + ((modes,) if modes else ()) + _node_params("sim_bridge", overrides),
    )
    nodes = [sim, replace(TELEOP, parameters=files + _node_params(TELEOP.name, overrides)) if teleop else policy]
    if record:
        nodes.append(replace(RECORDER, parameters=(str(default_params("record")), dict(RECORD_FOLLOW), *files)
                             + _node_params(RECORDER.name, overrides)))
    return nodes


def launch_description(config: str, params_help: str) -> Any:
    """The ``LaunchDescription`` of ``launch/<config>.launch.py`` (needs ``launch``/``launch_ros``: a ROS install).

    Arguments ``params_file`` (default config/ros/<config>.yaml) and ``checkpoint`` (overrides the policy
    node's); the nodes are :func:`describe` (config) as ``launch_ros.actions.Node``, with discovery kept on
    this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, docs/architecture.md, Environment rules)."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    def nodes(context: Any, *args: Any, **kwargs: Any) -> list[Any]:
        params = LaunchConfiguration("params_file").perform(context)
        ckpt = LaunchConfiguration("checkpoint").perform(context)
        overrides = {"policy_node": {"checkpoint": ckpt}} if ckpt else None
        return [Node(package=d.package, executable=d.executable, name=d.name, parameters=list(d.parameters),
                     remappings=list(d.remappings), additional_env=dict(d.env), arguments=list(d.arguments),
                     output="screen")
                for d in describe(config, [params], overrides)]

    return LaunchDescription([
        *(SetEnvironmentVariable(k, v) for k, v in ROS_ENV.items()),
        DeclareLaunchArgument("params_file", default_value=str(default_params(config)), description=params_help),
        DeclareLaunchArgument("checkpoint", default_value="", description="override the policy checkpoint directory"),
        OpaqueFunction(function=nodes),
    ])


def ros_args(desc: NodeDescription, param_dir: str | Path) -> list[str]:
    """``--ros-args`` for `desc`: node name, parameter files (dicts written to YAML in `param_dir`, which the
    caller owns and removes), remaps."""
    out = ["--ros-args", "-r", f"__node:={desc.name}"]
    for i, p in enumerate(desc.parameters):
        if isinstance(p, Mapping):
            f = Path(param_dir) / f"{desc.name}_{i}.yaml"
            f.write_text(yaml.safe_dump({desc.name: {"ros__parameters": dict(p)}}))
            p = str(f)
        out += ["--params-file", str(p)]
    for a, b in desc.remappings:
        out += ["-r", f"{a}:={b}"]
    return out


def command(desc: NodeDescription, param_dir: str | Path, python: str | None = None) -> list[str]:
    """The command line running `desc` as a child process (``python -m <module> --ros-args ...``); parameter
    dicts are written to YAML files in `param_dir`."""
    return [python or sys.executable, "-m", desc.module, *desc.arguments, *ros_args(desc, param_dir)]


def dry_run_param_dir() -> Path:
    """Where ``--dry-run`` writes the parameter files its printed commands name: one fixed folder in the build
    tree (ROS_LOG_DIR's parent), rewritten by each dry run, so nothing piles up in the system temp folder."""
    d = Path(os.environ["ROS_LOG_DIR"]).resolve().parent / "bringup_params"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def child_env(desc: NodeDescription, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child: `base` (os.environ) + the description's env + ROS wheel libraries."""
    env = dict(os.environ if base is None else base)
    env.update(desc.env)
    return with_ros_library_path(env)


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``node.param:=value`` (YAML value) -> {node: {param: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, val = item.partition(":=")
        node, dot, prm = key.partition(".")
        if not sep or not dot or not node or not prm:
            raise ValueError(f"override {item!r} must look like node.parameter:=value")
        out.setdefault(node, {})[prm] = yaml.safe_load(val)
    return out


def _run_processes(descs: Sequence[NodeDescription], duration: float | None) -> int:
    """Each node as a child process until one exits, `duration` passes or SIGINT/SIGTERM; then stop them all."""
    with tempfile.TemporaryDirectory(prefix="streamdp-bringup-") as tmp:  # parameter files, removed on exit
        return _supervise(descs, duration, tmp)


def _supervise(descs: Sequence[NodeDescription], duration: float | None, tmp: str) -> int:
    """Start, watch and stop the children (SIGINT first: they publish a final hold); the first bad exit code."""
    procs: list[tuple[NodeDescription, subprocess.Popen]] = []
    stop = {"flag": False}

    def _stop(*_: Any) -> None:
        stop["flag"] = True

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for d in descs:
            cmd = command(d, tmp)
            print(f"[bringup] starting {d.name}: {' '.join(cmd)}", flush=True)
            procs.append((d, subprocess.Popen(cmd, env=child_env(d), start_new_session=True)))
        t0 = time.monotonic()
        while not stop["flag"]:
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            dead = [(d, p) for d, p in procs if p.poll() is not None]
            if dead:
                for d, p in dead:
                    print(f"[bringup] {d.name} exited with code {p.returncode}; stopping the others", flush=True)
                break
            time.sleep(0.2)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10.0
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.returncode for _, p in procs]
    return next((c for c in codes if c not in (0, -signal.SIGINT)), 0)


def _run_composed(descs: Sequence[NodeDescription], duration: float | None) -> int:
    """All nodes in this process, each made and spun in a thread of its own (runtime.spin_each_in_a_thread;
    needs rclpy loadable here)."""
    import importlib

    from streamdp.ros_nodes.rosenv import ensure_ros_env

    ensure_ros_env()  # first: a re-execution restarts this process from the top
    from streamdp.ros_nodes import runtime

    os.environ.update({k: v for d in descs for k, v in d.env.items()})
    runtime.init(None)

    def maker(d: NodeDescription, tmp: str) -> Any:
        mod, cls = d.node_class.split(":")
        node_cls = getattr(importlib.import_module(mod), cls)
        return lambda: node_cls(d.name, cli_args=ros_args(d, tmp), use_global_arguments=False)

    def failed(nodes: Sequence[Any]) -> bool:
        return any(getattr(n, "autostart_failed", False) for n in nodes)

    def finished(nodes: Sequence[Any]) -> bool:  # e.g. the recorder after max_episodes
        return any(getattr(n, "finished", False) for n in nodes)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamdp-bringup-") as tmp:  # read while the nodes are made
        nodes = runtime.spin_each_in_a_thread(
            [maker(d, tmp) for d in descs],
            until=lambda nodes: failed(nodes) or finished(nodes)
            or (duration is not None and time.monotonic() - t0 >= duration))
    return 1 if failed(nodes) else 0


def effective_parameter(desc: NodeDescription, name: str) -> Any:
    """The value `name` ends up with for `desc` (its YAML files and override dicts applied in order)."""
    import yaml

    value = None
    for p in desc.parameters:
        if isinstance(p, str):
            doc = yaml.safe_load(Path(p).read_text()) or {}
            for node, body in doc.items():
                if node.strip("/") in (desc.name, "**") and isinstance(body, Mapping):
                    value = (body.get("ros__parameters") or {}).get(name, value)
        else:
            value = p.get(name, value)
    return value


def checkpoint_problem(descs: Sequence[NodeDescription]) -> str | None:
    """A user mistake in the policy node's checkpoint, found before any node starts (one line)."""
    from streamdp.policy.checkpoint import CheckpointError, read_config
    from streamdp.policy.config import ConfigError

    for d in descs:
        ckpt = effective_parameter(d, "checkpoint") if d.name == "policy_node" else None
        if ckpt:
            try:
                read_config(ckpt)
            except (CheckpointError, ConfigError) as e:
                fix = f"set -p {d.name}.checkpoint:=DIR, or leave it unset for the bundled policy"
                return f"{d.name}.checkpoint: {e} ({fix})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamdp-bringup", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", choices=CONFIG_NAMES, help="which set of nodes (as launch/<config>.launch.py)")
    ap.add_argument("--params", action="append", default=None,
                    help="parameter YAML (repeatable; default config/ros/<config>.yaml)")
    ap.add_argument("-p", "--set", action="append", default=[], metavar="NODE.PARAM:=VALUE",
                    help="override one parameter, e.g. policy_node.checkpoint:=/ckpt")
    ap.add_argument("--compose", action="store_true", help="run all nodes in this process (a thread and an "
                    "executor each)")
    ap.add_argument("--teleop", action="store_true", help="sim: the bridge's scripted expert drives the arm "
                    "(expert_teleop_node instead of policy_node)")
    ap.add_argument("--record", action="store_true", help="sim: record the bridge's episodes with streamdp-record "
                    "(config/ros/record.yaml; needs -p recorder.root:=DIR; -p recorder.max_episodes:=N stops after N)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="print the node commands and exit (their parameter "
                    "files are written to build/bringup_params, next to ROS_LOG_DIR)")
    a = ap.parse_args(argv)
    problems = ros_env_problems()
    if problems:
        print("streamdp-bringup: refusing to start ROS nodes:\n  - " + "\n  - ".join(problems)
              + "\nSet them first, e.g.\n  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=42 "
              "ROS_LOG_DIR=$PWD/build/ros_log", file=sys.stderr)
        return 2
    try:
        descs = describe(a.config, a.params, parse_overrides(a.set), teleop=a.teleop, record=a.record)
        if a.record and not next(effective_parameter(d, "root") for d in descs if d.name == RECORDER.name):
            raise ValueError("--record needs the dataset folder: -p recorder.root:=DIR")
    except ValueError as e:
        print(f"streamdp-bringup: {e}", file=sys.stderr)
        return 2
    missing = [p for d in descs for p in d.parameters if isinstance(p, str) and not Path(p).is_file()]
    if missing:
        print(f"streamdp-bringup: parameter file(s) not found: {sorted(set(missing))}", file=sys.stderr)
        return 2
    Path(os.environ["ROS_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    bad = None if a.dry_run else checkpoint_problem(descs)
    if bad:
        print(f"streamdp-bringup: {bad}", file=sys.stderr)
        return 2
    if a.dry_run:
        param_dir = dry_run_param_dir()
        for d in descs:
            print(" ".join(command(d, param_dir)))
        return 0
    if a.compose:
        return _run_composed(descs, a.duration)
    return _run_processes(descs, a.duration)


__all__ = ["NodeDescription", "describe", "command", "ros_args", "child_env", "parse_overrides", "main",
           "config_dir", "default_params", "launch_description"]


if __name__ == "__main__":
    sys.exit(main())

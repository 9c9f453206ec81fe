"""Bring-up without `ros2 launch`: node descriptions, the ROS environment rule, a composed run; launch files."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamdp.ros_nodes import bringup
from streamdp.ros_nodes.rosenv import ros_env_problems

ROOT = Path(__file__).resolve().parents[2]
SAFE = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": "17", "ROS_LOG_DIR": "/tmp/x"}


def test_descriptions_match_console_scripts_and_node_classes():
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    sim = bringup.describe("sim")
    real = bringup.describe("real_arm")
    assert [d.name for d in sim] == ["sim_bridge", "policy_node"] and [d.name for d in real] == ["policy_node"]
    cli = (ROOT / "ros_nodes" / "cli.py").read_text()
    for d in sim + real:
        # launch_ros runs the same executable: the cli wrapper that loads rclpy's libraries, then d.module's main
        assert scripts[d.executable] == f"streamdp.ros_nodes.cli:{d.executable}", d
        assert f"def {d.executable}() -> int:\n    \"\"\"" in cli and f"from {d.module} import main" in cli
        assert d.package == "streamdp" and d.env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
        assert all(Path(p).is_file() for p in d.parameters if isinstance(p, str))
        mod, cls = d.node_class.split(":")
        assert cls in Path(ROOT / "ros_nodes" / (mod.rsplit(".", 1)[1] + ".py")).read_text()
    assert scripts["streamdp-bringup"] == "streamdp.ros_nodes.bringup:main"
    with pytest.raises(ValueError, match="unknown bring-up"):
        bringup.describe("moon")


def test_bridge_parameter_as_ros_applies_the_files(tmp_path):
    sim, pusht = bringup.default_params("sim"), bringup.default_params("sim_pusht")
    assert bringup.bridge_parameter([sim], None, "task", "x") == "arm_reach_dynamic"
    assert bringup.bridge_parameter([sim, pusht], None, "task", "x") == "pusht"  # the later file wins
    (tmp_path / "p.yaml").write_text("policy_node:\n  ros__parameters:\n    num_threads: 1\n")
    assert bringup.bridge_parameter([pusht, tmp_path / "p.yaml"], None, "task", "x") == "pusht"
    assert bringup.bridge_parameter([sim], {"sim_bridge": {"obs_mode": "image"}}, "obs_mode", "x") == "image"
    assert bringup.bridge_parameter([], None, "obs_mode", "state") == "state"


def test_command_lines_and_parameter_overrides(tmp_path):
    ov = bringup.parse_overrides(["policy_node.checkpoint:=/ck", "policy_node.joint_names:=[a, b]",
                                  "sim_bridge.seed:=4"])
    assert ov == {"policy_node": {"checkpoint": "/ck", "joint_names": ["a", "b"]}, "sim_bridge": {"seed": 4}}
    with pytest.raises(ValueError):
        bringup.parse_overrides(["checkpoint=/ck"])
    sim, pol = bringup.describe("sim", overrides=ov)
    cmd = bringup.command(pol, tmp_path, python="py")
    assert cmd[:5] == ["py", "-m", "streamdp.ros_nodes.policy_node", "--ros-args", "-r"]
    assert "__node:=policy_node" in cmd
    files = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--params-file"]
    # first the bundled policy as the default checkpoint, then sim.yaml, then the overrides: later wins
    from streamdp.sim import bundled_checkpoint

    assert yaml.safe_load(Path(files[0]).read_text()) == {
        "policy_node": {"ros__parameters": {"checkpoint": str(bundled_checkpoint("arm_reach_dynamic"))}}}
    assert files[1] == str(bringup.default_params("sim"))
    assert yaml.safe_load(Path(files[2]).read_text()) == {
        "policy_node": {"ros__parameters": {"checkpoint": "/ck", "joint_names": ["a", "b"]}}}
    # with the camera (sim_image.yaml, or the bridge's obs_mode overridden) the default is the camera bundle
    for params, over in (([bringup.default_params("sim_image")], None),
                         (None, {"sim_bridge": {"obs_mode": "image"}})):
        _, pol_img = bringup.describe("sim", params=params, overrides=over)
        assert pol_img.parameters[0] == {"checkpoint": str(bundled_checkpoint("arm_reach_dynamic_image"))}
    _, pol_pusht = bringup.describe("sim", params=[bringup.default_params("sim_pusht")])
    assert pol_pusht.parameters[0] == {"checkpoint": str(bundled_checkpoint("pusht"))}
    env = bringup.child_env(pol, base={"PATH": "/bin"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_ros_env_rule():
    assert ros_env_problems(SAFE) == []
    for key in SAFE:
        env = {k: v for k, v in SAFE.items() if k != key}
        assert any(key in p for p in ros_env_problems(env)), key
    assert ros_env_problems({**SAFE, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert ros_env_problems({**SAFE, "ROS_DOMAIN_ID": "abc"})


def _bringup(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "streamdp.ros_nodes.bringup", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("missing", sorted(SAFE))
def test_bringup_refuses_without_ros_environment(missing, ros_env):
    env = {k: v for k, v in os.environ.items() if k not in SAFE}
    env.update({k: v for k, v in ros_env.items() if k != missing})
    r = _bringup(["sim", "--dry-run"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refusing to start ROS nodes" in r.stderr and missing in r.stderr
    r = _bringup(["sim", "--dry-run"], {**env, **({missing: "SUBNET"} if missing.endswith("RANGE") else {})})
    assert r.returncode == 2


def test_bringup_dry_run_prints_the_node_commands(ros_env, tmp_path):
    """The printed commands name parameter files in the build tree (rewritten per dry run), none in the system
    temp folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    for _ in range(2):
        r = _bringup(["sim", "--dry-run", "-p", "policy_node.checkpoint:=/ck"], env)
        assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "sim_bridge_node" in lines[0] and "policy_node" in lines[1]
    files = [Path(a) for line in lines for a in line.split() if a.endswith(".yaml")]
    params = Path(ros_env["ROS_LOG_DIR"]).resolve().parent / "bringup_params"
    assert files and all(f.is_file() for f in files if f.parent == params)
    assert sorted(p.name for p in params.iterdir()) == sorted(f.name for f in files if f.parent == params)
    assert yaml.safe_load((params / "policy_node_2.yaml").read_text())["policy_node"]["ros__parameters"] == {
        "checkpoint": "/ck"}
    ours = [p for p in tmp.iterdir() if not p.name.startswith("torchinductor")]  # torch's own cache folder
    assert ours == []
    r = _bringup(["sim", "--params", "/no/such.yaml", "--dry-run"], dict(os.environ))
    assert r.returncode == 2 and "not found" in r.stderr


def test_bringup_processes_remove_their_parameter_files(ros_env, tmp_path, monkeypatch):
    """A real (non-dry) run writes its parameter files to a temporary folder and removes it on exit."""
    monkeypatch.setattr(bringup.tempfile, "tempdir", str(tmp_path))
    fake = bringup.NodeDescription(executable="x", name="quick", module="json.tool", node_class="x:X",
                                   parameters=({"a": 1},))  # exits at once (json.tool rejects --ros-args)
    assert bringup._run_processes([fake], duration=30.0) != 0
    assert list(tmp_path.iterdir()) == []


def test_bringup_composed_sim_streams_commands(ros_env, ros_context, untrained_ckpt, tmp_path):
    """`streamdp-bringup sim --compose` runs both nodes in one process; commands reach this process; its
    temporary parameter files are gone afterwards."""
    from rclpy.executors import SingleThreadedExecutor

    from .helpers import CommandRecorder, spin_until

    rec = CommandRecorder(context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(rec)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamdp.ros_nodes.bringup", "sim", "--compose", "--duration", "60",
         "-p", f"policy_node.checkpoint:={untrained_ckpt}", "-p", "policy_node.warmup_chunks:=1",
         "-p", "sim_bridge.max_episode_steps:=100000"],
        env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ok = spin_until(ex, lambda: len(rec.trajectories) >= 20 or proc.poll() is not None, 90.0)
        assert ok and len(rec.trajectories) >= 20, proc.poll()
    finally:
        proc.send_signal(2)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        ex.shutdown()
        rec.destroy_node()
    assert proc.returncode == 0, out[-3000:]
    assert not list(tmp_path.glob("streamdp-*")), list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ launch files
@pytest.mark.parametrize("name", ["sim", "real_arm"])
def test_launch_files_build_their_nodes_from_the_descriptions(name):
    src = (ROOT / "launch" / f"{name}.launch.py").read_text()
    tree = ast.parse(src)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "launch_description"]
    assert calls and ast.literal_eval(calls[0].args[0]) == name
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


@pytest.mark.parametrize("name", ["sim", "real_arm"])
def test_launch_description_with_launch_ros(name):
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (pip ROS wheels): launch files are "
                        "for real ROS installs; streamdp-bringup runs the same node descriptions")
    import runpy

    from launch_ros.actions import Node

    from launch import LaunchContext, LaunchDescription

    mod = runpy.run_path(str(ROOT / "launch" / f"{name}.launch.py"))
    ld = mod["generate_launch_description"]()
    assert isinstance(ld, LaunchDescription)
    ctx = LaunchContext()
    for e in ld.entities:
        if hasattr(e, "execute") and type(e).__name__ in ("DeclareLaunchArgument", "SetEnvironmentVariable"):
            e.execute(ctx)
    opaque = [e for e in ld.entities if type(e).__name__ == "OpaqueFunction"]
    nodes = opaque[0].execute(ctx)
    want = bringup.describe(name)
    assert [type(n) for n in nodes] == [Node] * len(want)
    assert ctx.environment["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_launch_files_share_one_launch_description(monkeypatch):
    """Both launch files are bringup.launch_description(config): checked here with stand-ins for launch and
    launch_ros (not installable from PyPI), recording what each action is built with."""
    import runpy
    import types

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Action):
        values: dict[str, str] = {}

        def perform(self, context):
            return self.values[self.args[0]]

    fakes = {
        "launch": types.SimpleNamespace(LaunchDescription=Action),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=Action, OpaqueFunction=Action,
                                                SetEnvironmentVariable=Action),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros.actions": types.SimpleNamespace(Node=Action),
    }
    for k, v in fakes.items():
        monkeypatch.setitem(sys.modules, k, v)
    for name in ("sim", "real_arm"):
        ld = runpy.run_path(str(ROOT / "launch" / f"{name}.launch.py"))["generate_launch_description"]()
        env, params, ckpt, opaque = ld.args[0]
        assert env.args == ("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        assert params.args[0] == "params_file" and params.kwargs["default_value"] == str(bringup.default_params(name))
        assert ckpt.args[0] == "checkpoint"
        LaunchConfiguration.values = {"params_file": "/p.yaml", "checkpoint": "/ck"}
        nodes = opaque.kwargs["function"](None)
        want = bringup.describe(name, ["/p.yaml"], {"policy_node": {"checkpoint": "/ck"}})
        assert [n.kwargs["executable"] for n in nodes] == [d.executable for d in want]
        assert [n.kwargs["parameters"] for n in nodes] == [list(d.parameters) for d in want]


def test_bringup_refuses_a_bad_checkpoint_in_one_line_before_starting_nodes(ros_env, tmp_path):
    """A missing or truncated checkpoint is a user mistake: one line, exit 2, no node started."""
    env = {**os.environ, **ros_env}
    r = _bringup(["sim", "-p", "policy_node.checkpoint:=/nonexistent/ckpt"], env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "is not a directory" in r.stderr
    assert "policy_node.checkpoint" in r.stderr
    assert "starting" not in r.stdout + r.stderr  # refused before any node process
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for f in ("config.json", "model.safetensors", "stats.safetensors"):
        (broken / f).write_text("{not json")
    r = _bringup(["sim", "-p", f"policy_node.checkpoint:={broken}"], env)
    assert r.returncode == 2 and "not valid JSON" in r.stderr, r.stderr
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"policy_node": {"ros__parameters": {"checkpoint": "/from/yaml"}}}))
    r = _bringup(["sim", "--params", str(params)], env)
    assert r.returncode == 2 and "/from/yaml" in r.stderr, r.stderr


def test_sim_round_trip_descriptions_teleop_and_record(ros_env):
    """`--teleop`: the expert drives (expert_teleop_node instead of policy_node, the bridge's expert on); `--record`:
    the recorder follows the bridge's episodes, one frame per tick, and the bridge waits for its resets."""
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    sim, teleop, rec = bringup.describe("sim", teleop=True, record=True, overrides={"recorder": {"root": "/d"}})
    assert [sim.name, teleop.name, rec.name] == ["sim_bridge", "expert_teleop", "recorder"]
    for d in (teleop, rec):
        assert scripts[d.executable].startswith("streamdp.ros_nodes.cli:")
        assert d.node_class.split(":")[0] == d.module and d.env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    param = bringup.effective_parameter
    assert param(sim, "expert") is True and param(sim, "auto_reset") is False
    assert param(sim, "policy_node") == ""  # no policy node to coordinate resets with
    assert param(bringup.describe("sim")[0], "policy_node") == "policy_node"  # config/ros/sim.yaml
    assert [param(rec, k) for k in ("root", "episode_topic", "reset_topic", "frame_trigger")] == [
        "/d", "/task/episode", "/task/reset", "joint_state"]
    assert param(rec, "joint_names") == ["joint1", "joint2", "joint3"]  # config/ros/record.yaml
    # recording the policy's own episodes; a -p override still wins over what --record sets
    names = [d.name for d in bringup.describe("sim", record=True, overrides={"sim_bridge": {"auto_reset": True}})]
    assert names == ["sim_bridge", "policy_node", "recorder"]
    assert param(bringup.describe("sim", record=True, overrides={"sim_bridge": {"auto_reset": True}})[0],
                 "auto_reset") is True
    with pytest.raises(ValueError, match="sim bring-up"):
        bringup.describe("real_arm", teleop=True)
    env = {**os.environ, **ros_env}
    r = _bringup(["sim", "--teleop", "--record", "--dry-run"], env)
    assert r.returncode == 2 and r.stderr.strip() == "streamdp-bringup: --record needs the dataset folder: " \
                                                     "-p recorder.root:=DIR", r.stderr
    r = _bringup(["sim", "--teleop", "--record", "--dry-run", "-p", "recorder.root:=/tmp/x"], env)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and [x.split()[2] for x in lines] == [
        "streamdp.ros_nodes.sim_bridge_node", "streamdp.ros_nodes.teleop_node", "streamdp.ros_nodes.recorder_node"]

"""The README cannot drift from the code: its Python blocks run, and every command it names exists and
accepts the options written there.

- ``python`` blocks are executed in order, in one namespace, in a scratch directory.
- In ``bash`` blocks every command line (continuations joined, comments and ``VAR=...`` prefixes dropped)
  is resolved: ``make`` targets must exist in the Makefile; console scripts must be setup.py entry
  points; ``python -m`` / ``torchrun -m`` modules must import; ``ros2 launch streamdp F`` needs
  ``launch/F`` declaring each ``name:=`` argument; ``bash F`` needs the file. Hydra tools (collect,
  train, eval, bench, sim-measure, calibrate, convert-bag) must compose their config with the written overrides
  (and take no ``--flags``); every other tool must list each ``--flag`` in its ``--help``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from streamdp.policy.config import PolicyConfig

ROOT = Path(__file__).resolve().parents[2]
TRAIN = "streamdp.policy.train"
README = ROOT / "README.md"
# key=value tools: module (or console script) -> what composes its config from the written overrides
HYDRA_TOOLS = {
    "streamdp.sim.collect": "load_config",
    "streamdp.policy.train": "load_config",
    "streamdp.policy.train.cli": "load_config",
    "streamdp.sim.evaluate": "load_config",
    "streamdp.sim.bench": "load_config",
    "streamdp.sim.measure": "load_config",
    "streamdp-calibrate-rti": "streamdp.policy.calibration:rti_config",
    "streamdp-calibrate-bac": "streamdp.policy.calibration:bac_config",
    "streamdp.ros_nodes.convert_bag": "load_config",
    "streamdp-soak": "streamdp.ros_nodes.soak:soak_config",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def commands() -> list[str]:
    out = []
    for b in blocks("bash"):
        text = re.sub(r"\\\n\s*", " ", b)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


@cache
def entry_points() -> dict[str, str]:
    src = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+):\w+"', src))


@cache
def help_text(module: str, script: str | None) -> str:
    """`--help` of the console script (as the README runs it) or of ``python -m module``."""
    argv = [str(Path(sys.executable).parent / script)] if script else [sys.executable, "-m", module]
    r = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert r.returncode == 0, f"{' '.join(argv)} --help failed:\n{r.stderr[-2000:]}"
    return r.stdout


def resolve(cmd: str) -> tuple[str, str | None, list[str], str | None]:
    """(kind, target, args, console script) of one README command line."""
    toks = shlex.split(cmd.replace("$", "X"))
    while toks and re.fullmatch(r"[A-Z_]+=\S*", toks[0]):
        toks = toks[1:]
    if not toks:
        return "none", None, [], None
    head, rest = toks[0], toks[1:]
    if head == "export":
        return "none", None, [], None
    if head == "make":
        return "make", rest[0] if rest else "", rest[1:], None
    if head == "bash":
        return "file", rest[0], rest[1:], None
    if head == "ros2" and rest[:1] == ["launch"]:
        return "launch", rest[2], rest[3:], None
    name = head.removeprefix(".venv/bin/")
    if name in ("python", "python3", "torchrun"):
        i = rest.index("-m")
        return "module", rest[i + 1], rest[i + 2:], None
    if name in entry_points():
        return "module", entry_points()[name], rest, name
    return "unknown", head, rest, None


def test_readme_has_the_two_commands_and_the_timing_diagram():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert "To" in text and "Ta" in text and "Tp" in text and "noise ladder" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)  # CI runs exactly the README's test command


@pytest.mark.parametrize("cmd", commands())
def test_readme_command_exists_and_accepts_its_options(cmd):
    kind, target, args, script = resolve(cmd)
    if kind == "none":
        return
    assert kind != "unknown", f"README command {cmd!r}: {target!r} is no make target, console script or module"
    if kind == "make":
        assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), flags=re.M), cmd
        return
    if kind == "file":
        assert (ROOT / target).is_file(), cmd
        return
    if kind == "launch":
        src = (ROOT / "launch" / target).read_text()
        if "launch_description(" in src:  # the launch files share streamdp.ros_nodes.bringup.launch_description
            src += (ROOT / "ros_nodes" / "bringup.py").read_text()
        for a in args:
            name = a.split(":=")[0]
            assert re.search(rf"DeclareLaunchArgument\(\s*[\"']{name}[\"']", src), (cmd, name)
        return
    module = target
    __import__(module)  # importable in this environment
    loader = HYDRA_TOOLS.get(script or "") or HYDRA_TOOLS.get(module)
    if loader is not None:
        if args in (["--help"], ["-h"]):
            assert "[key=value ...]" in help_text(module, script), cmd
            return
        hydra_flag = module.startswith(TRAIN) and "--cfg" in args  # streamdp-train --cfg job prints the config
        flags = [a for a in args if a.startswith("-") and a != "--debug" and not (hydra_flag and a == "--cfg")]
        assert not flags and all("=" in a for a in args if not a.startswith("-") and a != "job"), (
            f"{cmd!r}: a key=value tool takes key=value overrides only")
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        where, _, name = loader.rpartition(":")
        load = getattr(importlib.import_module(where or module), name)
        load(overrides)  # unknown keys or bad groups raise here
        return
    text = help_text(module, script)
    config_fields = {f.name for f in dataclasses.fields(PolicyConfig)}  # load-time overrides of key=value tools
    for prev, a in zip([None, *args], args):
        if a.startswith("--"):
            flag = a.split("=")[0]
            assert flag in text, f"{cmd!r}: {flag} not in the tool's --help"
        elif re.fullmatch(r"[a-z_]+=.*", a) and not (prev or "").startswith("--"):
            key = a.split("=")[0]
            assert f"--{key}" in text or key in config_fields, f"{cmd!r}: {key} not in the tool's --help"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme"}
    code = blocks("python")
    assert code, "README has no python blocks"
    for i, b in enumerate(code):
        try:
            exec(compile(b, f"README.md python block {i}", "exec"), ns)  # noqa: S102 - the README's own code
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"README python block {i} failed: {type(e).__name__}: {e}\n{b}") from e


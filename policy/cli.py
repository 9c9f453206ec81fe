"""One command-line convention for every streamdp job (train, collect, eval, bench, calibrate).

A job is a dataclass registered in hydra's ConfigStore (its defaults live there and only there) plus a
primary YAML file ``config/<job>.yaml`` that holds *presets* only: the defaults list (the schema, then
preset groups such as ``task``) and hydra settings. Users write hydra ``key=value`` overrides:

    streamdp-eval checkpoint=runs/arm/checkpoints/last task=arm_reach_dynamic episodes=10

``--help`` lists every key with its default and meaning (from the dataclass fields' ``help`` metadata).
User mistakes (a wrong key, a bad value, a missing file, a checkpoint that does not fit) end in one line
``<prog>: <what>`` on stderr and exit code 2; ``--debug`` (or ``STREAMDP_DEBUG=1``) shows the traceback.
ROS tools keep ROS conventions (``--ros-args -p node.param:=value``) and do not use this module.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in what the user gave (config, paths, data): reported in one line, exit code 2."""


def opt(default: Any = MISSING, help: str = "", factory: Callable[[], Any] | None = None) -> Any:  # noqa: A002
    """A dataclass field with a ``help`` text for ``--help``; ``factory`` for mutable defaults."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def config_dir(primary: str) -> Path:
    """The hydra config folder holding ``primary`` (e.g. 'eval.yaml'): the source tree's ``config/``
    (editable install), else the installed ``share/streamdp/config``."""
    candidates = [Path(__file__).resolve().parents[1] / "config", Path(sys.prefix) / "share" / "streamdp" / "config"]
    for c in candidates:
        if (c / primary).is_file():
            return c
    raise FileNotFoundError(f"{primary} not found in any of {[str(c) for c in candidates]}")


def register(job: str, schema: type) -> str:
    """Store `schema` in hydra's ConfigStore as ``<job>_schema`` (named first in the job's defaults list)."""
    from hydra.core.config_store import ConfigStore

    name = f"{job}_schema"
    ConfigStore.instance().store(name=name, node=schema)
    return name


def describe(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) of every field, nested dataclasses flattened with dots."""
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        typ = f.type if isinstance(f.type, type) else None
        if f.default_factory is not MISSING and dataclasses.is_dataclass(default := f.default_factory()):
            rows += describe(type(default), key + ".")
            continue
        if typ is not None and dataclasses.is_dataclass(typ):
            rows += describe(typ, key + ".")
            continue
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            value = "???"
        value = "null" if value is None else value
        rows.append((key, str(value), str(f.metadata.get("help", ""))))
    return rows


def help_text(prog: str, doc: str, schema: type, groups: dict[str, list[str]] | None = None) -> str:
    rows = describe(schema)
    width = max((len(f"{k}={d}") for k, d, _ in rows), default=0)
    lines = [doc.strip(), "", f"usage: {prog} [key=value ...] [--debug]", "", "keys (default, meaning):"]
    lines += [f"  {f'{k}={d}':<{width}}  {h}".rstrip() for k, d, h in rows]
    for g, names in (groups or {}).items():
        lines.append(f"  {g}=NAME  preset, one of: {', '.join(names)} (config/{g}/NAME.yaml)")
    return "\n".join(lines)


def presets(primary: str, group: str) -> list[str]:
    folder = config_dir(primary) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def compose(primary: str, overrides: Sequence[str], schema: type[T], job: str) -> T:
    """Compose ``config/<primary>`` with the overrides and return the validated dataclass instance."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    register(job, schema)
    with initialize_config_dir(config_dir=str(config_dir(primary)), version_base="1.3"):
        cfg = hydra_compose(config_name=Path(primary).stem, overrides=list(overrides))
    return OmegaConf.to_object(cfg)  # runs the dataclasses' own __post_init__ checks


def load_config(job: str, schema: type[T], overrides: Sequence[str], list_keys: Sequence[str] = ()) -> T:
    """The validated config of `job` from ``key=value`` overrides (what the command line would give)."""
    return compose(f"{job}.yaml", [_as_list(a, list_keys) for a in overrides], schema, job)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong", not "the code is wrong"."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from streamdp.policy.checkpoint import CheckpointError
    from streamdp.policy.config import ConfigError
    from streamdp.policy.train.data import DataError

    return (
        UserError, ConfigError, CheckpointError, DataError, HydraException, OmegaConfBaseException, FileNotFoundError
    )


def run_job(
    prog: str,
    job: str,
    schema: type[T],
    fn: Callable[[T], Any],
    argv: Sequence[str] | None = None,
    doc: str = "",
    groups: Sequence[str] = ("task",),
    list_keys: Sequence[str] = (),
) -> int:
    """Parse ``key=value`` overrides for `job`, run ``fn(config)`` and turn user errors into one line.

    `list_keys` accept ``key=a,b`` as the list ``[a,b]`` (hydra would read it as a sweep) and ``key=a``
    as ``[a]``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("STREAMDP_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    primary = f"{job}.yaml"
    if any(a in ("-h", "--help") for a in args):
        print(help_text(prog, doc, schema, {g: presets(primary, g) for g in groups}))
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"{prog}: expected key=value overrides, got {bad} (see {prog} --help)", file=sys.stderr)
        return 2
    try:
        rc = fn(load_config(job, schema, args, list_keys))
    except user_errors() as e:
        if debug:
            raise
        print(one_line(prog, e), file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0  # jobs may return their result


def one_line(prog: str, e: BaseException) -> str:
    """``<prog>: <Error>: <what>`` on one line (hydra and omegaconf messages span lines and hide the
    reason in their cause, e.g. which value failed to convert to which type)."""
    msg = " ".join(str(e).split())
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause).split()[0] not in msg:
        msg += " (" + " ".join(str(cause).split()) + ")"
    return f"{prog}: {type(e).__name__}: {msg} (--debug for a traceback)"


def _as_list(arg: str, list_keys: Sequence[str]) -> str:
    key, _, val = arg.partition("=")
    if key.lstrip("+") in list_keys and not val.startswith("[") and val != "null":
        return f"{key}=[{val}]"  # also one item: tasks=arc is the list [arc]
    return arg

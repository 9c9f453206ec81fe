"""Checkpoint directories: safetensors weights, JSON config with a format version, stats. No pickle.

Layout of a checkpoint directory::

    config.json          {"format_version": 1, "policy": {...PolicyConfig...}, "extras": {...}}
    model.safetensors    network weights (EMA weights when training kept them)
    stats.safetensors    normalisation statistics ("action.min", "observation.state.max", ...)

Writes are atomic: everything goes to a sibling temporary directory that replaces the target with a
rename, so a killed process leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from streamdp.policy.config import ConfigError, PolicyConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.safetensors"
REQUIRED = (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, of an unknown version, or does not match."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint is valid but does not fit the robot or model it is loaded for."""


def _umask() -> int:
    """The process umask (read back by setting it: Python has no getter before 3.13)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_dir(target: str | Path, write: Any) -> Path:
    """Call write(tmpdir) then swap tmpdir into place at target (atomic rename on one filesystem).

    Everything written honours the umask like any other file the user writes (mkdtemp makes folders
    0700 and safetensors files 0600): a checkpoint is readable by the ROS node's user too.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        write(tmp)
        mask = _umask()
        for f in (tmp, *tmp.rglob("*")):
            f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_checkpoint(
    path: str | Path,
    cfg: PolicyConfig,
    state_dict: dict[str, torch.Tensor],
    stats: dict[str, torch.Tensor],
    extras: dict[str, Any] | None = None,
) -> Path:
    def write(tmp: Path) -> None:
        meta = {"format_version": FORMAT_VERSION, "policy": cfg.to_dict(), "extras": extras or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        # clone: tensors that share storage (a shared camera backbone) cannot be saved by safetensors as views
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS_FILE))
        save_file({k: v.detach().cpu().contiguous() for k, v in stats.items()}, str(tmp / STATS_FILE))

    return atomic_write_dir(path, write)


def read_config(path: str | Path) -> tuple[PolicyConfig, dict[str, Any]]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {missing} (expected {list(REQUIRED)})")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path / CONFIG_FILE}: unknown format_version {version!r}; this streamdp reads version {FORMAT_VERSION}"
        )
    try:
        cfg = PolicyConfig.from_dict(meta["policy"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid policy config: {e}") from e
    return cfg, meta.get("extras", {})


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is unreadable (truncated or corrupt?): {e}") from e


def check_state_dict(file: Path, expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Every expected tensor present with the right shape, nothing unknown."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:5]))
        raise CheckpointMismatchError(f"{file} does not match the configured model: " + ", ".join(parts))

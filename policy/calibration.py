"""Shared pieces of the offline calibration tools (``streamdp-calibrate-rti``, ``streamdp-calibrate-bac``):
logged-observation loading, the closed-loop driver, and hydra-style ``key=value`` command lines.

Observation sources (``dataset=``):

- a ``.npz`` of logged observations — arrays named like the policy's inputs, frame-major:
  ``observation.state`` (T, Ds), ``observation.images.<cam>`` (T, H, W, C) uint8 or (T, C, H, W);
  optionally ``episode_ends`` (cumulative frame counts, diffusion_policy style) or ``episode_index`` (T,).
  :func:`save_observations` writes this format, e.g. from a simulated rollout;
- a LeRobot dataset root (a directory with ``meta/info.json``), read with ``lerobot``'s LeRobotDataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OBS_PREFIX = "observation."


@dataclass
class CliArg:
    name: str
    type: type
    default: Any
    help: str


def parse_cli(
    argv: Sequence[str] | None, description: str, spec: list[CliArg]
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``key=value`` (hydra style) or ``--key value`` / ``--key=value``. Keys that are not tool options
    but PolicyConfig fields become load-time overrides (values parsed as JSON when they parse)."""
    import sys

    from streamdp.policy.config import PolicyConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=description)
    for a in spec:
        ap.add_argument(f"--{a.name}", type=a.type, default=a.default, required=a.default is None, help=a.help)
    tokens = [f"--{t}" if not t.startswith("-") and "=" in t else t for t in argv]
    args, rest = ap.parse_known_args(tokens)
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    overrides: dict[str, Any] = {}
    it = iter(rest)
    for tok in it:
        if not tok.startswith("--"):
            ap.error(f"unexpected argument {tok!r}")
        key, eq, val = tok[2:].partition("=")
        if not eq:
            val = next(it, None)
            if val is None:
                ap.error(f"{tok} needs a value")
        key = key.replace("-", "_")
        if key not in fields:
            ap.error(f"unknown option {key!r}: neither a tool option nor a PolicyConfig field")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    return args, overrides


def save_observations(path: str | Path, episodes: Sequence[Sequence[Mapping[str, Any]]]) -> Path:
    """Write episodes of observation dicts as one .npz (frame-major arrays + episode_ends)."""
    path = Path(path)
    keys = sorted(k for k in episodes[0][0] if k.startswith(OBS_PREFIX))
    arrays = {k: np.stack([np.asarray(f[k]) for ep in episodes for f in ep]) for k in keys}
    arrays["episode_ends"] = np.cumsum([len(ep) for ep in episodes])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def _split(frames: list[dict[str, Any]], ends: Sequence[int]) -> list[list[dict[str, Any]]]:
    out, start = [], 0
    for e in ends:
        if int(e) > start:
            out.append(frames[start : int(e)])
        start = int(e)
    return out


def load_npz(path: Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    data = np.load(path)
    keys = [k for k in data.files if k.startswith(OBS_PREFIX)]
    if not keys:
        raise ValueError(f"{path} holds no 'observation.*' arrays (has {data.files})")
    n = len(data[keys[0]])
    if any(len(data[k]) != n for k in keys):
        raise ValueError(f"{path}: observation arrays differ in length")
    if "episode_ends" in data.files:
        ends = [int(e) for e in data["episode_ends"]]
    elif "episode_index" in data.files:
        idx = np.asarray(data["episode_index"])
        ends = [int(i) + 1 for i in np.flatnonzero(np.diff(idx))] + [n]
    else:
        ends = [n]
    if max_frames:
        n = min(n, max_frames)
        ends = [min(e, n) for e in ends if e > 0]
    arrays = {k: data[k][:n] for k in keys}
    frames = [{k: arrays[k][i] for k in keys} for i in range(n)]
    return _split(frames, ends)


def load_lerobot(root: Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as e:  # pragma: no cover - lerobot is in the project's environment
        raise RuntimeError("reading a LeRobot dataset needs the `lerobot` package") from e
    ds = LeRobotDataset(repo_id=root.name, root=root)
    n = len(ds) if not max_frames else min(len(ds), max_frames)
    episodes: list[list[dict[str, Any]]] = []
    last = None
    for i in range(n):
        item = ds[i]
        ep = int(item["episode_index"])
        frame = {k: np.asarray(v) for k, v in item.items() if k.startswith(OBS_PREFIX)}
        if ep != last:
            episodes.append([])
            last = ep
        episodes[-1].append(frame)
    return episodes


def load_episodes(spec: str | Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    """Episodes (lists of observation dicts, in time order) from a .npz or a LeRobot dataset root."""
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        eps = load_npz(p, max_frames)
    elif p.is_dir() and (p / "meta" / "info.json").is_file():
        eps = load_lerobot(p, max_frames)
    else:
        raise ValueError(
            f"dataset {spec!r} is neither a .npz of logged observations nor a LeRobot dataset root (meta/info.json)"
        )
    if not eps:
        raise ValueError(f"dataset {spec!r} holds no frames")
    return eps


def run_select_action(policy: Any, episodes: list[list[dict[str, Any]]], max_obs: int | None) -> int:
    """Drive `policy` as a control loop would: reset per episode (from its first state), select_action on
    every frame; returns the number of inferences (observations that ran the sampler)."""
    from streamdp.policy.encoders import STATE_KEY

    inferences = 0
    for ep in episodes:
        state = ep[0].get(STATE_KEY)
        policy.reset(state=state if policy.config.primer == "state" else None)
        for frame in ep:
            before = policy.nfe_total
            policy.select_action(frame)
            inferences += policy.nfe_total > before
            if max_obs and inferences >= max_obs:
                return inferences
    return inferences

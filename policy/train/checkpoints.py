"""Training checkpoints: the exportable policy plus everything needed to continue training exactly.

Layout of ``<run>/checkpoints/``::

    step_00005000/
      pretrained/                 Policy.from_pretrained(...) loads this (EMA weights when EMA is on)
        config.json  model.safetensors  stats.safetensors
      training_state/
        model.safetensors         raw (non-EMA) weights being optimised; only with EMA (else pretrained/
                                  holds exactly these)
        ema.json                  EMA step count and decay settings (its weights: pretrained/)
        optimizer.safetensors     optimiser tensors (AdamW: two fp32 moments per parameter)
        optimizer.json            param groups and scalar state
        scheduler.json            LR scheduler state (LambdaLR: step counters, base and last LRs)
        rng.safetensors           torch (uint8) / cuda / numpy RNG states, per rank
        rng.json                  numpy scalars and Python's `random` state, per rank
        trainer.json              step, epoch, batch position in the epoch, seed, batch size, world size
      eval/result.json            closed-loop evaluation of pretrained/ (streamdp-eval's result.json), at
                                  evaluation steps only (see streamdp.policy.train.closed_loop)
    last -> step_00005000         symlink to the newest complete checkpoint
    best -> step_00003000         symlink to the best evaluated one (closed-loop evaluation on); pruning
                                  never deletes it

So a checkpoint is four fp32 copies of the parameters (EMA export, raw weights, two Adam moments), the
least that continues a run exactly; each is written once (older checkpoints also held the EMA weights a
second time in ``training_state/ema.safetensors``; they still load).

No pickle anywhere: tensors go to safetensors, everything else to JSON. Each step directory is written
with ``atomic_write_dir`` (temporary sibling, then rename) and fsynced (files, folders, the rename), and
only then is ``last`` replaced (a new symlink renamed over it, fsynced too); so a process killed at any
moment leaves complete checkpoints and a ``last`` that names one of them. Should ``last`` still dangle
(a crash of an older version, a copy gone wrong), resume ignores it: it takes the newest step directory
that verifies, and says so.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from streamdp.policy.checkpoint import REQUIRED, WEIGHTS_FILE, CheckpointError, atomic_write_dir, read_tensors
from streamdp.policy.policy import Policy

STEP_RE = re.compile(r"^step_(\d+)$")
LAST, BEST = "last", "best"  # symlinks in the checkpoints folder
PRETRAINED = "pretrained"
STATE_DIR = "training_state"
STATE_FILES = (  # always there; model.safetensors too when ema.json is
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    "trainer.json",
)
log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    step: int  # optimiser steps done
    epoch: int  # current epoch of the sampler
    batch_in_epoch: int  # global batches of that epoch already consumed
    seed: int
    global_batch: int
    world_size: int


# ----------------------------------------------------------------------------------- tensor <-> files
def _tensors(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors sharing storage (tied or shared modules)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}


def optimizer_to_flat(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``state.<param>.<name>``) and a JSON document."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{name}"] = v.detach().to("cpu", copy=True).contiguous()
                entry[name] = {"__tensor__": f"state.{pid}.{name}"}
            else:
                entry[name] = v
        state_meta[str(pid)] = entry
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"state": state_meta, "param_groups": groups}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {
            name: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
            for name, v in entry.items()
        }
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (uint8 tensor), CUDA (one per device), numpy, Python."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
    }
    return tensors, meta


def restore_rng(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k].to(torch.uint8) for k in cuda][: torch.cuda.device_count()])
    n = meta["numpy"]
    keys = tensors["numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -------------------------------------------------------------------------------------- save / load
def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def save_training_checkpoint(
    ckpt_root: str | Path,
    trainer: TrainerState,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: Any | None,
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
    extras: Mapping[str, Any] | None = None,
    keep_last: int = 3,
) -> Path:
    """Write ``step_<N>/`` atomically, point ``last`` at it and keep the newest `keep_last` checkpoints.

    ``pretrained/`` is ``policy.save_pretrained`` with the EMA weights (the raw ones without EMA);
    ``policy.model`` is the network being trained. `rng` holds one (tensors, json) pair per rank.
    """
    ckpt_root = Path(ckpt_root)
    model = policy.model
    export = ema.shadow.state_dict() if ema is not None else model.state_dict()

    def write_state(tmp: Path) -> None:
        if ema is not None:  # without EMA the export is the raw model: not written twice
            save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
            e = ema.state_dict()
            e.pop("shadow")  # = the export in pretrained/
            (tmp / "ema.json").write_text(json.dumps(e, indent=2))
        ot, om = optimizer_to_flat(optimizer.state_dict())
        save_file(ot, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(om))
        (tmp / "scheduler.json").write_text(json.dumps(_jsonable(scheduler.state_dict()), indent=2))
        rt: dict[str, torch.Tensor] = {}
        rm: dict[str, Any] = {}
        for rank, (t, m) in enumerate(rng):
            rt.update({f"rank{rank}.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in t.items()})
            rm[f"rank{rank}"] = m
        save_file(rt, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(json.dumps(rm))
        (tmp / "trainer.json").write_text(json.dumps(asdict(trainer), indent=2))

    def write(tmp: Path) -> None:
        policy.save_pretrained(tmp / PRETRAINED, state_dict=_tensors(export), extras=dict(extras or {}))
        atomic_write_dir(tmp / STATE_DIR, write_state)  # (atomic_write_dir applies the umask to all of it)

    target = atomic_write_dir(ckpt_root / step_dir_name(trainer.step), write)
    for d in (*sorted(p for p in target.rglob("*") if p.is_dir()), target, ckpt_root):
        fsync_dir(d)  # the files are fsynced by atomic_write_dir; their folders and the rename here
    point_last(ckpt_root, target.name)
    prune(ckpt_root, keep_last, keep=target)
    return target


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point_last(ckpt_root: Path, name: str, link: str = LAST) -> None:
    """Point ``last`` (or `link`: ``best``) at the complete checkpoint `name`: a new symlink renamed over
    the old (atomic)."""
    if not (ckpt_root / name).is_dir():
        raise CheckpointError(f"refusing to point {ckpt_root / link} at {name}, which does not exist")
    tmp = ckpt_root / f".{link}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, ckpt_root / link)
    fsync_dir(ckpt_root)


def linked(ckpt_root: str | Path, link: str) -> Path | None:
    """The step directory `link` (``last``, ``best``) names, when it exists."""
    p = Path(ckpt_root) / link
    if not p.is_symlink():
        return None
    target = Path(ckpt_root) / Path(os.readlink(p)).name
    return target if STEP_RE.match(target.name) and target.is_dir() else None


def list_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """Complete step directories, oldest first (temporary directories of a killed write are skipped)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune(ckpt_root: str | Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (never `keep`, the one just written, nor the one
    ``best`` names), and leftovers of interrupted writes."""
    root = Path(ckpt_root)
    ckpts = list_checkpoints(root)
    best = linked(root, BEST)
    spared = {p.name for p in (keep, best) if p is not None}
    for _, p in ckpts[: max(0, len(ckpts) - keep_last)]:
        if p.name not in spared:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        mine = p.name.endswith(f"-{os.getpid()}")
        if p.name.startswith((".last.tmp-", ".best.tmp-")) and p.is_symlink() and not mine:
            p.unlink(missing_ok=True)
        elif p.name.startswith(".step_") and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> None:
    """Every expected file exists and every safetensors file loads (CheckpointError otherwise)."""
    path = Path(path)
    state = path / STATE_DIR
    wanted = [*STATE_FILES, *(["model.safetensors"] if (state / "ema.json").is_file() else [])]
    missing = [f"{STATE_DIR}/{f}" for f in wanted if not (state / f).is_file()]
    missing += [f"{PRETRAINED}/{f}" for f in REQUIRED if not (path / PRETRAINED / f).is_file()]
    if missing:
        raise CheckpointError(f"training checkpoint {path} is incomplete: missing {missing}")
    own = [f for d in (path / PRETRAINED, state) for f in sorted(d.rglob("*"))]  # not eval/: written later
    for f in (f for f in own if f.suffix == ".safetensors"):
        read_tensors(f)
    for f in (f for f in own if f.suffix == ".json"):
        try:
            json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} is not valid JSON: {e}") from e


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest checkpoint that verifies; a broken newer one is skipped with a warning."""
    found, notes = find_checkpoint(ckpt_root)
    for note in notes:
        log.warning("%s", note)
    return found


def find_checkpoint(ckpt_root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whatever ``last`` says, and what was skipped on the way (a
    dangling or stale ``last``, broken step directories), as sentences for the run's log."""
    root = Path(ckpt_root)
    notes: list[str] = []
    found = None
    for step, p in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(p)
            found = p
            break
        except CheckpointError as e:
            notes.append(f"skipping checkpoint at step {step}: {e}")
    last = root / "last"
    if last.is_symlink() or last.exists():
        target = Path(os.readlink(last)).name if last.is_symlink() else "?"
        if found is None or not last.is_symlink() or target != found.name:
            state = "does not exist" if not last.exists() else "is not the newest complete checkpoint"
            notes.append(
                f"{last} points at {target}, which {state}: using the newest complete checkpoint "
                f"({found.name if found else 'none'}) instead"
            )
    return found, notes


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Everything in ``<ckpt>/training_state`` as tensors and plain values."""
    state = Path(path) / STATE_DIR
    export = read_tensors(Path(path) / PRETRAINED / WEIGHTS_FILE)  # EMA weights, or the raw ones without EMA
    raw = state / "model.safetensors"
    out: dict[str, Any] = {
        "model": read_tensors(raw) if raw.is_file() else export,
        "optimizer": optimizer_from_flat(
            read_tensors(state / "optimizer.safetensors"), json.loads((state / "optimizer.json").read_text())
        ),
        "scheduler": json.loads((state / "scheduler.json").read_text()),
        "trainer": TrainerState(**json.loads((state / "trainer.json").read_text())),
    }
    if (state / "ema.json").is_file():
        old = state / "ema.safetensors"  # checkpoints written before the export doubled as the EMA weights
        shadow = read_tensors(old) if old.is_file() else export
        out["ema"] = {**json.loads((state / "ema.json").read_text()), "shadow": shadow}
    rt = read_tensors(state / "rng.safetensors")
    rm = json.loads((state / "rng.json").read_text())
    out["rng"] = {
        int(r[len("rank") :]): ({k.split(".", 1)[1]: v for k, v in rt.items() if k.split(".", 1)[0] == r}, m)
        for r, m in rm.items()
    }
    return out

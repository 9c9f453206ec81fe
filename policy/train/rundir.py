"""The run directory of ``streamdp-train``: which files are a run's own, refusing to mix a new run into an
old one (or clearing the old one's files on request), and the saved config a resumed run continues with.

A run's own files (nothing else in the folder is ever deleted)::

    config.yaml  dataset.json  metrics.jsonl  training_curve.png  tb/events.out.tfevents.*
    checkpoints/{step_*,last,best,...}
    .hydra/{config,hydra,overrides}.yaml  train.log (cli.log, __main__.log: older names of that log)

``resume=true`` continues the run as its ``config.yaml`` (resolved, written when it started) says; what
is given on the command line at resume time may only change what does not change the computation (see
``HARMLESS``) or raise ``train.steps``; anything else is refused by name.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamdp.policy.config import ConfigError

SAVED_CONFIG = "config.yaml"
# what a run writes as it trains: any of these means the folder already holds a run
OUTPUTS = ("config.yaml", "dataset.json", "metrics.jsonl", "tb", "checkpoints")
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
LOG_FILES = ("train.log", "cli.log", "__main__.log")
CURVE = "training_curve.png"  # loss and closed-loop success against steps (streamdp.policy.train.curve)
# keys a resumed run takes from the command line as given, never from the saved run
NOW_KEYS = ("resume", "train.output_dir", "train.overwrite")
# resume-time changes that leave every computed number as it was (reported in the log)
HARMLESS = (
    "train.progress",
    "train.num_threads",
    "train.log_every",
    "train.log_interval_s",
    "train.checkpoint_every",
    "train.keep_last",
    "train.stop_at",  # where to pause; the schedule is train.steps'
    "train.eval_batches",
    "dataset.num_workers",
    "eval.every",  # closed-loop evaluation runs on its own RNG state: the training numbers stay the same
    "eval.episodes",
    "eval.seed",
    "eval.max_steps",
)


# --------------------------------------------------------------------------------------- fresh runs
def existing_run(run: Path) -> list[str]:
    """The run outputs already in `run` (empty: no run there)."""
    return [name for name in OUTPUTS if (run / name).exists()]


def check_fresh(run: Path, overwrite: bool) -> bool:
    """Refuse a new run in a folder that holds one (unless `overwrite`); True when old files must go."""
    found = existing_run(run)
    if found and not overwrite:
        raise ConfigError(
            f"{run} already holds a run ({', '.join(found)}): continue it with resume=true, start a new one "
            "with another train.output_dir, or replace it with train.overwrite=true"
        )
    return bool(found)


def clear_run(run: Path, everything: bool = True) -> list[str]:
    """Delete a run's own files in `run` (see the module doc), nothing else; returns what went.
    ``everything=False`` keeps the config, ``.hydra/`` and the log (a resumed run with no checkpoint)."""
    removed: list[str] = []

    def rm(p: Path) -> None:
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            return
        removed.append(str(p.relative_to(run)))

    for name in ("dataset.json", "metrics.jsonl", CURVE, *((SAVED_CONFIG, *LOG_FILES) if everything else ())):
        rm(run / name)
    for p in sorted((run / "tb").glob("events.out.tfevents.*")):
        rm(p)
    ckpts = run / "checkpoints"
    if ckpts.is_dir():
        for p in sorted(ckpts.iterdir()):
            if p.name in ("last", "best") or p.name.startswith(("step_", ".step_", ".last.tmp-", ".best.tmp-")):
                rm(p)
    for p in [run / ".hydra" / f for f in HYDRA_FILES] if everything else []:
        rm(p)
    for d in ("tb", "checkpoints", *((".hydra",) if everything else ())):
        if (run / d).is_dir() and not any((run / d).iterdir()):
            (run / d).rmdir()
    return removed


# ------------------------------------------------------------------------------------------- resume
def saved_config(run: Path) -> Any | None:
    """The resolved config a run was started with (None when `run` holds none)."""
    from omegaconf import OmegaConf

    path = run / SAVED_CONFIG
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml and omegaconf raise several types
        raise ConfigError(f"cannot resume {run}: {path} is unreadable ({e})") from e


def resume_config(fresh: Any, overrides: Sequence[str], saved: Any) -> Any:
    """The saved config with what was given now on top: ``key=value`` sets that key, a group choice
    (``policy=NAME``) that whole node, both as composed in `fresh`; ``NOW_KEYS`` always come from `fresh`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    out = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides))]
    for key in [*keys, *NOW_KEYS]:
        if key.startswith("hydra"):  # hydra.run.dir, hydra/job_logging=...: not part of the run's config
            continue
        OmegaConf.update(out, key, OmegaConf.select(fresh, key), merge=False, force_add=True)
    return out


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def resume_changes(saved: Any, cfg: Any) -> tuple[list[str], list[str]]:
    """(allowed, refused) differences between a run's saved config and the one it would resume with,
    each as ``key old -> new``. Allowed: ``HARMLESS`` keys and a higher ``train.steps``."""
    from omegaconf import OmegaConf

    a = _leaves(OmegaConf.to_container(saved, resolve=True))
    b = _leaves(OmegaConf.to_container(cfg, resolve=True))
    allowed, refused = [], []
    for key in sorted(set(a) | set(b)):
        if key in NOW_KEYS or _same(a.get(key), b.get(key)):
            continue
        text = f"{key} {a.get(key)!r} -> {b.get(key)!r}"
        steps_up = key == "train.steps" and isinstance(b.get(key), int) and b[key] > (a.get(key) or 0)
        if steps_up:
            text += " (the warm-up + cosine learning-rate schedule now ends there: later rates change)"
        (allowed if key in HARMLESS or steps_up else refused).append(text)
    return allowed, refused


def check_resume(run: Path, saved: Any, cfg: Any) -> list[str]:
    """Refuse resume-time changes to the computation, naming them; the allowed ones, for the log."""
    allowed, refused = resume_changes(saved, cfg)
    if refused:
        raise ConfigError(
            f"resume=true continues {run} as its {SAVED_CONFIG} says, and these would change the run: "
            f"{'; '.join(refused)}. Drop them to resume (train.steps may only be raised), or start a new run "
            "with another train.output_dir"
        )
    return allowed

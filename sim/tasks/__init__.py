"""Simulated tasks: a registry of name -> (spec, env, scripted expert).

Every task module is imported on first use (``arc``: a synthetic two-mode task; ``arm_reach_dynamic``,
``pusht``, ``libero``), so importing ``streamdp.sim`` never pays a simulator's import time it does not use.
"""

from __future__ import annotations

from typing import Any

from .base import (
    ACTION_KEY,
    IMAGE_KEY_PREFIX,
    OBS_MODES,
    STATE_KEY,
    Expert,
    TaskCard,
    TaskEntry,
    TaskSpec,
    check_obs_mode,
    get_entry,
    register_task,
    task_names,
)

_LAZY = {"arc": ".arc", "arm_reach_dynamic": ".arm_reach", "pusht": ".pusht", "libero": ".libero_tasks"}


def _entry(name: str) -> TaskEntry:
    if name in _LAZY and name not in task_names():
        import importlib

        importlib.import_module(_LAZY[name], __name__)
    if name not in _LAZY and name not in task_names():
        known = sorted(set(_LAZY) | set(task_names()))
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return get_entry(name)


def list_tasks() -> list[str]:
    """All task names (built-in ones and any registered later)."""
    return sorted(set(_LAZY) | set(task_names()))


def task_spec(name: str, obs_mode: str = "state", **kw: Any) -> TaskSpec:
    """Static description of task ``name`` in ``obs_mode`` (``kw``: task options, e.g. LIBERO's task_id)."""
    check_obs_mode(obs_mode)
    return _entry(name).spec(obs_mode=obs_mode, **kw)


def task_variants(name: str, **kw: Any) -> list[dict[str, Any]]:
    """The make_task options of every task that ``kw`` names: one entry, ``kw`` itself, unless the task
    has a suite (LIBERO: ``task_id="all"`` or a list of ids gives one entry per task, in order)."""
    variants = _entry(name).variants
    return [dict(kw)] if variants is None else variants(**kw)


def make_task(name: str, obs_mode: str = "state", seed: int | None = None, **kw: Any) -> Any:
    """Build the gymnasium-style env of task ``name`` (see each task module for its ``kw``)."""
    check_obs_mode(obs_mode)
    return _entry(name).make(obs_mode=obs_mode, seed=seed, **kw)


def make_expert(name: str, env: Any = None, **kw: Any) -> Expert:
    """Scripted expert of task ``name`` bound to ``env`` (it reads privileged simulator state)."""
    return _entry(name).expert(env, **kw)


__all__ = [
    "ACTION_KEY",
    "IMAGE_KEY_PREFIX",
    "OBS_MODES",
    "STATE_KEY",
    "Expert",
    "TaskCard",
    "TaskEntry",
    "TaskSpec",
    "list_tasks",
    "make_expert",
    "make_task",
    "register_task",
    "task_names",
    "task_spec",
    "task_variants",
]

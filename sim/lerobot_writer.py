"""Writing LeRobot v3 datasets with lerobot 0.4.4 under numpy >= 2.4: :class:`LeRobotWriter`.

Why it exists. lerobot declares a numeric feature of shape ``(1,)`` (``next.reward``, ``next.done``,
``next.success`` in the public ``lerobot/pusht`` schema) as a scalar ``datasets.Value`` column, while
``add_frame`` requires each frame's value to be a ``(1,)`` array. ``save_episode`` stacks those into
``(N, 1)`` and hands them to ``datasets.Dataset.from_dict``, whose ``Value.encode_example`` calls
``float(value)`` on every ``(1,)`` row. numpy 2.4 turned that conversion of a 1-d array into a
Python scalar from a DeprecationWarning into ``TypeError: only 0-dimensional arrays can be converted
to Python scalars`` (numpy 2.4.0 release notes), so ``save_episode`` fails; upstream this is
huggingface/lerobot#3343, open at this writing. lerobot's own statistics code expects such columns
as ``(N,)`` (``compute_episode_stats`` keeps the dims of 1-d data), which is what this class hands it:
each ``(1,)`` frame value is reshaped to a 0-d array just before lerobot's ``save_episode`` stacks
the episode. Everything else is lerobot's code; files and statistics are what lerobot writes with
an older numpy, and ``LeRobotDataset`` reads them back.

Use it exactly like ``LeRobotDataset.create``::

    ds = LeRobotWriter.create(repo_id, fps=10, features=..., root=..., use_videos=True)
    ds.add_frame({...,"next.reward": np.array([0.0], np.float32), "task": "..."})
    ds.save_episode()
    ds.finalize()

Pinning numpy below 2.4 would also work, but the project keeps one numpy for every stack
(requirements/base.txt); this keeps the pin.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

# Columns lerobot fills itself in save_episode (not lists of per-frame values in the buffer).
_LEROBOT_COLUMNS = ("index", "episode_index", "task_index")


def scalar_columns(features: dict[str, dict[str, Any]]) -> list[str]:
    """Numeric features of shape (1,): the ones lerobot stores as scalar ``datasets.Value`` columns."""
    return [
        k
        for k, ft in features.items()
        if tuple(ft.get("shape") or ()) == (1,)
        and ft.get("dtype") not in ("image", "video", "string")
        and k not in _LEROBOT_COLUMNS
    ]


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after the block. Encoding an episode's video (lerobot's
    SVT-AV1 encoder, measured here) leaves a process running as root in SCHED_FIFO at priority 99: a
    recorder on a robot computer would then outrank the control stack, and every process it starts inherits
    it (the test suite's soak nodes starved for minutes behind a FIFO busy loop)."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0).sched_priority != param.sched_priority:
            os.sched_setscheduler(0, policy, param)


class LeRobotWriter(LeRobotDataset):
    """``LeRobotDataset`` whose ``save_episode`` accepts shape-(1,) numeric features under numpy >= 2.4
    (see the module docstring); create it with ``LeRobotWriter.create(...)``."""

    def save_episode(self, episode_data: dict | None = None, parallel_encoding: bool = True) -> None:
        buffer = episode_data if episode_data is not None else self.episode_buffer
        if buffer is not None:
            for key in scalar_columns(self.features):
                values = buffer.get(key)
                if isinstance(values, list):
                    buffer[key] = [v.reshape(()) if isinstance(v, np.ndarray) and v.shape == (1,) else v
                                   for v in values]
        with keep_scheduling():
            super().save_episode(episode_data, parallel_encoding)

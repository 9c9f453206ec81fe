"""streamdp.sim: simulated tasks with scripted experts, LeRobot demo collection, measurements.

Entry points: ``make_task(name, obs_mode, seed, **kw)``, ``task_spec(name, obs_mode, **kw)``,
``make_expert(name, env)`` and ``list_tasks()`` (all of ``streamdp.sim.tasks``);
``streamdp.sim.collect.collect`` records datasets; ``bundled_checkpoint(task)`` finds the small policy
shipped for a task.
"""

from importlib import resources as _resources
from pathlib import Path as _Path

from . import tasks as _tasks
from .tasks import *  # noqa: F403 - the task API is this package's API


def bundled_checkpoint(task: str) -> _Path | None:
    """The checkpoint shipped for `task` in ``assets/checkpoints`` (scripts/make_bundled_checkpoints.sh), if any."""
    p = _Path(str(_resources.files(__name__).joinpath("assets", "checkpoints", task)))
    return p if (p / "config.json").is_file() else None


__all__ = [*_tasks.__all__, "bundled_checkpoint"]  # noqa: PLE0604

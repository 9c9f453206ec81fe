"""streamdp.sim: simulated tasks with scripted experts, LeRobot demo collection, measurements.

Entry points: ``make_task(name, obs_mode, seed, **kw)``, ``task_spec(name, obs_mode, **kw)``,
``make_expert(name, env)`` and ``list_tasks()``; ``streamdp.sim.collect.collect`` records datasets.
"""

from .tasks import (
    ACTION_KEY,
    IMAGE_KEY_PREFIX,
    OBS_MODES,
    STATE_KEY,
    Expert,
    TaskSpec,
    list_tasks,
    make_expert,
    make_task,
    register_task,
    task_spec,
)

__all__ = [
    "ACTION_KEY",
    "IMAGE_KEY_PREFIX",
    "OBS_MODES",
    "STATE_KEY",
    "Expert",
    "TaskSpec",
    "list_tasks",
    "make_expert",
    "make_task",
    "register_task",
    "task_spec",
]

"""Task spec, expert protocol and the name -> builder registry shared by every simulated task.

Every task env follows the gymnasium API (``reset(seed=) -> (obs, info)``, ``step(a) -> (obs, r,
terminated, truncated, info)``, ``render()``, ``close()``) with LeRobot key names in ``obs`` and
``info["is_success"]``, so the collector, the evaluator and the policy code never special-case a task.
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from streamdp.policy.cli import UserError, opt

OBS_MODES = ("state", "image")
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ACTION_KEY = "action"
IMAGE_KEY_PREFIX = "observation.images."


class TaskOptionError(UserError, ValueError):
    """A task option (``task.kwargs.*``) names no such task or suite: one line and exit code 2 in the jobs."""


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task in one observation mode (what a dataset or a policy needs to know).

    ``observation.state`` holds ``state_names`` (robot proprioception, plus in ``state`` mode the
    task-relevant privileged quantities such as the target position: no task uses
    ``observation.environment_state``). In ``image`` mode the state is proprioception only and each
    camera ``c`` in ``camera_names`` appears as ``observation.images.<c>`` (uint8, ``image_shape``).
    ``state_dim`` and ``action_dim`` are the numbers of names, so they cannot disagree with them.
    """

    name: str
    obs_mode: str
    fps: int
    joint_names: list[str]
    state_names: list[str]
    action_names: list[str]
    camera_names: list[str]
    image_shape: tuple[int, int, int] | None
    max_episode_steps: int
    success: str
    robot_type: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {self.obs_mode!r}")
        if self.obs_mode == "image" and (not self.camera_names or self.image_shape is None):
            raise ValueError(f"{self.name}: image mode needs camera_names and image_shape")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def image_keys(self) -> list[str]:
        """LeRobot observation keys of the cameras (empty in state mode)."""
        return [IMAGE_KEY_PREFIX + c for c in self.camera_names] if self.obs_mode == "image" else []

    def lerobot_features(self, use_videos: bool = False) -> dict[str, dict[str, Any]]:
        """Feature dict for ``LeRobotDataset.create`` (names are the real joint / state names)."""
        feats: dict[str, dict[str, Any]] = {
            STATE_KEY: {"dtype": "float32", "shape": (self.state_dim,), "names": list(self.state_names)},
            ACTION_KEY: {"dtype": "float32", "shape": (self.action_dim,), "names": list(self.action_names)},
        }
        for key in self.image_keys:
            assert self.image_shape is not None
            feats[key] = {
                "dtype": "video" if use_videos else "image",
                "shape": tuple(self.image_shape),
                "names": ["height", "width", "channels"],
            }
        return feats


_OPEN_RENDERING: weakref.WeakSet[TaskEnv] = weakref.WeakSet()  # envs holding GL contexts (close_at_exit)


def _close_rendering_envs() -> None:
    for env in list(_OPEN_RENDERING):
        with contextlib.suppress(Exception):
            env.close()


class TaskEnv(gym.Env):
    """What every task env shares: ``rgb_array`` rendering, and spaces that follow its ``task_spec``."""

    def close_at_exit(self) -> None:
        """Close this env at interpreter exit while EGL is still up. Call it right after the env made a GL
        context: mujoco and robosuite each register ``eglTerminate`` of the (shared) EGL display at exit when
        they make their first one, and a context freed after that (an env still open, or garbage collected at
        shutdown) prints an ``EGL_NOT_INITIALIZED`` traceback. atexit runs hooks last-in first-out, so moving
        this one to the end of the list each time keeps it ahead of every ``eglTerminate``."""
        _OPEN_RENDERING.add(self)
        atexit.unregister(_close_rendering_envs)
        atexit.register(_close_rendering_envs)

    metadata = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def init_spaces(self, spec: TaskSpec, image_size: int, action_space: gym.Space) -> None:
        """Set ``task_spec``, ``obs_mode``, the render fps and the observation / action spaces."""
        self.task_spec, self.obs_mode = spec, spec.obs_mode
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": spec.fps}
        spaces: dict[str, gym.Space] = {STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32)}
        for key in spec.image_keys:
            spaces[key] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = action_space


@dataclass
class TaskCard:
    """A task preset, ``config/task/NAME.yaml`` (``task=NAME`` on the command line of collect and eval)."""

    name: str = opt("???", "task name (streamdp.sim.make_task)")
    obs_mode: str = opt("state", "the card's default observation mode")
    kwargs: dict[str, Any] = opt(help="make_task options, e.g. task.kwargs.task_id=3 (LIBERO)", factory=dict)
    # what training reads (the card's YAML says what each means); collect and eval use the task spec
    fps: float | None = None
    max_episode_steps: int | None = None
    features: dict[str, Any] = field(default_factory=dict)


class Expert(Protocol):
    """Scripted demonstrator using privileged simulator state (never seen by the policy)."""

    def reset(self) -> None: ...

    def act(self, obs: dict[str, np.ndarray], env: Any = None) -> np.ndarray: ...


@dataclass(frozen=True)
class TaskEntry:
    """How to build a task: its spec, its env and its expert; ``variants`` (optional) expands options that
    name several tasks of a suite (LIBERO's ``task_id=all``) into one set of options per task."""

    spec: Callable[..., TaskSpec]
    make: Callable[..., Any]
    expert: Callable[..., Expert]
    variants: Callable[..., list[dict[str, Any]]] | None = None


_REGISTRY: dict[str, TaskEntry] = {}


def register_task(name: str, entry: TaskEntry) -> None:
    """Add a task under ``name`` (one name, one entry: re-registering is a bug)."""
    if name in _REGISTRY and _REGISTRY[name] is not entry:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = entry


def task_names() -> list[str]:
    """Names accepted by ``make_task`` / ``task_spec``, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> TaskEntry:
    """Registry lookup with an error that lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def check_obs_mode(obs_mode: str) -> str:
    """Validate ``obs_mode`` early with a clear message."""
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
    return obs_mode

"""Configuration of training: the dataclasses behind the hydra groups, kept together in this module (so
they can be registered in hydra's ConfigStore), and the glue that fills the policy's data-dependent
fields (dimensions, names, cameras, image shape, fps) from the dataset.

Every default lives here: :class:`TrainJobConfig` is registered in hydra's ConfigStore as
``train_schema`` (see :mod:`streamdp.policy.cli`); the YAML files hold presets only::

    train.yaml           defaults list (the schema, then the task and policy presets) + hydra's run dir
    policy/*.yaml        PolicyConfig presets (sdp_unet, sdp_transformer, sdp_unet_tiny); data-derived ones null
    task/*.yaml          task cards (shared with streamdp-collect): feature keys and expected dims
    recipe/*.yaml        a task's training recipe (task, policy size, steps, batch, lr): recipe=NAME

The ``train`` and ``dataset`` nodes are validated by merging them into these dataclasses (unknown keys
and wrong types fail with OmegaConf's message), and each dataclass checks its values on construction;
the ``policy`` node is validated by PolicyConfig. In-memory training uses ``TrainConfig.in_memory()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamdp.policy.cli import opt
from streamdp.policy.config import ConfigError, PolicyConfig, check_rename_map

if TYPE_CHECKING:
    from streamdp.policy.train.data import DatasetInfo

PRECISIONS = ("auto", "bf16", "fp32")
SHORT_EPISODE_MODES = ("pad", "error")


@dataclass
class ZarrConfig:
    """How a diffusion_policy replay buffer's ``data/<key>`` arrays map to the policy inputs."""

    state: list[str] = opt(help="arrays concatenated into observation.state", factory=lambda: ["state"])
    action: str = opt("action", "the action array")
    # Any, not dict[str, str] | None: omegaconf 2.3 cannot override a typed null mapping with {top: img}
    # (and a typed {} refuses new keys in struct mode); __post_init__ checks what arrives.
    images: Any = opt(None, "camera name -> array, e.g. {top: img}")
    state_names: list[str] | None = opt(None, "names of the state entries (null: state_0, ...)")
    action_names: list[str] | None = opt(None, "names of the action entries (null: action_0, ...)")
    fps: float | None = opt(None, "a replay buffer stores no fps: this, else task.fps")

    def __post_init__(self) -> None:
        if self.images is not None and not (
            isinstance(self.images, Mapping) and all(isinstance(v, str) for v in self.images.values())
        ):
            raise ConfigError(f"dataset.zarr.images must map camera names to array names, got {self.images!r}")
        if not self.action:
            raise ConfigError("dataset.zarr.action must name the action array")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"dataset.zarr.fps must be > 0 (or null), got {self.fps}")
        if self.images and len(set(self.images.values())) != len(self.images):
            raise ConfigError(f"dataset.zarr.images maps two cameras to one array: {dict(self.images)}")


@dataclass
class DatasetConfig:
    format: str = opt("lerobot", "lerobot (v3, local root) | zarr (diffusion_policy replay buffer)")
    root: str | None = opt(None, "dataset folder (LeRobot root or .zarr directory): required")
    repo_id: str | None = opt(None, "LeRobot repo id; only a label for a local root (nothing is downloaded)")
    short_episodes: str = opt("pad", "episodes shorter than the horizon: pad (LeRobot convention) | error")
    cache_lowdim: bool = opt(True, "state and action windows from memory (same values, faster)")
    cache_frames_mb: float = opt(4096.0, "video cameras: decode every frame once into memory when all frames "
                                 "fit in this many MB (uint8; same frames, no per-sample decoding); 0: off")
    num_workers: int = opt(0, "DataLoader worker processes per rank")
    video_backend: str | None = opt(None, "LeRobot video decoder; null: torchcodec")
    zarr: ZarrConfig = opt(help="only for format=zarr: data/<key> arrays -> policy inputs", factory=ZarrConfig)
    # Any, not dict[str, str]: see ZarrConfig.images; __post_init__ checks what arrives.
    rename_map: Any = opt(None, "LeRobot keys read under the task card's names, dataset key -> card key, e.g. "
                                "{observation.image: observation.images.top} (recorded in the checkpoint)")

    def __post_init__(self) -> None:
        if self.format not in ("lerobot", "zarr"):
            raise ConfigError(f"dataset.format must be 'lerobot' or 'zarr', got {self.format!r}")
        self.rename_map = dict(self.rename_map) if isinstance(self.rename_map, Mapping) else self.rename_map
        if self.rename_map is not None:
            check_rename_map(self.rename_map, "dataset.rename_map")
        if self.rename_map and self.format != "lerobot":
            raise ConfigError("dataset.rename_map renames LeRobot features; a zarr buffer maps its arrays with "
                              "dataset.zarr.state / action / images")
        if self.short_episodes not in SHORT_EPISODE_MODES:
            raise ConfigError(
                f"dataset.short_episodes must be one of {SHORT_EPISODE_MODES}, got {self.short_episodes!r}"
            )
        if self.num_workers < 0:
            raise ConfigError(f"dataset.num_workers must be >= 0, got {self.num_workers}")
        if self.cache_frames_mb < 0:
            raise ConfigError(f"dataset.cache_frames_mb must be >= 0 (0: off), got {self.cache_frames_mb}")


@dataclass
class TrainConfig:
    steps: int = opt(100_000, "optimiser steps")
    batch_size: int = opt(64, "GLOBAL batch, split evenly across data-parallel ranks")
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    betas: list[float] = opt(help="AdamW betas", factory=lambda: [0.95, 0.999])
    weight_decay: float = opt(1e-6, "AdamW weight decay")
    warmup_steps: int = opt(500, "linear warm-up, then cosine decay to 0 at `steps`")
    grad_clip: float = opt(1.0, "max global gradient norm (0: off)")
    ema: bool = opt(True, "keep EMA weights: exported checkpoints and evaluation use them")
    ema_power: float = opt(0.75, "EMA warm-up power")
    ema_max_decay: float = opt(0.9999, "EMA decay cap")
    seed: int = opt(0, "seed of weights, data order, labels and noise")
    precision: str = opt("auto", "auto: bf16 autocast on CUDA GPUs that support it, else fp32 | bf16 | fp32")
    device: str = opt("auto", "auto: cuda:<LOCAL_RANK> when CUDA is available, else cpu")
    num_threads: int | None = opt(None, "torch CPU threads (1 when sharing the CPU with a simulator)")
    log_every: int = opt(50, "steps between TensorBoard / metrics.jsonl scalars")
    log_interval_s: float = opt(30.0, "seconds between progress lines (loss, lr, steps/s, ETA) in train.log; "
                                "checked every log_every steps (0: every log_every steps)")  # fmt: skip
    checkpoint_every: int = opt(5000, "steps between training checkpoints")
    keep_last: int = opt(3, "training checkpoints kept (older ones are deleted)")
    stop_at: int = opt(0, "stop at this step with a checkpoint, keeping the schedule of train.steps "
                          "(resume=true continues to train.steps); 0: train.steps")  # fmt: skip
    eval_batches: int = opt(2, "EMA-model loss on this many fixed batches at each checkpoint (0: off)")
    output_dir: str | None = opt(None, "run directory; null: hydra's run dir (hydra.run.dir)")
    overwrite: bool = opt(False, "start afresh in a run dir that holds a run: first delete that run's own files")
    progress: bool = opt(True, "tqdm progress bar on rank 0")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.lr <= 0 or self.eval_batches < 0:
            raise ConfigError("train.warmup_steps, grad_clip and eval_batches must be >= 0 and train.lr > 0")
        if not 0 <= self.stop_at <= self.steps:
            raise ConfigError(f"train.stop_at must lie in [0, train.steps={self.steps}], got {self.stop_at}")
        if self.log_interval_s < 0:
            raise ConfigError(f"train.log_interval_s must be >= 0, got {self.log_interval_s}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must hold two numbers, got {self.betas}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.weight_decay < 0 or not 0 <= self.ema_max_decay <= 1 or self.ema_power <= 0:
            raise ConfigError("train.weight_decay must be >= 0, ema_max_decay in [0, 1] and ema_power > 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 (or null), got {self.num_threads}")

    @classmethod
    def in_memory(cls, **overrides: Any) -> TrainConfig:
        """Defaults of in-memory training (small tasks, a few thousand steps on the CPU): a higher
        learning rate and a short warm-up, AdamW's default betas, fp32 on the CPU, no bar."""
        fields = dict(lr=1e-3, betas=[0.9, 0.999], warmup_steps=50, precision="fp32", device="cpu", progress=False)
        return cls(**{**fields, **overrides})


@dataclass
class ClosedLoopConfig:
    """The ``eval`` node: closed-loop evaluation of the exported (EMA) policy in the dataset's simulated
    task during training (see :mod:`streamdp.policy.train.closed_loop`)."""

    every: int = opt(5000, "steps between evaluations, and one at the last step; each writes a checkpoint "
                     "(0: off; off anyway when the dataset is not from a simulated task)")  # fmt: skip
    episodes: int = opt(5, "episodes per evaluation; episode i resets env and policy with seed + i")
    seed: int = opt(10000, "first episode seed (streamdp-eval's default: held out from collection seeds 0..)")
    max_steps: int | None = opt(None, "cap on env steps per episode (null: the task's max_episode_steps)")

    def __post_init__(self) -> None:
        if self.every < 0 or self.episodes < 1:
            raise ConfigError(f"eval.every must be >= 0 and eval.episodes >= 1, got {self.every}, {self.episodes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"eval.max_steps must be >= 1 (or null), got {self.max_steps}")

    def due(self, step: int, total: int) -> bool:
        """Whether the schedule evaluates at `step` of a `total`-step run."""
        return self.every > 0 and (step % self.every == 0 or step == total)


@dataclass
class TrainJobConfig:
    """``streamdp-train``: everything a run reads. `task` and `policy` come from presets (config/task/,
    config/policy/) and are checked against the dataset and by PolicyConfig."""

    task: Any = opt(help="task card preset: task=NAME, then task.KEY=VALUE", factory=dict)
    policy: Any = opt(help="policy preset: policy=NAME, then policy.KEY=VALUE (PolicyConfig fields)", factory=dict)
    train: TrainConfig = opt(help="optimisation, EMA, logging, checkpoints", factory=TrainConfig)
    dataset: DatasetConfig = opt(help="what to train from", factory=DatasetConfig)
    eval: ClosedLoopConfig = opt(help="closed-loop evaluation in the simulated task", factory=ClosedLoopConfig)
    resume: bool = opt(False, "continue the run in train.output_dir from its newest complete checkpoint, with its "
                              "saved config.yaml (only harmless keys and a higher train.steps may change)")  # fmt: skip


def to_dataclass(cls: type, node: Any, where: str) -> Any:
    """Validate a config node against a dataclass (unknown keys, types) and build it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: {e}") from e


# --------------------------------------------------------------------------------------- policy config
def policy_config(policy: Mapping[str, Any], info: DatasetInfo) -> PolicyConfig:
    """PolicyConfig from the policy node plus the dataset's fields; a contradicting value is an error."""
    d = dict(policy)
    derived: dict[str, Any] = {  # the fields PolicyConfig takes from the data
        "action_dim": info.action_dim,
        "state_dim": info.state_dim,
        "joint_names": info.joint_names,
        "action_names": info.action_names,
        "camera_names": info.camera_names,
        "image_shape": info.image_shape,
        "fps": info.fps,
        "rename_map": info.rename_map,
        "tasks": info.conditioning_tasks,
    }
    problems = []
    for key, value in derived.items():
        given = d.get(key)
        if given not in (None, [], {}) and _norm(given) != _norm(value):
            problems.append(f"policy.{key}={given!r} but the dataset gives {value!r}")
        d[key] = list(value) if isinstance(value, tuple) else value
    if problems:
        raise ConfigError(
            "policy config contradicts the dataset (these fields come from the data; leave them null): "
            + "; ".join(problems)
        )
    return PolicyConfig.from_dict(d)


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def config_diff(a: PolicyConfig, b: PolicyConfig) -> list[str]:
    """Names of the fields that differ between two policy configs (for resume checks)."""
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    return sorted(k for k in da if _norm(da[k]) != _norm(db[k]))


def override_value(overrides: Sequence[str], key: str) -> str | None:
    """The value of `key=value` in a hydra override list (last one wins), else None."""
    out = None
    for o in overrides:
        k, sep, v = o.lstrip("+~").partition("=")
        if sep and k == key:
            out = v
    return out

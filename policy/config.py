"""Policy configuration: one dataclass that validates itself and round-trips through JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from streamdp.policy.schedule import ScheduleConfig

SAMPLERS = ("ddpm", "ddim", "sdp", "rti", "sdp_rti")
STREAMING_SAMPLERS = ("sdp", "sdp_rti")  # rolling-buffer inner loops (need h >= 2 chunks)
STEP_MODES = ("auto", "ddpm", "ddim")
CACHES = ("none", "bac")
DENOISERS = ("unet", "transformer")
NORM_MODES = ("min_max", "mean_std")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class UnknownTaskError(ConfigError):
    """An observation names a task the policy was not trained on; the message lists the ones it knows."""


@dataclass
class UnetConfig:
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    cond_dim: int = 128  # width of the projected per-slot level embedding folded into FiLM

    def __post_init__(self) -> None:
        self.down_dims = tuple(int(d) for d in self.down_dims)
        if not self.down_dims or any(d <= 0 or d % self.n_groups for d in self.down_dims):
            raise ConfigError(
                f"unet.down_dims must be positive multiples of n_groups={self.n_groups}: {self.down_dims}"
            )
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"unet.kernel_size must be odd, got {self.kernel_size}")


@dataclass
class TransformerConfig:
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0
    causal: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"transformer.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_layers < 1:
            raise ConfigError("transformer.n_layers must be >= 1")


IMAGE_BACKBONES = ("resnet18", "small")


@dataclass
class EncoderConfig:
    state_hidden: int = 128
    image_feature_dim: int = 64  # 2 x num keypoints of the spatial softmax
    crop_ratio: float = 0.9  # random crop in training, centre crop at inference
    share_camera_backbone: bool = False
    task_embed_dim: int = 32  # width of the learned task embedding (only with PolicyConfig.tasks)
    # Image trunk: "resnet18" (Diffusion Policy's, 11 M parameters per camera) or "small" (4 strided conv
    # layers, 0.1 M: for CPU training, where ResNet-18 at 96x96 trains at 0.4 steps/s on one core)
    backbone: str = "resnet18"

    def __post_init__(self) -> None:
        if self.backbone not in IMAGE_BACKBONES:
            raise ConfigError(f"encoder.backbone must be one of {IMAGE_BACKBONES}, got {self.backbone!r}")
        if self.task_embed_dim < 1:
            raise ConfigError(f"encoder.task_embed_dim must be >= 1, got {self.task_embed_dim}")
        if not 0.5 <= self.crop_ratio <= 1.0:
            raise ConfigError(f"encoder.crop_ratio must lie in [0.5, 1], got {self.crop_ratio}")
        if self.image_feature_dim % 2:
            raise ConfigError("encoder.image_feature_dim must be even (x, y per keypoint)")


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy, stored in the checkpoint's config.json.

    Horizons follow diffusion_policy: To observation steps, Ta actions executed per observation,
    Tp predicted slots (the first To-1 of which are in the past).
    """

    action_dim: int
    state_dim: int
    n_obs_steps: int = 2  # To
    n_action_steps: int = 8  # Ta
    horizon: int = 16  # Tp
    fps: float = 10.0
    joint_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    camera_names: list[str] = field(default_factory=list)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of every camera
    # Observation keys under other names, source key -> policy key (lerobot's rename_map convention), e.g.
    # {"observation.image": "observation.images.top"}: training records the dataset's renames here, and the
    # policy reads an input under its source name when its own is absent (a frame of that dataset).
    rename_map: dict[str, str] = field(default_factory=dict)
    # Task strings (LeRobot's per-frame "task", e.g. a LIBERO instruction) of a multi-task policy: each has a
    # learned embedding added to the observation condition, and an observation names its task in obs["task"].
    # Empty: one task, no task input (every checkpoint before task conditioning).
    tasks: list[str] = field(default_factory=list)
    denoiser: str = "unet"
    sampler: str = "sdp"
    num_inference_steps: int = 10  # grid size K for ddim, sdp and rti's full solves; ddpm always uses N
    step_mode: str = "auto"  # per-step update: ddpm posterior | ddim (eta=0); auto: ddim for 'ddim', else ddpm
    # RTI warm start ('rti', 'sdp_rti'; docs/algorithms.md, RTI). Levels are train timesteps.
    rti_start_level: int | None = None  # k'; None: the calibrated extras["rti"]["start_level"], else ceil(0.3N)-1
    rti_steps: int | None = None  # calls of one warm solve on [k' ... clean]; None: calibrated steps, else 4
    rti_full_every: int = 50  # full resample every this many observations (0: never periodically)
    rti_divergence: float = 0.5  # full resample when mean |solution - guess| (normalised) exceeds this; 0: off
    discrete_action_dims: list[int] = field(default_factory=list)  # gripper dims (binary open/close commands)
    # How warm starts treat them: snap (guess and solution snapped to the extremes) | scale (RTI-DP's
    # alternative: the dims are shrunk by discrete_action_scale in the network's space, in training and
    # inference alike, so the noise at k' can flip a gripper a snapped guess would keep locked).
    discrete_action_mode: str = "snap"
    discrete_action_scale: float = 10.0
    # Block caching of transformer residual branches (docs/algorithms.md, BAC); schedules live in extras["bac"].
    cache: str = "none"  # none | bac
    cuda_graph: bool = False  # on CUDA, replay the denoiser call from captured CUDA graphs
    compile: bool = False  # torch.compile the denoiser call (first call compiles: do it in warm-up)
    normalization: str = "min_max"
    primer: str = "zeros"  # initial clean content of the SDP buffer: zeros | state
    sdp_ladder_prob: float = 0.8  # training: chunk-wise ladder vs one shared level
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        for name, sub, cls in (
            ("schedule", self.schedule, ScheduleConfig),
            ("unet", self.unet, UnetConfig),
            ("transformer", self.transformer, TransformerConfig),
            ("encoder", self.encoder, EncoderConfig),
        ):
            if isinstance(sub, dict):
                setattr(self, name, _from_dict(cls, sub, name))
        if self.image_shape is not None:
            self.image_shape = tuple(int(x) for x in self.image_shape)
        self.joint_names = list(self.joint_names)
        self.action_names = list(self.action_names)
        self.camera_names = list(self.camera_names)
        self.rename_map = dict(self.rename_map)
        self.tasks = [str(t) for t in self.tasks]
        self.discrete_action_dims = [int(i) for i in self.discrete_action_dims]
        self.validate()

    @property
    def snapped_dims(self) -> list[int]:
        """The action dims warm starts snap to -1/+1 (none in 'scale' mode)."""
        return list(self.discrete_action_dims) if self.discrete_action_mode == "snap" else []

    def action_gain(self) -> list[float] | None:
        """Per-dim factor on normalised actions (the network's space): 1/scale on discrete dims in 'scale'
        mode; None when every factor is 1."""
        if self.discrete_action_mode != "scale" or not self.discrete_action_dims:
            return None
        gain = [1.0] * self.action_dim
        for i in self.discrete_action_dims:
            gain[i] = 1.0 / self.discrete_action_scale
        return gain

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        if self.action_dim < 1:
            raise ConfigError(f"action_dim must be >= 1, got {self.action_dim}")
        if self.state_dim < 0:
            raise ConfigError(f"state_dim must be >= 0, got {self.state_dim}")
        if self.state_dim == 0 and not self.camera_names:
            raise ConfigError("the policy needs an input: state_dim > 0 or at least one camera")
        if self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ConfigError("n_obs_steps (To) and n_action_steps (Ta) must be >= 1")
        if self.horizon < self.n_obs_steps - 1 + self.n_action_steps:
            raise ConfigError(
                f"horizon Tp={self.horizon} is shorter than To-1+Ta={self.n_obs_steps - 1 + self.n_action_steps}: "
                "raise horizon or lower n_action_steps"
            )
        if self.denoiser not in DENOISERS:
            raise ConfigError(f"denoiser must be one of {DENOISERS}, got {self.denoiser!r}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.normalization not in NORM_MODES:
            raise ConfigError(f"normalization must be one of {NORM_MODES}, got {self.normalization!r}")
        if self.primer not in ("zeros", "state"):
            raise ConfigError(f"primer must be 'zeros' or 'state', got {self.primer!r}")
        if self.primer == "state" and self.state_dim < self.action_dim:
            raise ConfigError("primer='state' needs the first action_dim state entries to be joint positions")
        n = self.schedule.num_train_steps
        if not 1 <= self.num_inference_steps <= n:
            raise ConfigError(f"num_inference_steps must lie in [1, {n}], got {self.num_inference_steps}")
        if not 0.0 <= self.sdp_ladder_prob <= 1.0:
            raise ConfigError(f"sdp_ladder_prob must lie in [0, 1], got {self.sdp_ladder_prob}")
        if self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")
        if self.joint_names and len(self.joint_names) != len(set(self.joint_names)):
            raise ConfigError(f"joint_names has duplicates: {self.joint_names}")
        if self.action_names and len(self.action_names) != self.action_dim:
            raise ConfigError(f"action_names has {len(self.action_names)} entries but action_dim={self.action_dim}")
        check_rename_map(self.rename_map, "rename_map")
        if len(set(self.tasks)) != len(self.tasks) or not all(self.tasks):
            raise ConfigError(f"tasks must be distinct non-empty strings, got {self.tasks}")
        if self.camera_names and (self.image_shape is None or len(self.image_shape) != 3):
            raise ConfigError("cameras are configured but image_shape (C, H, W) is not")
        if self.sampler in STREAMING_SAMPLERS:
            check_streaming_horizons(self.horizon, self.n_obs_steps, self.n_action_steps)
        self._validate_accel(n)
        if self.denoiser == "unet":
            # Each down level halves the length except the last; Tp must survive it.
            levels = len(self.unet.down_dims) - 1
            if self.horizon % (2**levels):
                raise ConfigError(
                    f"unet with {len(self.unet.down_dims)} levels needs horizon divisible by {2**levels}, "
                    f"got {self.horizon}: change horizon or unet.down_dims"
                )

    def _validate_accel(self, n: int) -> None:
        if self.step_mode not in STEP_MODES:
            raise ConfigError(f"step_mode must be one of {STEP_MODES}, got {self.step_mode!r}")
        if self.rti_start_level is not None and not 0 <= self.rti_start_level <= n - 1:
            raise ConfigError(
                f"rti_start_level k' must lie in [0, {n - 1}] (train timesteps), got {self.rti_start_level}"
            )
        if self.rti_steps is not None and self.rti_steps < 1:
            raise ConfigError(f"rti_steps must be >= 1, got {self.rti_steps}")
        if self.rti_full_every < 0:
            raise ConfigError(f"rti_full_every must be >= 0 (0 = never), got {self.rti_full_every}")
        if not self.rti_divergence >= 0:
            raise ConfigError(f"rti_divergence must be >= 0 (0 = off), got {self.rti_divergence}")
        dims = self.discrete_action_dims
        if len(set(dims)) != len(dims) or any(not 0 <= i < self.action_dim for i in dims):
            raise ConfigError(
                f"discrete_action_dims must be distinct indices in [0, {self.action_dim - 1}], got {dims}"
            )
        if dims and self.normalization != "min_max":
            raise ConfigError(
                "discrete_action_dims are snapped to the normalised extremes -1/+1, which needs "
                f"normalization='min_max' (got {self.normalization!r})"
            )
        if self.discrete_action_mode not in ("snap", "scale"):
            raise ConfigError(f"discrete_action_mode must be 'snap' or 'scale', got {self.discrete_action_mode!r}")
        if not self.discrete_action_scale >= 1:
            raise ConfigError(f"discrete_action_scale must be >= 1, got {self.discrete_action_scale}")
        if self.cache not in CACHES:
            raise ConfigError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.compile and (self.cache != "none" or self.cuda_graph):
            raise ConfigError("compile=True needs cache='none' and cuda_graph=False (BAC skips branches per step; "
                              "a CUDA graph already replays the call)")
        if self.cache == "bac" and self.denoiser != "transformer":
            raise ConfigError(
                "cache='bac' caches transformer residual branches: set denoiser='transformer' or cache='none'"
            )

    def task_index(self, task: str) -> int:
        """The index of instruction `task` in ``tasks`` (its embedding row); an unknown one is an error that
        lists the known tasks."""
        try:
            return self.tasks.index(task)
        except ValueError:
            known = "; ".join(repr(t) for t in self.tasks)
            raise UnknownTaskError(
                f"unknown task {task!r}: this policy knows {len(self.tasks)} task(s): {known}"
            ) from None

    @property
    def default_rti_start_level(self) -> int:
        """k' used when neither the config nor a calibration sets it: ceil(0.3 N) - 1."""
        return max(0, -(-3 * self.schedule.num_train_steps // 10) - 1)

    @property
    def num_chunks(self) -> int:
        """h: chunks in the streaming buffer (see :func:`num_chunks`)."""
        return num_chunks(self.horizon, self.n_obs_steps, self.n_action_steps)

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        return _from_dict(cls, d, "policy")

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)


def check_rename_map(rename: Any, where: str) -> None:
    """A rename map is {source key: target key}, strings, each target named once."""
    if not isinstance(rename, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                               for k, v in rename.items()):
        raise ConfigError(f"{where} must map source keys to target keys (non-empty strings), got {rename!r}")
    targets = list(rename.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise ConfigError(f"{where} maps several keys onto {twice}: each target needs one source")


def merge_rename_maps(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """`base` with `extra`'s entries added; an entry of `extra` replaces base's entry for the same target."""
    out = {src: dst for src, dst in base.items() if dst not in extra.values()}
    out.update(extra)
    return out


def num_chunks(tp: int, to: int, ta: int) -> int:
    """h = floor((Tp - To + 1) / Ta): whole chunks of Ta actions from the current slot To-1 to the end
    of the horizon. The only place h is computed."""
    return (tp - to + 1) // ta


def check_streaming_horizons(tp: int, to: int, ta: int) -> None:
    """Reject buffers with fewer than two chunks: with h = 1 streaming has no speed-up at all."""
    h = num_chunks(tp, to, ta)
    if h < 2:
        raise ConfigError(
            f"streaming needs at least 2 chunks, but Tp={tp}, To={to}, Ta={ta} give "
            f"h=floor((Tp-To+1)/Ta)={h}: raise horizon Tp to >= {to - 1 + 2 * ta} "
            f"or lower n_action_steps Ta to <= {(tp - to + 1) // 2}"
        )


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{where}: {e}") from e

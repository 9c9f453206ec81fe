"""Public policy API: LeRobot-style calls plus a streaming surface for real-time runtimes.

    policy = Policy.from_pretrained("ckpt/")
    policy.reset(state=q0)
    a = policy.select_action({"observation.state": q})           # one action per control tick

    policy.observe(obs, stamp)          # streaming: feed observations as they arrive,
    policy.denoise(budget=3)            # spend at most `budget` network calls now (resumable),
    policy.pop_ready(n)                 # and take clean actions when they exist.

Samplers ("inner loops"; every one runs once per observation):

- 'ddpm' — full chunk on all N train levels (N calls); 'ddim' — full chunk on a K-level grid (K calls);
- 'sdp'  — rolling buffer with a noise ladder (about ceil(K/h) calls);
- 'rti'  — warm start from the previous solution shifted by the executed actions, `rti_steps` calls
  from level k' (full K-call solves on the first observation and on resamples);
- 'sdp_rti' — SDP ladder on the grid [k' ... 0] whose fresh tail starts from the shifted previous solution.

Each is one module of :mod:`streamdp.policy.samplers` behind one protocol; docs/algorithms.md explains
them as implemented. cache='bac' adds block caching of the transformer's residual branches (policy/bac.py):
fewer branch computations per call, the same number of calls. On CUDA, cuda_graph=True replays each
denoiser call from a captured CUDA graph and the SDP roll and BAC residual adds use fused kernels.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamdp.policy.checkpoint import (
    STATS_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMismatchError,
    check_state_dict,
    read_config,
    read_tensors,
    save_checkpoint,
)
from streamdp.policy.config import ConfigError, PolicyConfig
from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY, TASK_INDEX_KEY, TASK_KEY
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer, NormalizerError
from streamdp.policy.samplers import DenoiserCall, Sampler, SamplerContext, SolveSettings, make_sampler
from streamdp.policy.samplers.rolling_buffer import RollingBuffer
from streamdp.policy.samplers.rti import new_rti_stats

ACTION_KEY = "action"


class NonFiniteError(ValueError):
    """NaN or inf in an observation or in the policy output; nothing derived from it is used."""


class Policy:
    """Thin facade: load, normalise, observe, hand the condition to the sampler, pop clean actions."""

    def __init__(
        self,
        config: PolicyConfig,
        stats: Mapping[str, Mapping[str, Any]] | Normalizer | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = DiffusionModel(config).to(self.device).eval()
        self.normalizer: Normalizer | None = None
        if stats is not None:
            self.set_stats(stats)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_nfe = 0  # network calls spent on the most recent emitted chunk
        self.dropped_observations = 0
        self.encodes_total = 0  # observation-encoder runs (at most one per observation: condition())
        self.encode_s_total = 0.0  # their host wall time (the encoder's own time on CPU; launch time on CUDA)
        self.call = DenoiserCall(self.model, config, self.device, cache_factory=self._block_cache)
        self.extras = {}  # builds the sampler and resets

    @property
    def extras(self) -> dict[str, Any]:
        """Calibration and provenance stored with the checkpoint (extras['rti'], extras['bac'], ...)."""
        return self._extras

    @extras.setter
    def extras(self, value: dict[str, Any]) -> None:
        # Grids and RTI levels depend on the calibration: a new one means a new sampler, and a reset.
        self._extras = dict(value)
        self.sampler_impl: Sampler = self._make_sampler()
        self.reset()

    def _make_sampler(self) -> Sampler:
        settings = SolveSettings(self.config, self.extras)
        ctx = SamplerContext(self.config, self.model.schedule, self.call, self.generator, self.device, settings)
        return make_sampler(ctx)

    def _block_cache(self) -> Any:
        from streamdp.policy.bac import BlockCache

        return BlockCache.from_extras(self.extras)

    # ------------------------------------------------------------------ construction / I/O
    def set_stats(self, stats: Mapping[str, Mapping[str, Any]] | Normalizer) -> None:
        gain = self.config.action_gain()
        gains = {ACTION_KEY: gain} if gain else None
        if isinstance(stats, Normalizer):  # the config, not the stats object, decides the network's space
            norm = Normalizer(stats.stats, stats.mode, gains)
        else:
            norm = Normalizer(stats, self.config.normalization, gains)
        need = {ACTION_KEY: self.config.action_dim}
        if self.config.state_dim:
            need[STATE_KEY] = self.config.state_dim
        for key, dim in need.items():
            if key not in norm.stats:
                raise CheckpointMismatchError(f"normalisation stats lack {key!r} (have {sorted(norm.stats)})")
            if norm.dim(key) != dim:
                raise CheckpointMismatchError(f"stats for {key!r} have {norm.dim(key)} dims, config says {dim}")
        self.normalizer = norm

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        seed: int = 0,
        **overrides: Any,
    ) -> Policy:
        """Load and validate a checkpoint directory. `overrides` replace config fields at load time
        (e.g. sampler='ddim', num_inference_steps=10) and are validated like any config."""
        path = Path(path)
        cfg, extras = read_config(path)
        if overrides:
            try:
                cfg = PolicyConfig.from_dict({**cfg.to_dict(), **overrides})
            except ConfigError as e:
                raise ConfigError(f"override of checkpoint {path}: {e}") from e
        weights = read_tensors(path / WEIGHTS_FILE)
        stats = read_tensors(path / STATS_FILE)
        try:
            norm = Normalizer.from_flat(stats, cfg.normalization)
        except NormalizerError as e:
            raise CheckpointError(f"{path / STATS_FILE}: {e}") from e
        policy = cls(cfg, stats=norm, device=device, seed=seed)
        check_state_dict(path / WEIGHTS_FILE, policy.model.state_dict(), weights)
        policy.model.load_state_dict(weights)
        policy.extras = extras  # rebuilds and resets the sampler for the calibrated grids
        policy.check_cache()
        return policy

    def save_pretrained(
        self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None, extras: dict[str, Any] | None = None
    ) -> Path:
        if self.normalizer is None:
            raise CheckpointError("cannot save a policy without normalisation stats")
        sd = state_dict if state_dict is not None else self.model.state_dict()
        return save_checkpoint(path, self.config, sd, self.normalizer.to_flat(), {**self.extras, **(extras or {})})

    def twin(
        self,
        seed: int = 0,
        extras: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> Policy:
        """A policy with the same weights and stats, its own RNG and state, config fields changed as given
        (validated), `extras` (default: a copy of these) and `device` (default: this one). Used to compare
        settings, or devices, on equal weights."""
        try:
            cfg = PolicyConfig.from_dict({**self.config.to_dict(), **overrides})
        except ConfigError as e:
            raise ConfigError(f"twin of a policy: {e}") from e
        other = type(self)(cfg, stats=self.normalizer, device=self.device if device is None else device, seed=seed)
        other.model.load_state_dict(self.model.state_dict())
        other.extras = dict(self.extras if extras is None else extras)
        return other

    def check_compatible(
        self,
        joint_names: list[str] | None = None,
        camera_names: list[str] | None = None,
        state_dim: int | None = None,
        action_dim: int | None = None,
        fps: float | None = None,
        image_shape: tuple[int, ...] | None = None,
    ) -> None:
        """Refuse a robot that does not match the checkpoint, saying what differs."""
        c = self.config
        problems = []
        if joint_names is not None and c.joint_names and list(joint_names) != c.joint_names:
            problems.append(f"joint names/order {list(joint_names)} != checkpoint {c.joint_names}")
        if camera_names is not None and sorted(camera_names) != sorted(c.camera_names):
            problems.append(f"cameras {sorted(camera_names)} != checkpoint {sorted(c.camera_names)}")
        if state_dim is not None and state_dim != c.state_dim:
            problems.append(f"state dim {state_dim} != checkpoint {c.state_dim}")
        if action_dim is not None and action_dim != c.action_dim:
            problems.append(f"action dim {action_dim} != checkpoint {c.action_dim}")
        if fps is not None and abs(fps - c.fps) > 1e-6 * max(1.0, c.fps):
            problems.append(f"fps {fps} != checkpoint {c.fps}")
        if image_shape is not None and c.image_shape is not None and tuple(image_shape) != tuple(c.image_shape):
            problems.append(f"image shape {tuple(image_shape)} != checkpoint {tuple(c.image_shape)}")
        if problems:
            raise CheckpointMismatchError("checkpoint does not fit this robot: " + "; ".join(problems))

    # ------------------------------------------------------------------ state
    @property
    def sampler(self) -> str:
        return self.config.sampler

    def reset(self, state: np.ndarray | torch.Tensor | None = None) -> None:
        """Forget history, queued actions and the warm-start solution; re-seed the sampler (from `state`
        when primer='state'). Counters (nfe_total, rti_stats) and an attached cache stay."""
        self._history: collections.deque[dict[str, torch.Tensor]] = collections.deque(maxlen=self.config.n_obs_steps)
        self._ready: collections.deque[np.ndarray] = collections.deque()
        self._cond: torch.Tensor | None = None
        self._fresh = False
        self._last_stamp: float | None = None
        self._ahead = 0  # queued actions older than the latest chunk
        self._executed = 0  # actions of the latest chunk popped (executed) since it was made
        self.call.take_spent()
        self.sampler_impl.reset(self._primer(state))

    # ------------------------------------------------------------------ sampler state (read-only views)
    @property
    def settings(self) -> SolveSettings:
        """Grids, step mode, k' and solve keys of this policy (config + calibration): policy.settings.X."""
        return self.sampler_impl.ctx.settings

    def solve_kinds(self) -> list[str]:
        """Kinds of solve this sampler runs (each needs its own BAC schedule)."""
        return list(self.sampler_impl.kinds)

    @property
    def buffer(self) -> RollingBuffer | None:
        """The SDP rolling buffer ('sdp', 'sdp_rti'), else None."""
        return getattr(self.sampler_impl, "buffer", None)

    def noise_levels(self) -> np.ndarray | None:
        """A copy of every buffer slot's level on the K-level sampler grid (-1 clean; the SDP ladder), or None
        for samplers without a rolling buffer. Read it where the policy runs (the inference thread)."""
        buf = self.buffer
        return None if buf is None else buf.pos.detach().cpu().numpy().astype(np.int64)

    @property
    def rti_stats(self) -> dict[str, float]:
        """Cumulative full / warm solves, resamples and the last divergence (zeros for non-RTI samplers)."""
        stats = self.sampler_impl.stats
        return stats if "warm" in stats else new_rti_stats()

    @property
    def nfe_total(self) -> int:
        return self.call.nfe_total

    # ------------------------------------------------------------------ block cache
    @property
    def cache(self) -> Any:
        return self.call.cache

    def attach_cache(self, cache: Any) -> None:
        """Route every transformer residual branch through `cache.hook` (a BAC BlockCache or a recorder)."""
        self.call.attach_cache(cache)

    def detach_cache(self) -> None:
        self.call.detach_cache()

    def check_cache(self) -> None:
        """With cache='bac', fail now (not at the first observation) if the checkpoint lacks a schedule
        for a solve kind this sampler runs. from_pretrained calls it."""
        if self.config.cache != "bac":
            return
        from streamdp.policy.bac import require_schedules, schedules_from_extras

        require_schedules(schedules_from_extras(self.extras), self.sampler_impl.solve_keys(), self.config.sampler)

    def _primer(self, state: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
        c = self.config
        if c.primer != "state" or state is None or self.normalizer is None:
            return None
        q = torch.as_tensor(np.asarray(state, dtype=np.float32)).reshape(-1)[: c.action_dim].to(self.device)
        if q.numel() != c.action_dim or not torch.isfinite(q).all():
            raise NonFiniteError(f"reset state must hold {c.action_dim} finite joint positions, got {state!r}")
        return self.normalizer.normalize(ACTION_KEY, q)[None].expand(c.horizon, -1)

    # ------------------------------------------------------------------ observations
    def _prepare(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        c = self.config
        out: dict[str, torch.Tensor] = {}
        obs = self._renamed(obs)
        if c.state_dim:
            if STATE_KEY not in obs:
                raise KeyError(f"observation lacks {STATE_KEY!r} (has {sorted(obs)})")
            s = torch.as_tensor(np.asarray(obs[STATE_KEY], dtype=np.float32)).reshape(-1)
            if s.numel() != c.state_dim:
                raise ValueError(f"{STATE_KEY} has {s.numel()} values, policy expects {c.state_dim}")
            if not torch.isfinite(s).all():
                raise NonFiniteError(f"{STATE_KEY} contains NaN or inf: {s.tolist()}")
            out[STATE_KEY] = s
        for cam in c.camera_names:
            key = IMAGE_PREFIX + cam
            if key not in obs:
                raise KeyError(f"observation lacks camera {key!r} (has {sorted(obs)})")
            out[key] = self._prepare_image(key, obs[key])
        if c.tasks:
            out[TASK_INDEX_KEY] = torch.tensor(c.task_index(self._task_string(obs)), dtype=torch.long)
        return out

    def _renamed(self, obs: Mapping[str, Any]) -> Mapping[str, Any]:
        """`obs` with each input the config's rename_map names found under its source key when its own is
        absent (a frame of the dataset the policy was trained on, or of an env with other names)."""
        moved = {dst: obs[src] for src, dst in self.config.rename_map.items() if dst not in obs and src in obs}
        return {**obs, **moved} if moved else obs

    def _task_string(self, obs: Mapping[str, Any]) -> str:
        """The instruction of a multi-task policy's observation: obs["task"], a string (or a one-string list,
        as LeRobot's batched envs give it)."""
        if TASK_KEY not in obs:
            raise KeyError(
                f"observation lacks {TASK_KEY!r}: this policy is conditioned on its task, one of {self.config.tasks}"
            )
        task = obs[TASK_KEY]
        if isinstance(task, (list, tuple)) and len(task) == 1:
            task = task[0]
        if not isinstance(task, str):
            raise ValueError(f"observation {TASK_KEY!r} must be a string (the instruction), got {task!r}")
        return task

    def _prepare_image(self, key: str, img: Any) -> torch.Tensor:
        ch, h, w = self.config.image_shape  # type: ignore[misc]
        t = torch.as_tensor(np.asarray(img))
        if tuple(t.shape) == (h, w, ch):
            t = t.permute(2, 0, 1)
        elif tuple(t.shape) != (ch, h, w):
            raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {(h, w, ch)} (HWC) or {(ch, h, w)} (CHW)")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"{key} contains NaN or inf")
        return t

    def observe(self, obs: Mapping[str, Any], stamp: float | None = None) -> bool:
        """Add one observation. Out-of-order or duplicate stamps are dropped (returns False)."""
        if stamp is not None and self._last_stamp is not None and stamp <= self._last_stamp:
            self.dropped_observations += 1
            return False
        step = self._prepare(obs)
        if not self._history:
            for _ in range(self.config.n_obs_steps - 1):
                self._history.append(step)
        self._history.append(step)
        self._last_stamp = stamp if stamp is not None else self._last_stamp
        self._cond, self._fresh = None, True
        return True

    def condition(self) -> torch.Tensor:
        """The encoded observation history (computed once per observation, reused by every call)."""
        if self._cond is None:
            if not self._history:
                raise RuntimeError("no observation yet: call observe() first")
            t0 = time.perf_counter()
            batch = {k: torch.stack([h[k] for h in self._history])[None].to(self.device) for k in self._history[0]}
            if STATE_KEY in batch:
                batch[STATE_KEY] = self._norm().normalize(STATE_KEY, batch[STATE_KEY])
            with torch.inference_mode():
                self._cond = self.model.encode(batch)
            self.encodes_total += 1
            self.encode_s_total += time.perf_counter() - t0
        return self._cond

    def _norm(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError("policy has no normalisation stats: train it or load a checkpoint")
        return self.normalizer

    # ------------------------------------------------------------------ denoising
    def _advance(self, budget: int | None) -> tuple[int, torch.Tensor | None]:
        """Spend up to `budget` calls; return (calls, the emitted normalised chunk if one finished)."""
        if not self._fresh and not self.sampler_impl.busy:
            return 0, None
        calls, chunk = self.sampler_impl.advance(self.condition(), budget, self._executed)
        if chunk is None:
            return calls, None
        self._fresh = False
        self.last_nfe = self.call.take_spent()
        if not torch.isfinite(chunk).all():
            self.reset()
            raise NonFiniteError("policy output contains NaN or inf; buffer reset, nothing emitted")
        return calls, chunk

    def _unnormalize(self, chunk: torch.Tensor) -> np.ndarray:
        return self._norm().unnormalize(ACTION_KEY, chunk.float()).cpu().numpy()

    # ------------------------------------------------------------------ streaming surface
    def denoise(self, budget: int | None = None) -> int:
        """Spend at most `budget` network calls (None: until a chunk is ready). Returns calls made.

        When a chunk of Ta clean actions completes, it joins the ready queue (see pop_ready)."""
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        calls, chunk = self._advance(budget)
        if chunk is not None:
            self._ahead, self._executed = len(self._ready), 0
            self._ready.extend(self._unnormalize(chunk))
        return calls

    def pop_ready(self, n: int | None = None) -> np.ndarray:
        """Up to n clean, un-normalised actions (m, action_dim), oldest first; empty if none."""
        m = len(self._ready) if n is None else min(n, len(self._ready))
        out = [self._ready.popleft() for _ in range(m)]
        older = min(m, self._ahead)  # popped actions count as executed (RTI's shift), oldest chunk first
        self._ahead -= older
        self._executed += m - older
        return np.stack(out) if out else np.zeros((0, self.config.action_dim), dtype=np.float32)

    @property
    def num_ready(self) -> int:
        return len(self._ready)

    # ------------------------------------------------------------------ LeRobot-style calls
    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action per call; inference runs only when the queue of Ta actions is empty."""
        self.observe(obs)
        if not self._ready:
            self.denoise(None)
        return self.pop_ready(1)[0]

    def predict_action_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The Ta actions for this observation (for 'sdp' this advances the buffer by one roll)."""
        self.observe(obs)
        self.sampler_impl.abandon()
        _, chunk = self._advance(None)
        assert chunk is not None
        self._ahead, self._executed = 0, self.config.n_action_steps  # the caller executes the whole chunk
        return self._unnormalize(chunk)

    @property
    def executed_since_solution(self) -> int:
        """Actions of the latest solution popped since it was made (the shift of RTI's next guess)."""
        return self._executed

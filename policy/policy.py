"""Public policy API: LeRobot-style calls plus a streaming surface for real-time runtimes.

    policy = Policy.from_pretrained("ckpt/")
    policy.reset(state=q0)
    a = policy.select_action({"observation.state": q})           # one action per control tick

    policy.observe(obs, stamp)          # streaming: feed observations as they arrive,
    policy.denoise(budget=3)            # spend at most `budget` network calls now (resumable),
    policy.pop_ready(n)                 # and take clean actions when they exist.

Samplers: 'ddpm' (N calls per chunk), 'ddim' (K calls), 'sdp' (rolling buffer, about ceil(K/h) calls).
"""

from __future__ import annotations

import collections
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
from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer, NormalizerError
from streamdp.policy.schedule import CLEAN, sampler_grid
from streamdp.policy.streaming import RollingBuffer

ACTION_KEY = "action"


class NonFiniteError(ValueError):
    """NaN or inf in an observation or in the policy output; nothing derived from it is used."""


class _FullSolve:
    """A resumable full-chunk solve (DDPM-N / DDIM-K) so a budget can spread it over ticks."""

    def __init__(self, x: torch.Tensor, grid: list[int]) -> None:
        self.x, self.grid, self.i = x, grid, 0

    @property
    def done(self) -> bool:
        return self.i >= len(self.grid)


class Policy:
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
        self.nfe_total = 0
        self.last_nfe = 0  # network calls spent on the most recent emitted chunk
        self.dropped_observations = 0
        self.extras: dict[str, Any] = {}
        self.reset()

    # ------------------------------------------------------------------ construction / I/O
    def set_stats(self, stats: Mapping[str, Mapping[str, Any]] | Normalizer) -> None:
        norm = stats if isinstance(stats, Normalizer) else Normalizer(stats, self.config.normalization)
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
        policy.extras = extras
        policy.reset()
        return policy

    def save_pretrained(
        self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None, extras: dict[str, Any] | None = None
    ) -> Path:
        if self.normalizer is None:
            raise CheckpointError("cannot save a policy without normalisation stats")
        sd = state_dict if state_dict is not None else self.model.state_dict()
        return save_checkpoint(path, self.config, sd, self.normalizer.to_flat(), {**self.extras, **(extras or {})})

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
        """Forget history and queued actions; re-seed the buffer (from `state` when primer='state')."""
        c = self.config
        self._history: collections.deque[dict[str, torch.Tensor]] = collections.deque(maxlen=c.n_obs_steps)
        self._ready: collections.deque[np.ndarray] = collections.deque()
        self._cond: torch.Tensor | None = None
        self._fresh = False
        self._last_stamp: float | None = None
        self._solve: _FullSolve | None = None
        self._spent = 0
        self.buffer: RollingBuffer | None = None
        if c.sampler == "sdp":
            self.buffer = RollingBuffer(
                self.model.schedule,
                c.horizon,
                c.n_obs_steps,
                c.n_action_steps,
                c.action_dim,
                c.num_inference_steps,
                self.device,
            )
            self.buffer.reset(self._primer(state), generator=self.generator)

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
        return out

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

    def _condition(self) -> torch.Tensor:
        if self._cond is None:
            if not self._history:
                raise RuntimeError("no observation yet: call observe() first")
            batch = {k: torch.stack([h[k] for h in self._history])[None].to(self.device) for k in self._history[0]}
            if STATE_KEY in batch:
                batch[STATE_KEY] = self._norm().normalize(STATE_KEY, batch[STATE_KEY])
            with torch.inference_mode():
                self._cond = self.model.encode(batch)
        return self._cond

    def _norm(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError("policy has no normalisation stats: train it or load a checkpoint")
        return self.normalizer

    # ------------------------------------------------------------------ denoising
    def _call(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.nfe_total += 1
        self._spent += 1
        with torch.inference_mode():
            return self.model.eps(x, k, cond)

    def _advance(self, budget: int | None) -> tuple[int, torch.Tensor | None]:
        """Spend up to `budget` calls; return (calls, the emitted normalised chunk if one finished)."""
        c = self.config
        calls = 0
        mode = "ddim" if c.sampler == "ddim" else "ddpm"
        if c.sampler == "sdp":
            buf = self.buffer
            assert buf is not None
            if not self._fresh:
                return 0, None
            cond = self._condition()
            while not buf.chunk0_clean() and (budget is None or calls < budget):
                eps = self._call(buf.x[None], buf.labels()[None], cond)[0]
                buf.step(eps, mode=mode, generator=self.generator)
                calls += 1
            if not buf.chunk0_clean():
                return calls, None
            chunk = buf.ready_actions()
            buf.roll(generator=self.generator)
        else:
            if self._solve is None:
                if not self._fresh:
                    return 0, None
                n = c.schedule.num_train_steps
                grid = sampler_grid(n, n if c.sampler == "ddpm" else c.num_inference_steps)
                x = torch.randn(1, c.horizon, c.action_dim, generator=self.generator).to(self.device)
                self._solve = _FullSolve(x, grid)
            s = self._solve
            cond = self._condition()
            while not s.done and (budget is None or calls < budget):
                k, k_prev = s.grid[s.i], (s.grid[s.i + 1] if s.i + 1 < len(s.grid) else CLEAN)
                kt = torch.full((1, c.horizon), k, device=self.device)
                eps = self._call(s.x, kt, cond)
                noise = torch.randn(s.x.shape, generator=self.generator).to(self.device)
                s.x = self.model.schedule.step(s.x, eps, kt, torch.full_like(kt, k_prev), mode=mode, noise=noise)
                s.i += 1
                calls += 1
            if not s.done:
                return calls, None
            chunk = s.x[0, c.n_obs_steps - 1 : c.n_obs_steps - 1 + c.n_action_steps]
            self._solve = None
        self._fresh = False
        self.last_nfe, self._spent = self._spent, 0
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
            self._ready.extend(self._unnormalize(chunk))
        return calls

    def pop_ready(self, n: int | None = None) -> np.ndarray:
        """Up to n clean, un-normalised actions (m, action_dim), oldest first; empty if none."""
        m = len(self._ready) if n is None else min(n, len(self._ready))
        out = [self._ready.popleft() for _ in range(m)]
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
        self._solve = None
        _, chunk = self._advance(None)
        assert chunk is not None
        return self._unnormalize(chunk)

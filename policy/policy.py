"""Public policy API: LeRobot-style calls plus a streaming surface for real-time runtimes.

    policy = Policy.from_pretrained("ckpt/")
    policy.reset(state=q0)
    a = policy.select_action({"observation.state": q})           # one action per control tick

    policy.observe(obs, stamp)          # streaming: feed observations as they arrive,
    policy.denoise(budget=3)            # spend at most `budget` network calls now (resumable),
    policy.pop_ready(n)                 # and take clean actions when they exist.

Samplers ("inner loops"; every one runs once per observation):

- 'ddpm' — full chunk on all N train levels (N calls); 'ddim' — full chunk on a K-level grid (K calls);
- 'sdp'  — rolling buffer with a noise ladder (DESIGN.md 5.2; about ceil(K/h) calls);
- 'rti'  — warm start from the previous solution shifted by the executed actions, `rti_steps` calls
  from level k' (DESIGN.md 5.3; full K-call solves on the first observation and on resamples);
- 'sdp_rti' — SDP ladder on the grid [k' ... 0] whose fresh tail starts from the shifted previous solution.

cache='bac' adds block caching of the transformer's residual branches (DESIGN.md 5.4, policy/bac.py):
fewer branch computations per call, the same number of calls. On CUDA, cuda_graph=True replays each
denoiser call from a captured CUDA graph and the SDP roll and BAC residual adds use fused kernels.
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
from streamdp.policy.config import STREAMING_SAMPLERS, ConfigError, PolicyConfig
from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer, NormalizerError
from streamdp.policy.rti import divergence, guess, rti_grid, snap_discrete, warm_start
from streamdp.policy.schedule import CLEAN, sampler_grid
from streamdp.policy.streaming import RollingBuffer

ACTION_KEY = "action"
DEFAULT_RTI_STEPS = 4


class NonFiniteError(ValueError):
    """NaN or inf in an observation or in the policy output; nothing derived from it is used."""


class _Solve:
    """A resumable chunk solve on a descending grid, so a budget can spread it over ticks.

    kind 'full' (DDPM-N / DDIM-K from pure noise) or 'warm' (RTI: from the noised guess, `valid` rows of
    which came from the previous solution rather than the held tail). `key` names the solve kind for BAC.
    """

    def __init__(
        self,
        x: torch.Tensor,
        grid: list[int],
        kind: str = "full",
        key: str = "",
        guess: torch.Tensor | None = None,
        valid: int = 0,
    ) -> None:
        self.x, self.grid, self.i = x, grid, 0
        self.kind, self.key, self.guess, self.valid = kind, key, guess, valid

    @property
    def done(self) -> bool:
        return self.i >= len(self.grid)


_FullSolve = _Solve  # earlier name


def _new_rti_stats() -> dict[str, float]:
    return {"full": 0, "warm": 0, "periodic_resamples": 0, "divergence_resamples": 0, "last_divergence": 0.0}


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
        self.rti_stats = _new_rti_stats()  # cumulative: full / warm solves, resamples, last divergence
        self.cache: Any = None  # attached block cache (BAC runtime or calibration recorder)
        self._cache_owned = False
        self._graph: Any = None
        self._compiled: Any = None  # torch.compile'd denoiser call (config.compile)
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
        policy.check_cache()
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
        """Forget history, queued actions and the warm-start solution; re-seed the buffer (from `state`
        when primer='state'). Counters (nfe_total, rti_stats) and an attached cache stay."""
        c = self.config
        self._history: collections.deque[dict[str, torch.Tensor]] = collections.deque(maxlen=c.n_obs_steps)
        self._ready: collections.deque[np.ndarray] = collections.deque()
        self._cond: torch.Tensor | None = None
        self._fresh = False
        self._last_stamp: float | None = None
        self._solve: _Solve | None = None
        self._spent = 0
        self._solution: torch.Tensor | None = None  # RTI / hybrid: last clean trajectory A (Tp, D), normalised
        self._since_full = 0  # solves since the last full one
        self._ahead = 0  # queued actions older than A's chunk
        self._executed = 0  # actions of A popped (executed) since A was made
        self._stream_open = False  # an SDP solve for the current observation has begun
        self.buffer: RollingBuffer | None = None
        if c.sampler in STREAMING_SAMPLERS:
            grid = self.hybrid_grid() if c.sampler == "sdp_rti" else None
            self.buffer = RollingBuffer(
                self.model.schedule,
                c.horizon,
                c.n_obs_steps,
                c.n_action_steps,
                c.action_dim,
                c.num_inference_steps,
                self.device,
                grid=grid,
            )
            self.buffer.track_x0 = c.sampler == "sdp_rti"
            self.buffer.reset(self._primer(state), generator=self.generator)

    # ------------------------------------------------------------------ sampler settings
    @property
    def step_mode(self) -> str:
        """Per-step update actually used: 'ddpm' (posterior sample) or 'ddim' (eta = 0)."""
        m = self.config.step_mode
        if m != "auto":
            return m
        return "ddim" if self.config.sampler == "ddim" else "ddpm"

    @property
    def rti_start_level(self) -> int:
        """k' in train timesteps: config.rti_start_level, else the calibrated extras['rti'], else ceil(0.3N)-1."""
        c = self.config
        if c.rti_start_level is not None:
            return int(c.rti_start_level)
        cal = self.extras.get("rti", {}) if isinstance(self.extras, dict) else {}
        if "start_level" in cal:
            return min(int(cal["start_level"]), c.schedule.num_train_steps - 1)
        return c.default_rti_start_level

    @property
    def rti_steps(self) -> int:
        """Calls of a warm solve: config.rti_steps, else the calibrated extras['rti']['steps'], else 4."""
        if self.config.rti_steps is not None:
            return int(self.config.rti_steps)
        cal = self.extras.get("rti", {}) if isinstance(self.extras, dict) else {}
        return int(cal.get("steps", DEFAULT_RTI_STEPS))

    def full_grid(self) -> list[int]:
        """Grid of a full solve: all N train levels for 'ddpm', else the configured K levels."""
        n = self.config.schedule.num_train_steps
        return sampler_grid(n, n if self.config.sampler == "ddpm" else self.config.num_inference_steps)

    def warm_grid(self) -> list[int]:
        """Grid of an RTI warm solve: [k' ... clean] in min(rti_steps, k'+1) calls."""
        return rti_grid(self.rti_start_level, self.rti_steps)

    def hybrid_grid(self) -> list[int]:
        """Grid of the sdp_rti ladder: [k' ... clean] with the configured K-level grid's spacing (at least h)."""
        c = self.config
        k0, n = self.rti_start_level, c.schedule.num_train_steps
        levels = min(k0 + 1, max(c.num_chunks, round(c.num_inference_steps * (k0 + 1) / n)))
        if levels < c.num_chunks:
            raise ConfigError(
                f"sampler 'sdp_rti' needs at least h={c.num_chunks} grid levels below k'={k0}: "
                f"raise rti_start_level to >= {c.num_chunks - 1}"
            )
        return rti_grid(k0, levels)

    def solve_key(self, kind: str) -> str:
        """Name of a solve kind, used to look up its BAC schedule: the step structure it implies."""
        m = self.step_mode
        if kind == "full":
            return f"full-{m}-K{len(self.full_grid())}"
        if kind == "warm":
            return f"warm-{m}-k{self.rti_start_level}-S{len(self.warm_grid())}"
        assert self.buffer is not None
        if self.config.sampler == "sdp_rti":
            return f"sdp_rti-{m}-k{self.rti_start_level}-K{self.buffer.K}"
        return f"sdp-{m}-K{self.buffer.K}"

    # ------------------------------------------------------------------ block cache
    def attach_cache(self, cache: Any, owned: bool = False) -> None:
        """Route every transformer residual branch through `cache.hook` (a BAC BlockCache or a recorder)."""
        branches = getattr(self.model.denoiser, "branches", None)
        if branches is None:
            raise ConfigError("block caching needs the transformer denoiser (it has residual branches)")
        self.detach_cache()
        bs = branches()
        cache.bind(bs)
        for b in bs:
            b.cache_hook = cache.hook
        self.cache, self._cache_owned = cache, owned
        self._graph = None

    def detach_cache(self) -> None:
        if self.cache is None:
            return
        for b in self.model.denoiser.branches():
            b.cache_hook = None
        self.cache, self._cache_owned = None, False
        self._graph = None

    def solve_kinds(self) -> list[str]:
        """Kinds of solve this sampler runs (each needs its own BAC schedule)."""
        return {
            "ddpm": ["full"],
            "ddim": ["full"],
            "sdp": ["sdp"],
            "rti": ["full", "warm"],
            "sdp_rti": ["full", "sdp"],
        }[self.config.sampler]

    def check_cache(self) -> None:
        """With cache='bac', fail now (not at the first observation) if the checkpoint lacks a schedule
        for a solve kind this sampler runs. from_pretrained calls it."""
        if self.config.cache != "bac":
            return
        from streamdp.policy.bac import BACScheduleError, schedules_from_extras

        have = schedules_from_extras(self.extras)
        missing = [self.solve_key(k) for k in self.solve_kinds() if self.solve_key(k) not in have]
        if missing:
            raise BACScheduleError(
                f"no BAC schedule for solve kind {missing[0]!r} in this checkpoint (have {sorted(have)}); "
                f"calibrate for the sampler you run: `streamdp-calibrate-bac checkpoint=<dir> dataset=<...> "
                f"sampler={self.config.sampler}` with the same grid/RTI settings"
            )

    def _begin_solve(self, kind: str) -> None:
        c = self.config
        if c.cache == "bac" and self.cache is None:
            from streamdp.policy.bac import BlockCache

            self.attach_cache(BlockCache.from_extras(self.extras), owned=True)
        if self.cache is not None:
            self.cache.begin_solve(self.solve_key(kind))

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
            if self._use_graph():
                eps = self._graph_call(x, k, cond)
            elif self.config.compile and self.cache is None:
                if self._compiled is None:
                    self._compiled = torch.compile(self.model.eps, dynamic=False)
                eps = self._compiled(x, k, cond)
            else:
                eps = self.model.eps(x, k, cond)
        if self.cache is not None:
            self.cache.end_step()
        return eps

    def _use_graph(self) -> bool:
        return (
            self.config.cuda_graph
            and self.device.type == "cuda"
            and torch.cuda.is_available()
            and (self.cache is None or getattr(self.cache, "graph_safe", False))
        )

    def _graph_call(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Replay the denoiser call from a CUDA graph (one per BAC recompute pattern)."""
        if self._graph is None:
            from streamdp.kernels.cuda_graph import GraphedCall

            self._graph = GraphedCall(self.model.eps)
        cache = self.cache
        variant = cache.pattern() if cache is not None else None
        if cache is not None:
            cache.counting = False  # hooks run only while capturing; replays are accounted below
        try:
            eps = self._graph(x, k, cond, variant=variant)
        finally:
            if cache is not None:
                cache.counting = True
        if cache is not None:
            cache.account(variant)
        return eps

    def _new_full_solve(self) -> _Solve:
        c = self.config
        x = torch.randn(1, c.horizon, c.action_dim, generator=self.generator).to(self.device)
        if c.sampler in ("rti", "sdp_rti"):
            self.rti_stats["full"] += 1
        self._begin_solve("full")
        return _Solve(x, self.full_grid(), "full")

    def _new_chunk_solve(self) -> _Solve:
        """ddpm / ddim: always full. rti: full on the first observation and on periodic resamples, else warm."""
        c = self.config
        if c.sampler != "rti" or self._solution is None:
            return self._new_full_solve()
        if c.rti_full_every > 0 and self._since_full + 1 >= c.rti_full_every:
            self.rti_stats["periodic_resamples"] += 1
            return self._new_full_solve()
        shift = self._executed
        valid = c.horizon - shift
        if valid <= 0:  # everything planned has been executed: nothing left to warm-start from
            return self._new_full_solve()
        g = guess(self._solution, shift, c.discrete_action_dims)
        k0 = self.rti_start_level
        noise = torch.randn(1, c.horizon, c.action_dim, generator=self.generator).to(self.device)
        x = warm_start(self.model.schedule, g[None], noise, k0)
        self.rti_stats["warm"] += 1
        self._begin_solve("warm")
        return _Solve(x, self.warm_grid(), "warm", guess=g, valid=valid)

    def _run_solve(self, s: _Solve, cond: torch.Tensor, budget: int | None) -> int:
        """Step `s` down its grid, at most `budget` calls; returns the calls made."""
        c, mode = self.config, self.step_mode
        calls = 0
        while not s.done and (budget is None or calls < budget):
            k, k_prev = s.grid[s.i], (s.grid[s.i + 1] if s.i + 1 < len(s.grid) else CLEAN)
            kt = torch.full((1, c.horizon), k, device=self.device)
            eps = self._call(s.x, kt, cond)
            noise = torch.randn(s.x.shape, generator=self.generator).to(self.device)
            s.x = self.model.schedule.step(s.x, eps, kt, torch.full_like(kt, k_prev), mode=mode, noise=noise)
            s.i += 1
            calls += 1
        return calls

    @staticmethod
    def _left(budget: int | None, calls: int) -> int | None:
        return None if budget is None else budget - calls

    def _diverged(self, solution: torch.Tensor, g: torch.Tensor, valid: int) -> bool:
        c = self.config
        d = divergence(solution, g, valid, c.discrete_action_dims)
        self.rti_stats["last_divergence"] = d
        if c.rti_divergence > 0 and d > c.rti_divergence:
            self.rti_stats["divergence_resamples"] += 1
            return True
        return False

    def _advance(self, budget: int | None) -> tuple[int, torch.Tensor | None]:
        """Spend up to `budget` calls; return (calls, the emitted normalised chunk if one finished)."""
        if self.config.sampler in STREAMING_SAMPLERS:
            calls, chunk = self._advance_stream(budget)
        else:
            calls, chunk = self._advance_chunk(budget)
        if chunk is None:
            return calls, None
        self._fresh = False
        self.last_nfe, self._spent = self._spent, 0
        if not torch.isfinite(chunk).all():
            self.reset()
            raise NonFiniteError("policy output contains NaN or inf; buffer reset, nothing emitted")
        return calls, chunk

    def _advance_chunk(self, budget: int | None) -> tuple[int, torch.Tensor | None]:
        """ddpm / ddim / rti: one resumable solve per observation (rti: plus a full one on divergence)."""
        c = self.config
        if self._solve is None:
            if not self._fresh:
                return 0, None
            self._solve = self._new_chunk_solve()
        cond = self._condition()
        calls = 0
        while True:
            s = self._solve
            calls += self._run_solve(s, cond, self._left(budget, calls))
            if not s.done:
                return calls, None
            if s.kind == "warm":
                assert s.guess is not None
                if self._diverged(s.x[0], s.guess, s.valid):
                    self._solve = self._new_full_solve()
                    continue
            break
        self._solve = None
        x = s.x[0]
        if c.sampler == "rti":
            x = snap_discrete(x, c.discrete_action_dims)
            self._solution = x.clone()
            self._since_full = 0 if s.kind == "full" else self._since_full + 1
        return calls, x[c.n_obs_steps - 1 : c.n_obs_steps - 1 + c.n_action_steps]

    def _advance_stream(self, budget: int | None) -> tuple[int, torch.Tensor | None]:
        """sdp / sdp_rti: denoise the rolling buffer until chunk 0 is clean, emit, roll."""
        c = self.config
        buf = self.buffer
        assert buf is not None
        if not self._fresh:
            return 0, None
        cond = self._condition()
        calls = 0
        hybrid = c.sampler == "sdp_rti"
        if hybrid and self._solve is None and not self._stream_open:
            if self._solution is None:
                self._solve = self._new_full_solve()
            elif c.rti_full_every > 0 and self._since_full + 1 >= c.rti_full_every:
                self.rti_stats["periodic_resamples"] += 1
                self._solve = self._new_full_solve()
        if hybrid and self._solve is not None:
            return self._finish_hybrid_full(cond, budget, calls)
        if not self._stream_open:
            self._begin_solve("sdp")
            self._stream_open = True
        mode = self.step_mode
        fused = c.sampler == "sdp" and buf.x.is_cuda
        while not buf.chunk0_clean() and (budget is None or calls < budget):
            eps = self._call(buf.x[None], buf.labels()[None], cond)[0]
            calls += 1
            if fused and buf.steps_until_ready() == 1:  # last call: step + emit + roll in one kernel
                self._stream_open = False
                return calls, buf.step_and_roll(eps, mode=mode, generator=self.generator)
            buf.step(eps, mode=mode, generator=self.generator)
        if not buf.chunk0_clean():
            return calls, None
        self._stream_open = False
        chunk = buf.ready_actions()
        if not hybrid:
            buf.roll(generator=self.generator)
            return calls, chunk
        # Hybrid: the whole-horizon clean estimate is the new solution; its shifted tail seeds the roll.
        disc, ta, to = c.discrete_action_dims, c.n_action_steps, c.n_obs_steps
        solution = snap_discrete(buf.x0_hat, disc)
        assert self._solution is not None
        prior = guess(self._solution, ta, disc)
        window = slice(to - 1, to - 1 + ta)
        if self._diverged(solution[window], prior[window], ta):
            self._solve = self._new_full_solve()
            return self._finish_hybrid_full(cond, budget, calls)
        buf.roll(generator=self.generator, fresh=guess(solution, ta, disc)[buf.keep_end - ta :])
        self._solution = solution
        self._since_full += 1
        return calls, snap_discrete(chunk, disc)

    def _finish_hybrid_full(
        self, cond: torch.Tensor, budget: int | None, calls: int
    ) -> tuple[int, torch.Tensor | None]:
        """sdp_rti full solve: emit its chunk and reseed the buffer from it, shifted by Ta."""
        c = self.config
        s = self._solve
        assert s is not None and self.buffer is not None
        calls += self._run_solve(s, cond, self._left(budget, calls))
        if not s.done:
            return calls, None
        self._solve = None
        solution = snap_discrete(s.x[0], c.discrete_action_dims)
        self.buffer.reset(guess(solution, c.n_action_steps, c.discrete_action_dims), generator=self.generator)
        self._solution = solution.clone()
        self._since_full = 0
        return calls, solution[c.n_obs_steps - 1 : c.n_obs_steps - 1 + c.n_action_steps]

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
        self._solve = None
        _, chunk = self._advance(None)
        assert chunk is not None
        self._ahead, self._executed = 0, self.config.n_action_steps  # the caller executes the whole chunk
        return self._unnormalize(chunk)

    @property
    def executed_since_solution(self) -> int:
        """Actions of the latest solution popped since it was made (the shift of RTI's next guess)."""
        return self._executed

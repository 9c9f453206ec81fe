"""Streaming Diffusion Policy (SDP) rolling buffer and its training labels: pure tensor logic, no network.

The buffer holds Tp action slots, each at its own position on a K-level sampler grid (-1 = clean).
Near slots are cleaner than far ones (the "ladder"). Per observation the caller runs the denoiser and
calls :meth:`RollingBuffer.step` until chunk 0 is clean (about ceil(K/h) calls), takes the Ta
executable actions, and rolls the buffer forward by one chunk. See docs/algorithms.md (SDP).
"""

from __future__ import annotations

import torch

from streamdp.policy.config import PolicyConfig, check_streaming_horizons, num_chunks
from streamdp.policy.schedule import CLEAN, NoiseSchedule, sampler_grid


def chunk_index(tp: int, to: int, ta: int) -> list[int]:
    """Chunk of every slot: the first To slots are chunk 0; a leftover tail joins chunk h-1."""
    h = num_chunks(tp, to, ta)
    return [min(max((i - to + 1) // ta, 0), h - 1) for i in range(tp)]


def ladder(Tp: int, To: int, Ta: int, N: int) -> list[int]:  # noqa: N803 - the paper's symbols
    """Initial grid position of every slot: chunk c starts at floor(N(c+1)/h) - 1.

    With the full train grid (K = N) positions are train timesteps. Raises for h < 2.
    """
    check_streaming_horizons(Tp, To, Ta)
    h = num_chunks(Tp, To, Ta)
    return [(N * (c + 1)) // h - 1 for c in chunk_index(Tp, To, Ta)]


def visited_labels(schedule: NoiseSchedule, tp: int, to: int, ta: int, grid: list[int]) -> torch.Tensor:
    """Every distinct per-slot label pattern (P, Tp) a :class:`RollingBuffer` on `grid` feeds the network.

    Runs the real buffer (zero network output, positions only matter) from its initial ladder through
    observations until its state at the start of an observation repeats: with K not a multiple of h the
    calls per observation cycle (e.g. 5, 5, 6 for K=16, h=3) and so do the patterns; every phase of the
    cycle is collected. Deterministic: no random state is touched.
    """
    buf = RollingBuffer(schedule, tp, to, ta, 1, len(grid), grid=grid)
    g = torch.Generator().manual_seed(0)
    starts: set[tuple[int, ...]] = set()
    patterns: dict[tuple[int, ...], None] = {}
    while (start := tuple(buf.pos.tolist())) not in starts:
        starts.add(start)
        while not buf.chunk0_clean():
            patterns[tuple(buf.labels().tolist())] = None
            buf.step(torch.zeros(tp, 1), generator=g)
        buf.roll(generator=g)
    return torch.tensor(list(patterns))


def training_label_patterns(config: PolicyConfig) -> torch.Tensor | None:
    """The label patterns SDP training samples from: those the configured sampler's buffer visits.

    The K-level SDP grid (num_inference_steps) always; with sampler='sdp_rti' also the hybrid's truncated
    ladder on [k' ... clean]. None when the horizons give fewer than two chunks (no streaming).
    """
    from streamdp.policy.samplers.settings import SolveSettings  # settings imports nothing from here

    if num_chunks(config.horizon, config.n_obs_steps, config.n_action_steps) < 2:
        return None
    schedule = NoiseSchedule(config.schedule)
    dims = (config.horizon, config.n_obs_steps, config.n_action_steps)
    grids = [SolveSettings(config.replace(sampler="sdp")).stream_grid()]
    if config.sampler == "sdp_rti":
        grids.append(SolveSettings(config).stream_grid())
    return torch.unique(torch.cat([visited_labels(schedule, *dims, grid) for grid in grids]), dim=0)


def training_labels(
    batch: int,
    num_train_steps: int,
    patterns: torch.Tensor | None,
    ladder_prob: float,
    tp: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-sample, per-slot train timesteps (B, Tp) for the SDP objective.

    With probability ladder_prob: one of the label `patterns` the inference buffer really visits
    (:func:`training_label_patterns`), uniformly; otherwise one level for all slots (plain DP training,
    which also covers the full-chunk solves of DDPM/DDIM/RTI).
    """
    uniform = torch.randint(0, num_train_steps, (batch, 1), generator=generator).expand(batch, tp)
    if patterns is None or ladder_prob <= 0:
        return uniform.clone().to(device)
    pick = torch.randint(0, patterns.shape[0], (batch,), generator=generator)
    use_ladder = torch.rand(batch, 1, generator=generator) < ladder_prob
    return torch.where(use_ladder, patterns[pick], uniform).to(device)


def shift_trajectory(traj: torch.Tensor, shift: int) -> torch.Tensor:
    """traj (T, D) moved left by `shift` rows; the tail repeats the last row (a 'hold' guess)."""
    t = traj.shape[0]
    shift = max(0, int(shift))
    if shift == 0:
        return traj.clone()
    if shift >= t:
        return traj[-1:].expand(t, -1).clone()
    return torch.cat([traj[shift:], traj[-1:].expand(shift, -1)], dim=0)


class RollingBuffer:
    """State of the SDP buffer for one robot (batch 1): actions (Tp, D) and grid positions (Tp,).

    `grid` (descending train timesteps) replaces the default K-level grid, e.g. the truncated grid
    [k' ... 0] of the SDP/RTI hybrid, whose fresh tail then enters at k' instead of N-1.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        tp: int,
        to: int,
        ta: int,
        action_dim: int,
        grid_size: int,
        device: torch.device | str = "cpu",
        grid: list[int] | None = None,
    ) -> None:
        check_streaming_horizons(tp, to, ta)
        self.schedule, self.tp, self.to, self.ta, self.dim = schedule, tp, to, ta, action_dim
        self.h = num_chunks(tp, to, ta)
        self.device = torch.device(device)
        if grid is None:
            grid = sampler_grid(schedule.num_train_steps, grid_size)
        elif any(a <= b for a, b in zip(grid[:-1], grid[1:])) or not grid or grid[-1] < 0:
            raise ValueError(f"grid must be strictly descending non-negative train timesteps, got {grid}")
        grid_size = len(grid)
        # grid_asc[p] = train timestep of grid position p (0 = least noisy).
        self.grid_asc = torch.tensor(list(grid)[::-1], device=self.device)
        self.K = grid_size
        self.chunk = torch.tensor(chunk_index(tp, to, ta), device=self.device)
        self.initial_pos = torch.tensor(ladder(tp, to, ta, grid_size), device=self.device)
        # Slots kept by a roll: everything after the first Ta, up to the end of the last whole chunk.
        self.keep_end = to - 1 + self.h * ta
        self.x = torch.zeros(tp, action_dim, device=self.device)
        self.pos = self.initial_pos.clone()
        # With track_x0 (the hybrid needs it), step() keeps the clean estimate of every slot from the
        # latest network call: predicted x0 for noisy slots, the slot itself once clean.
        self.track_x0 = False
        self.x0_hat = self.x.clone()

    # -- state ---------------------------------------------------------------------------------
    def labels(self) -> torch.Tensor:
        """Train timesteps of every slot (-1 for clean), shape (Tp,)."""
        safe = self.grid_asc[self.pos.clamp_min(0)]
        return torch.where(self.pos < 0, torch.full_like(safe, CLEAN), safe)

    def chunk0_clean(self) -> bool:
        return bool((self.pos[self.chunk == 0] < 0).all())

    def steps_until_ready(self) -> int:
        """Network calls still needed before chunk 0 is clean."""
        return int(self.pos[self.chunk == 0].max().clamp_min(-1)) + 1

    # -- transitions -----------------------------------------------------------------------------
    def reset(self, primer: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Ladder labels; contents = primer (Tp, D) (zeros if None) forward-noised to each slot's level."""
        self.pos = self.initial_pos.clone()
        x0 = torch.zeros(self.tp, self.dim, device=self.device) if primer is None else primer.to(self.device)
        noise = torch.randn(self.tp, self.dim, generator=generator, device="cpu").to(self.device)
        self.x = self.schedule.add_noise(x0[None], noise[None], self.labels()[None])[0]
        self.x0_hat = x0.clone()

    def step(self, eps: torch.Tensor, mode: str = "ddpm", generator: torch.Generator | None = None) -> None:
        """One denoiser output (Tp, D) moves every noisy slot one grid position down."""
        k = self.labels()
        new_pos = (self.pos - 1).clamp_min(-1)
        safe = self.grid_asc[new_pos.clamp_min(0)]
        k_prev = torch.where(new_pos < 0, torch.full_like(safe, CLEAN), safe)
        noise = torch.randn(self.tp, self.dim, generator=generator, device="cpu").to(self.device)
        if self.track_x0:
            x0 = self.schedule.predict_x0(self.x[None], eps[None], torch.where(k == CLEAN, 0, k)[None])[0]
            self.x0_hat = torch.where((k != CLEAN)[:, None], x0.to(self.x.dtype), self.x)
        self.x = self.schedule.step(self.x[None], eps[None], k[None], k_prev[None], mode=mode, noise=noise[None])[0]
        self.pos = new_pos

    def _next_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        new_pos = (self.pos - 1).clamp_min(-1)
        safe = self.grid_asc[new_pos.clamp_min(0)]
        return new_pos, torch.where(new_pos < 0, torch.full_like(safe, CLEAN), safe)

    def step_and_roll(
        self,
        eps: torch.Tensor,
        mode: str = "ddpm",
        generator: torch.Generator | None = None,
        fresh: torch.Tensor | None = None,
        fused: bool | None = None,
    ) -> torch.Tensor:
        """The last step of an observation, the emission and the roll: returns the Ta ready actions.

        Same generator draws and semantics as step() + ready_actions() + roll(). With `fused` (default:
        on CUDA tensors) one kernel (streamdp.kernels.roll_step) does the step, the shift, the fresh
        tail and the past re-noise in one pass; otherwise the three calls run as written. The fused pass
        does not update x0_hat (the hybrid, which needs it, runs unfused).
        """
        if fused is None:
            fused = self.x.is_cuda
        if not fused:
            self.step(eps, mode=mode, generator=generator)
            ready = self.ready_actions()
            self.roll(generator=generator, fresh=fresh)
            return ready
        from streamdp.kernels.roll_step import roll_step  # lazy: importing triton is not free

        k = self.labels()
        new_pos, k_prev = self._next_labels()
        if not bool((new_pos[self.chunk == 0] < 0).all()):
            raise RuntimeError("step_and_roll needs chunk 0 to become clean with this step")
        coef = self.schedule.step_coefficients(k, k_prev, mode).to(self.device, torch.float32)
        z_step = torch.randn(self.tp, self.dim, generator=generator, device="cpu").to(self.device)
        keep_len = self.keep_end - self.ta
        n_fresh = self.tp - keep_len
        z_fresh = torch.randn(n_fresh, self.dim, generator=generator, device="cpu").to(self.device)
        # Labels after the roll (tiny integer work, host side).
        kept_pos = new_pos[self.ta : self.keep_end]
        pos = torch.cat([kept_pos, torch.full((n_fresh,), self.K - 1, device=self.device, dtype=kept_pos.dtype)])
        n_past = self.to - 1
        if n_past:
            pos[:n_past] = pos[n_past]
        safe = self.grid_asc[pos.clamp_min(0)]
        labels = torch.where(pos < 0, torch.full_like(safe, CLEAN), safe)
        ab_past = self.schedule.alpha_bar(labels[:1], torch.float64)[0]
        ab_top = self.schedule.alpha_bar(self.grid_asc[-1:], torch.float64)[0]
        z_past = torch.randn(n_past, self.dim, generator=generator, device="cpu").to(self.device)
        if fresh is None:
            g, a_f, b_f = torch.zeros(n_fresh, self.dim, device=self.device), 0.0, 1.0
        else:
            g, a_f, b_f = fresh.to(self.device), float(ab_top.sqrt()), float((1 - ab_top).sqrt())
        new_x, ready = roll_step(
            self.x,
            eps,
            coef,
            z_step,
            z_fresh,
            z_past,
            g,
            shift=self.ta,
            keep_len=keep_len,
            n_past=n_past,
            emit_start=self.to - 1,
            n_emit=self.ta,
            past_coef=(float(ab_past.sqrt()), float((1 - ab_past).sqrt())),
            fresh_coef=(a_f, b_f),
            clip=self.schedule.cfg.clip_range if self.schedule.cfg.clip_sample else None,
        )
        self.x, self.pos = new_x, pos
        return ready

    def ready_actions(self) -> torch.Tensor:
        """The Ta executable slots To-1 .. To-1+Ta-1 (normalised); chunk 0 must be clean."""
        if not self.chunk0_clean():
            raise RuntimeError("chunk 0 is not clean yet: keep denoising before emitting")
        return self.x[self.to - 1 : self.to - 1 + self.ta].clone()

    def roll(self, generator: torch.Generator | None = None, fresh: torch.Tensor | None = None) -> None:
        """Drop the first Ta slots and any leftover tail, append fresh slots at the top grid level,
        and really re-noise the first To-1 (past) slots to the level of slot To-1.

        `fresh` (optional, (n_fresh, D) clean guess) lets a hybrid runtime initialise the new tail
        from a previous solution instead of pure noise; it is forward-noised to the top level.
        """
        kept_x = self.x[self.ta : self.keep_end]
        kept_pos = self.pos[self.ta : self.keep_end]
        n_fresh = self.tp - kept_x.shape[0]
        top = self.K - 1
        noise = torch.randn(n_fresh, self.dim, generator=generator, device="cpu").to(self.device)
        if fresh is None:
            fresh_x = noise
        else:
            k_top = torch.full((1, n_fresh), int(self.grid_asc[top]), device=self.device)
            fresh_x = self.schedule.add_noise(fresh.to(self.device)[None], noise[None], k_top)[0]
        self.x = torch.cat([kept_x, fresh_x], dim=0)
        self.pos = torch.cat([kept_pos, torch.full((n_fresh,), top, device=self.device, dtype=kept_pos.dtype)])
        if self.to > 1:
            past = slice(0, self.to - 1)
            self.pos[past] = self.pos[self.to - 1]
            k = self.labels()[past]
            eps = torch.randn(self.to - 1, self.dim, generator=generator, device="cpu").to(self.device)
            # Past slots are clean executed actions: forward-noise them to their new level.
            self.x[past] = self.schedule.add_noise(self.x[past][None], eps[None], k[None])[0]

"""Noise schedule with per-slot timesteps.

Every operation takes a label tensor shaped like the sample's leading dims (B, Tp): each buffer slot
can sit at its own noise level. Labels are in train-timestep units, with -1 meaning "clean". Steps may
jump between non-adjacent levels (k -> k_prev < k), which is what coarse grids (DDIM-style subsets)
and streaming buffers need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CLEAN = -1


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """squaredcos_cap_v2 (Nichol & Dhariwal), float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_steps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    clip_range: float = 1.0

    def __post_init__(self) -> None:
        if self.num_train_steps < 2:
            raise ValueError(f"schedule.num_train_steps must be >= 2, got {self.num_train_steps}")
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(
                f"schedule.beta_schedule must be 'squaredcos_cap_v2' or 'linear', got {self.beta_schedule!r}"
            )
        if self.clip_range <= 0:
            raise ValueError(f"schedule.clip_range must be > 0, got {self.clip_range}")


class NoiseSchedule:
    """epsilon-prediction diffusion schedule; all methods accept per-slot labels."""

    def __init__(self, cfg: ScheduleConfig | None = None) -> None:
        self.cfg = cfg or ScheduleConfig()
        n = self.cfg.num_train_steps
        betas = cosine_betas(n) if self.cfg.beta_schedule == "squaredcos_cap_v2" else linear_betas(n)
        acp = torch.cumprod(1.0 - betas, dim=0)
        # Index 0 of the padded table is the clean level (-1): alpha_bar = 1.
        self._acp = torch.cat([torch.ones(1, dtype=torch.float64), acp])
        self.betas = betas

    @property
    def num_train_steps(self) -> int:
        return self.cfg.num_train_steps

    def alpha_bar(self, k: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """alpha_bar at labels k (-1 -> 1.0), same shape as k."""
        k = torch.as_tensor(k)
        if k.numel() and (int(k.min()) < CLEAN or int(k.max()) >= self.num_train_steps):
            raise ValueError(
                f"noise labels must lie in [-1, {self.num_train_steps - 1}], got [{int(k.min())}, {int(k.max())}]"
            )
        table = self._acp.to(device=k.device)
        return table[(k + 1).long()].to(dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Forward-noise x0 (B, T, D) to per-slot levels k (B, T); label -1 returns x0 unchanged."""
        ab = self.alpha_bar(k, torch.float64)[..., None]
        out = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
        return out.to(x0.dtype)

    def predict_x0(self, x_k: torch.Tensor, eps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar(k, torch.float64)[..., None]
        x0 = (x_k.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
        if self.cfg.clip_sample:
            x0 = x0.clamp(-self.cfg.clip_range, self.cfg.clip_range)
        return x0

    def step_coefficients(self, k: torch.Tensor, k_prev: torch.Tensor, mode: str = "ddpm") -> torch.Tensor:
        """Per-slot coefficients (5, *k.shape) of one step k -> k_prev as an affine update, float64:

            x0  = clip((x - s1 * eps) * s2)
            out = c0 * x0 + ck * x + sigma * z

        'ddpm' samples the posterior q(x_{k_prev} | x_k, x0) (with a = alpha_bar[k] / alpha_bar[k_prev]
        the jump is one Gaussian step of variance 1 - a, so the one-step formula holds for any
        k_prev < k); 'ddim' is the eta = 0 update. Clean slots (k == -1) get the identity. This is the
        only place the DDPM/DDIM step maths lives: :meth:`step` and the fused SDP kernel
        (streamdp.kernels.roll_step) both consume these coefficients.
        """
        k = torch.as_tensor(k)
        k_prev = torch.as_tensor(k_prev, device=k.device).expand_as(k)
        clean = k == CLEAN
        k_safe = torch.where(clean, torch.zeros_like(k), k)
        kp_safe = torch.where(clean, torch.full_like(k_prev, CLEAN), k_prev)
        ab = self.alpha_bar(k_safe, torch.float64)
        ab_prev = self.alpha_bar(kp_safe, torch.float64)
        s1, s2 = (1 - ab).sqrt(), 1 / ab.sqrt()
        if mode == "ddim":
            ck = ((1 - ab_prev) / (1 - ab)).sqrt()
            c0 = ab_prev.sqrt() - ck * ab.sqrt()
            sigma = torch.zeros_like(ab)
        elif mode == "ddpm":
            a = ab / ab_prev
            denom = (1 - ab).clamp_min(1e-20)
            c0 = ab_prev.sqrt() * (1 - a) / denom
            ck = a.sqrt() * (1 - ab_prev) / denom
            sigma = ((1 - a) * (1 - ab_prev) / denom).sqrt()
        else:
            raise ValueError(f"step mode must be 'ddpm' or 'ddim', got {mode!r}")
        one, zero = torch.ones_like(ab), torch.zeros_like(ab)
        return torch.stack(
            [
                torch.where(clean, zero, s1),
                torch.where(clean, one, s2),
                torch.where(clean, zero, c0),
                torch.where(clean, one, ck),
                torch.where(clean, zero, sigma),
            ]
        )

    def posterior(
        self, x_k: torch.Tensor, x0: torch.Tensor, k: torch.Tensor, k_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{k_prev} | x_k, x0) for any k_prev < k (float64)."""
        _, _, c0, ck, sigma = self.step_coefficients(k, k_prev, "ddpm")[..., None]
        return c0 * x0.double() + ck * x_k.double(), sigma**2

    def step(
        self,
        x_k: torch.Tensor,
        eps: torch.Tensor,
        k: torch.Tensor,
        k_prev: torch.Tensor,
        mode: str = "ddpm",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Move every slot from level k to k_prev (< k). Slots with k == -1 are returned untouched.

        mode 'ddpm' samples the posterior; 'ddim' is the deterministic (eta = 0) update.
        """
        k = torch.as_tensor(k, device=x_k.device).expand(x_k.shape[:-1])
        k_prev = torch.as_tensor(k_prev, device=x_k.device).expand(x_k.shape[:-1])
        clean = k == CLEAN
        if bool(((k_prev >= k) & ~clean).any()):
            raise ValueError("step needs k_prev < k for every noisy slot")
        s1, s2, c0, ck, sigma = self.step_coefficients(k, k_prev, mode)[..., None]
        x0 = (x_k.double() - s1 * eps.double()) * s2
        if self.cfg.clip_sample:
            x0 = x0.clamp(-self.cfg.clip_range, self.cfg.clip_range)
        out = c0 * x0 + ck * x_k.double()
        if mode == "ddpm":
            if noise is None:
                noise = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
            out = out + sigma * noise.double()
        out = out.to(x_k.dtype)
        return torch.where(clean[..., None], x_k, out)


def sampler_grid(num_train_steps: int, num_levels: int) -> list[int]:
    """Descending train timesteps of a K-level sampler grid ("trailing" spacing).

    K == N gives every train step (DDPM-N). K < N gives an evenly spaced subset that still starts at
    N-1, so a fresh Gaussian slot is labelled with the level it really has; the last grid level then
    steps straight to clean.
    """
    if not 1 <= num_levels <= num_train_steps:
        raise ValueError(f"grid size must lie in [1, {num_train_steps}], got {num_levels}")
    step = num_train_steps / num_levels
    return [int(round(num_train_steps - i * step)) - 1 for i in range(num_levels)]

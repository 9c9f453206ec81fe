"""The trainable network: observation encoder + denoiser + noise schedule, and the SDP objective."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from streamdp.policy.config import PolicyConfig
from streamdp.policy.encoders import ObservationEncoder
from streamdp.policy.nets import ConditionalUnet1D, TransformerDenoiser
from streamdp.policy.samplers.rolling_buffer import training_label_patterns, training_labels
from streamdp.policy.schedule import NoiseSchedule


class DiffusionModel(nn.Module):
    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = NoiseSchedule(cfg.schedule)
        self.encoder = ObservationEncoder(cfg)
        f = self.encoder.out_dim
        if cfg.denoiser == "unet":
            self.denoiser: nn.Module = ConditionalUnet1D(cfg.action_dim, f * cfg.n_obs_steps, cfg.horizon, cfg.unet)
        else:
            self.denoiser = TransformerDenoiser(cfg.action_dim, f, cfg.n_obs_steps, cfg.horizon, cfg.transformer)
        # Label patterns of SDP training: exactly what the configured sampler's buffer visits (not saved).
        self.label_patterns = training_label_patterns(cfg)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised observation history -> condition, computed once per observation."""
        return self.encoder(obs)

    def eps(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network call (the NFE unit)."""
        return self.denoiser(x, k, cond)

    def compute_loss(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """epsilon-MSE with per-slot labels: a visited SDP pattern (p = sdp_ladder_prob) or one shared level."""
        total, count = self.loss_terms(obs, actions, action_is_pad, generator=generator)
        return total / count

    def sample_labels_and_noise(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training labels (B, Tp) and Gaussian noise (B, Tp, Da), drawn on the CPU from `generator`."""
        cfg = self.cfg
        k = training_labels(
            batch,
            cfg.schedule.num_train_steps,
            self.label_patterns,
            cfg.sdp_ladder_prob,
            cfg.horizon,
            generator=generator,
            device=device,
        )
        noise = torch.randn((batch, cfg.horizon, cfg.action_dim), generator=generator, device="cpu").to(device)
        return k, noise

    def loss_terms(
        self,
        obs: dict[str, torch.Tensor],
        actions: torch.Tensor,
        action_is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        k: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed squared error over unpadded entries, number of those entries): loss = sum / count.

        Split so that data-parallel training can normalise by the count over the *global* batch, and
        `k` / `noise` may be given (e.g. each rank's slice of labels and noise drawn for the global batch).
        """
        if k is None or noise is None:
            k, noise = self.sample_labels_and_noise(actions.shape[0], generator, actions.device)
        noise = noise.to(actions.device, actions.dtype)
        x_k = self.schedule.add_noise(actions, noise, k.to(actions.device))
        pred = self.eps(x_k, k.to(actions.device), self.encode(obs))
        loss = F.mse_loss(pred.float(), noise.float(), reduction="none")
        if action_is_pad is not None:
            keep = (~action_is_pad).to(loss.dtype)[..., None]
            return (loss * keep).sum(), (keep.sum() * loss.shape[-1]).clamp_min(1.0)
        return loss.sum(), torch.tensor(float(loss.numel()), device=loss.device)

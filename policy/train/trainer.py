"""Minimal in-memory training loop: AdamW, warm-up + cosine learning rate, gradient clipping, EMA.

Used for the built-in synthetic task and small tests; dataset-backed training (LeRobot, zarr, hydra,
checkpoints, resume, DDP: `streamdp.policy.train`) builds on `EMA`, `lr_lambda` and `normalize_batch` here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer
from streamdp.policy.train.data import EpisodeWindows


class EMA:
    """Exponential moving average of parameters (buffers copied), with diffusion_policy's warm-up."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999) -> None:
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay, self.steps = power, max_decay, 0

    def decay(self) -> float:
        return 0.0 if self.steps == 0 else min(self.max_decay, 1 - (1 + self.steps) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay()
        for ps, p in zip(self.shadow.parameters(), model.parameters()):
            ps.mul_(d).add_(p.detach(), alpha=1 - d)
        for bs, b in zip(self.shadow.buffers(), model.buffers()):
            bs.copy_(b)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """Weights of the averaged model plus the scalars needed to continue (steps, power, max_decay)."""
        return {
            "steps": self.steps,
            "power": self.power,
            "max_decay": self.max_decay,
            "shadow": self.shadow.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.steps = int(state["steps"])
        self.power = float(state.get("power", self.power))
        self.max_decay = float(state.get("max_decay", self.max_decay))


def lr_lambda(warmup: int, total: int):  # noqa: ANN201 - torch LambdaLR callback
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def normalize_batch(
    norm: Normalizer, batch: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Normalised observation dict and actions from a raw batch (images assumed in [0, 1])."""
    obs = {k: v for k, v in batch.items() if k.startswith(IMAGE_PREFIX)}
    if STATE_KEY in batch:
        obs[STATE_KEY] = norm.normalize(STATE_KEY, batch[STATE_KEY])
    return obs, norm.normalize("action", batch["action"])


def train_step(
    model: DiffusionModel,
    norm: Normalizer,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    grad_clip: float = 1.0,
    generator: torch.Generator | None = None,
) -> float:
    model.train()
    obs, actions = normalize_batch(norm, batch)
    loss = model.compute_loss(obs, actions, batch.get("action_is_pad"), generator=generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def fit(
    model: DiffusionModel,
    norm: Normalizer,
    data: EpisodeWindows,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    warmup: int = 50,
    seed: int = 0,
    use_ema: bool = True,
    progress: bool = False,
) -> tuple[list[float], nn.Module]:
    """Train on windows of in-memory episodes; returns (losses, EMA or trained model)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = len(data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, steps))
    ema = EMA(model) if use_ema else None
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="train"):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        batch = data.batch(idx)
        losses.append(train_step(model, norm, batch, opt, generator=g))
        sched.step()
        if ema is not None:
            ema.update(model)
    model.eval()
    return losses, (ema.shadow if ema is not None else model)

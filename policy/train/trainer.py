"""The one training loop: AdamW, warm-up + cosine learning rate, gradient clipping, EMA, optional bf16
autocast and data parallelism.

Every way to train goes through :class:`Trainer`: ``streamdp-train`` (datasets on disk, DDP, checkpoints
and resume: :mod:`streamdp.policy.train.cli`) feeds it a DataLoader's batches, and :func:`train_in_memory`
(the synthetic arc task, scripted-expert demonstrations) feeds it random batches of in-memory episodes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from streamdp.policy.config import PolicyConfig
from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY, TASK_INDEX_KEY
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer
from streamdp.policy.policy import Policy
from streamdp.policy.train.checkpoints import capture_rng
from streamdp.policy.train.config import TrainConfig
from streamdp.policy.train.data import ACTION_KEY, PAD_KEY, EpisodeWindows


# ---------------------------------------------------------------------------------------- plumbing
@dataclass
class DistInfo:
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif device_pref == "cuda":
        device = torch.device(f"cuda:{local_rank}")
    else:
        device = torch.device(device_pref)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank) if dist.is_initialized() else DistInfo()
    return info, device


def broadcast(obj: Any, d: DistInfo) -> Any:
    """Rank 0's `obj` on every rank."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rng(d: DistInfo) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Every rank's RNG states (for a checkpoint written by rank 0)."""
    mine = capture_rng()
    if d.world == 1:
        return [mine]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for step `step`'s diffusion labels and noise: a pure function of (seed, step)."""
    s = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(s)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) global generators: the network's initialisation."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def autocast_for(precision: str, device: torch.device) -> tuple[str, contextlib.AbstractContextManager]:
    """('bf16' | 'fp32', context): auto picks bf16 only on CUDA devices that support it."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return "bf16", torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return "fp32", contextlib.nullcontext()


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device` (non-tensor entries dropped)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}


# ------------------------------------------------------------------------------------ optimisation
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
    """Normalised observation dict and actions from a raw batch (images already in [0, 1]; task indices as
    they are)."""
    obs = {k: v for k, v in batch.items() if k.startswith(IMAGE_PREFIX)}
    if STATE_KEY in batch:
        obs[STATE_KEY] = norm.normalize(STATE_KEY, batch[STATE_KEY])
    if TASK_INDEX_KEY in batch:  # a multi-task dataset's task rows (the encoder embeds them)
        obs[TASK_INDEX_KEY] = batch[TASK_INDEX_KEY]
    return obs, norm.normalize(ACTION_KEY, batch[ACTION_KEY])


class _LossModule(nn.Module):
    """forward() = DiffusionModel.loss_terms, so DistributedDataParallel sees (and syncs) the call."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, obs, actions, pad, k, noise):  # noqa: ANN001, ANN201
        return self.model.loss_terms(obs, actions, pad, k=k, noise=noise)


@dataclass
class StepResult:
    step: int  # optimiser steps done, this one included
    loss: torch.Tensor  # detached, on the device: mean over the global batch (read it lazily: a sync)
    lr: float  # learning rate this step used
    grad_norm: torch.Tensor  # before clipping (zero when clipping is off)


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """Optimiser, schedule, EMA and the step: the one training loop behind every caller.

    ``model`` is trained on this rank's share of each global batch (``cfg.batch_size`` split over
    ``d.world`` ranks under DDP). A step's diffusion labels and noise are drawn for the whole global
    batch from ``step_generator(cfg.seed, step)`` (each rank takes its slice), so a resumed run and N
    ranks follow one uninterrupted process; a caller may pass its own ``generator`` instead (one process).
    """

    def __init__(
        self,
        model: DiffusionModel,
        norm: Normalizer,
        cfg: TrainConfig,
        device: torch.device | str = "cpu",
        d: DistInfo | None = None,
    ) -> None:
        self.model, self.norm, self.cfg = model, norm, cfg
        self.device, self.dist = torch.device(device), d or DistInfo()
        model.train()
        betas = tuple(cfg.betas)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.warmup_steps, cfg.steps))
        self.ema = EMA(model, power=cfg.ema_power, max_decay=cfg.ema_max_decay) if cfg.ema else None
        self.precision, self._autocast = autocast_for(cfg.precision, self.device)
        self.loss_module: nn.Module = _LossModule(model)
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = nn.parallel.DistributedDataParallel(self.loss_module, device_ids=ids)
        self.step = 0

    @property
    def averaged(self) -> nn.Module:
        """The weights to export and evaluate: the EMA model when EMA is on, else the trained one."""
        return self.ema.shadow if self.ema is not None else self.model

    def train_step(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> StepResult:
        """One optimiser step on a batch (this rank's slice of the global batch)."""
        d, model = self.dist, self.model
        batch = to_device(batch, self.device)
        b = len(batch[ACTION_KEY])
        if generator is None:
            k, noise = model.sample_labels_and_noise(b * d.world, step_generator(self.cfg.seed, self.step))
            k, noise = k[d.rank * b : (d.rank + 1) * b], noise[d.rank * b : (d.rank + 1) * b]
        elif d.world > 1:
            raise ValueError("a caller's own generator is for one process; data-parallel steps draw per step")
        else:
            k, noise = model.sample_labels_and_noise(b, generator)
        obs, actions = normalize_batch(self.norm, batch)
        with self._autocast:
            total, count = self.loss_module(obs, actions, batch.get(PAD_KEY), k.to(self.device), noise.to(self.device))
        if d.world > 1:  # normalise by the global count: N ranks take the same step as one process
            sc = torch.stack([total.detach().float(), count.detach().float()])
            dist.all_reduce(sc)
            loss, loss_value = total * d.world / sc[1], sc[0] / sc[1]
        else:
            loss = total / count
            loss_value = loss.detach()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), clip) if clip > 0 else torch.zeros(())
        self.opt.step()
        lr = self.sched.get_last_lr()[0]
        self.sched.step()
        if self.ema is not None:
            self.ema.update(model)
        self.step += 1
        return StepResult(self.step, loss_value, lr, grad_norm)

    def run(
        self,
        batches: Iterable[Mapping[str, torch.Tensor]],
        on_step: Callable[[StepResult], None] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Step through `batches` until ``cfg.stop_at`` or ``cfg.steps`` (a batch is only drawn when a step
        will use it)."""
        self.model.train()
        it = iter(batches)
        end = self.cfg.stop_at or self.cfg.steps
        while self.step < end:
            batch = next(it, None)
            if batch is None:
                break
            res = self.train_step(batch, generator)
            if on_step is not None:
                on_step(res)

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Model, optimiser, scheduler and EMA from ``checkpoints.load_training_state`` (not the step)."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.shadow.load_state_dict(self.model.state_dict())

    @torch.no_grad()
    def ema_loss(self, batches: Iterable[Mapping[str, torch.Tensor]], seed: int) -> float:
        """Loss of the averaged model on fixed batches with fixed noise (comparable across checkpoints)."""
        model = self.averaged
        model.eval()
        g = torch.Generator().manual_seed(seed + 104729)
        tot = cnt = 0.0
        for batch in batches:
            batch = to_device(batch, self.device)
            obs, actions = normalize_batch(self.norm, batch)
            s, c = model.loss_terms(obs, actions, batch.get(PAD_KEY), generator=g)
            tot, cnt = tot + float(s), cnt + float(c)
        return tot / max(cnt, 1.0)


# ---------------------------------------------------------------------------------------- in memory
def train_in_memory(cfg: PolicyConfig, data: EpisodeWindows, tcfg: TrainConfig) -> tuple[Policy, list[float]]:
    """A policy trained on in-memory episodes (the synthetic task, scripted-expert demos) by the same
    Trainer as streamdp-train, on one process: batches drawn with replacement from a generator seeded
    with ``tcfg.seed``, which also draws the diffusion labels and noise. Returns the policy holding the
    EMA (else trained) weights, in eval mode, on the CPU, and the loss of every step."""
    seed_everything(tcfg.seed)
    policy = Policy(cfg, stats=data.stats, seed=tcfg.seed)
    assert policy.normalizer is not None
    g = torch.Generator().manual_seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)  # the global stream (dropout) starts at the seed, whatever the init drew
    trainer = Trainer(policy.model, policy.normalizer, tcfg)

    def batches() -> Iterable[dict[str, torch.Tensor]]:
        while True:
            yield data.batch(torch.randint(0, len(data), (tcfg.batch_size,), generator=g))

    losses: list[torch.Tensor] = []
    with tqdm(total=tcfg.steps, disable=not tcfg.progress, desc="train") as bar:
        trainer.run(batches(), lambda r: (losses.append(r.loss), bar.update(1)), generator=g)
    policy.model.load_state_dict(trainer.averaged.state_dict())
    policy.model.eval()
    return policy, [float(x) for x in losses]

"""Train a streaming diffusion policy from a LeRobot v3 dataset or a diffusion_policy zarr replay buffer.

    streamdp-train task=arm_reach_dynamic policy=sdp_unet dataset.root=/data/arm train.steps=20000
    streamdp-train task=arm_reach_dynamic_image policy=sdp_transformer dataset.root=/data/arm_img
    streamdp-train task=generic dataset.format=zarr dataset.root=/data/pusht.zarr task.fps=10 \\
        dataset.zarr.state=[agent_pos] dataset.zarr.images={top: img}
    streamdp-train --cfg job task=pusht dataset.root=/data/pusht      # print the resolved config
    streamdp-train ... train.output_dir=runs/arm resume=true            # continue runs/arm exactly

(``python -m streamdp.policy.train`` is the same.) Each run directory (``train.output_dir``, else
hydra's ``hydra.run.dir``) holds ``config.yaml`` (resolved), ``dataset.json``, ``.hydra/``, the log,
``tb/`` (TensorBoard), ``metrics.jsonl`` (loss per step) and ``checkpoints/step_<N>/`` (see
``streamdp.policy.train.checkpoints``) with ``checkpoints/last`` pointing at the newest;
``Policy.from_pretrained("<run>/checkpoints/last/pretrained")`` loads the trained (EMA) policy.

Data-parallel training (DDP: NCCL on GPUs, gloo on CPU) under torchrun; ``train.batch_size`` is the
GLOBAL batch, split evenly across ranks; rank 0 logs and writes checkpoints; every rank reads the
dataset (and, on resume, the checkpoint) from the same path, so multi-node runs need shared storage::

    torchrun --nproc_per_node=8 -m streamdp.policy.train task=... dataset.root=... \\
        train.batch_size=512 train.output_dir=runs/x
    torchrun --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=$HEAD_ADDR:29500 --rdzv-id=run_x -m streamdp.policy.train ... train.output_dir=/shared/runs/x

Reproducibility: the diffusion labels and noise of step s come from a generator seeded by (seed, s)
for the whole global batch (each rank takes its slice), data order from (seed, epoch), and a checkpoint
holds model, optimiser, scheduler, EMA, RNG states and the sampler position; so a run resumed from a
checkpoint follows the uninterrupted run exactly (on the same hardware), and N ranks match one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from streamdp.policy.checkpoint import CheckpointError, read_config
from streamdp.policy.config import ConfigError, PolicyConfig
from streamdp.policy.model import DiffusionModel
from streamdp.policy.normalize import Normalizer
from streamdp.policy.policy import Policy
from streamdp.policy.train.checkpoints import (
    PRETRAINED,
    TrainerState,
    capture_rng,
    latest_checkpoint,
    load_training_state,
    restore_rng,
    save_training_checkpoint,
)
from streamdp.policy.train.config import (
    DatasetConfig,
    TrainConfig,
    config_diff,
    override_value,
    policy_config,
    to_dataclass,
)
from streamdp.policy.train.data import DataError, ResumableSampler, Window, make_loader, prefork
from streamdp.policy.train.sources import load_dataset
from streamdp.policy.train.trainer import EMA, lr_lambda, normalize_batch

log = logging.getLogger("streamdp.train")
USER_ERRORS = (DataError, ConfigError, CheckpointError)


# ---------------------------------------------------------------------------------------- plumbing
@dataclass
class DistInfo:
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


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for step `step`'s diffusion labels and noise: a pure function of (seed, step)."""
    s = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(s)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def autocast_for(precision: str, device: torch.device) -> tuple[str, contextlib.AbstractContextManager]:
    """('bf16' | 'fp32', context): auto picks bf16 only on CUDA devices that support it."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return "bf16", torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return "fp32", contextlib.nullcontext()


class _LossModule(nn.Module):
    """forward() = DiffusionModel.loss_terms, so DistributedDataParallel sees (and syncs) the call."""

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, obs, actions, pad, k, noise):  # noqa: ANN001, ANN201
        return self.model.loss_terms(obs, actions, pad, k=k, noise=noise)


def _broadcast(obj: Any, d: DistInfo) -> Any:
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather_rng(d: DistInfo) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    mine = capture_rng()
    if d.world == 1:
        return [mine]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, mine)
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}


# -------------------------------------------------------------------------------------------- config
def config_dir() -> Path:
    from streamdp.sim.collect import config_dir as _config_dir

    return _config_dir()


def load_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``config/train.yaml`` with hydra overrides (programmatic use; the CLI uses hydra.main)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None  # newest training checkpoint (its `pretrained/` loads with Policy.from_pretrained)
    step: int
    last_loss: float | None


# ---------------------------------------------------------------------------------------------- train
def train(cfg: Any, output_dir: str | Path | None = None) -> TrainResult:
    """Run (or resume) training as configured by a composed hydra config (see ``load_config``)."""
    from omegaconf import OmegaConf

    tcfg: TrainConfig = to_dataclass(TrainConfig, cfg.train, "train")
    dcfg: DatasetConfig = to_dataclass(DatasetConfig, cfg.dataset, "dataset")
    task = OmegaConf.to_container(cfg.task, resolve=True)
    policy_node = OmegaConf.to_container(cfg.policy, resolve=True)
    resume = bool(cfg.get("resume", False))

    threads_before = torch.get_num_threads()
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    d, device = init_distributed(tcfg.device)
    try:
        return _train(cfg, tcfg, dcfg, task, policy_node, resume, d, device, output_dir)
    finally:
        torch.set_num_threads(threads_before)
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run_dir(tcfg: TrainConfig, output_dir: str | Path | None, d: DistInfo) -> Path:
    run = output_dir or tcfg.output_dir
    if run is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("no run directory: set train.output_dir (or run through the streamdp-train CLI)")
        run = HydraConfig.get().runtime.output_dir
    return Path(_broadcast(str(Path(run).resolve()), d))


def _train(
    cfg: Any,
    tcfg: TrainConfig,
    dcfg: DatasetConfig,
    task: dict[str, Any],
    policy_node: dict[str, Any],
    resume: bool,
    d: DistInfo,
    device: torch.device,
    output_dir: str | Path | None,
) -> TrainResult:
    from omegaconf import OmegaConf

    if tcfg.batch_size % d.world:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} (global) is not divisible by {d.world} ranks")
    run_dir = _run_dir(tcfg, output_dir, d)
    ckpt_root = run_dir / "checkpoints"
    seed_everything(tcfg.seed)

    # -- data and policy ---------------------------------------------------------------------------
    window = Window(int(policy_node.get("n_obs_steps") or 2), int(policy_node.get("horizon") or 16))
    ds = load_dataset(task, dcfg, window)
    pcfg = policy_config(policy_node, ds.info)
    policy = Policy(pcfg, stats=ds.stats, device=device, seed=tcfg.seed)
    model, norm = policy.model, policy.normalizer
    assert norm is not None
    model.train()
    extras = {
        "task": task.get("name"),
        "obs_mode": task.get("obs_mode"),
        "dataset": {
            "format": dcfg.format,
            "source": ds.info.source,
            "num_episodes": ds.info.num_episodes,
            "num_frames": ds.info.num_frames,
            "state_names": ds.info.state_names,
        },
    }

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps, tcfg.steps))
    ema = EMA(model, power=tcfg.ema_power, max_decay=tcfg.ema_max_decay) if tcfg.ema else None
    B, b = tcfg.batch_size, tcfg.batch_size // d.world
    step, epoch, pos = 0, 0, 0

    # -- resume ------------------------------------------------------------------------------------
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if resume and ckpt is None and d.main:
        log.warning("resume=true but %s holds no checkpoint: starting from scratch", ckpt_root)
    if ckpt is not None:
        step, epoch, pos = _resume(ckpt, pcfg, tcfg, model, opt, sched, ema, d)
        if d.main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", ckpt, step, epoch, pos)

    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            _truncate_metrics(run_dir / "metrics.jsonl", step)  # drop steps the interrupted run did past it
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (run_dir / "dataset.json").write_text(json.dumps(asdict(ds.info), indent=2))
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "run %s | %s: %d episodes, %d frames | policy %s/%s, %.2fM parameters | global batch %d on %d rank(s), %s",
            run_dir, ds.info.source, ds.info.num_episodes, ds.info.num_frames, pcfg.denoiser, pcfg.sampler,
            n_params / 1e6, B, d.world, device,
        )  # fmt: skip

    precision, autocast = autocast_for(tcfg.precision, device)
    loss_module: nn.Module = _LossModule(model)
    if d.world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = ResumableSampler(ds, B, num_replicas=d.world, rank=d.rank, seed=tcfg.seed)
    loader = make_loader(ds, sampler, dcfg.num_workers, pin_memory=device.type == "cuda", seed=tcfg.seed)
    eval_batches = _eval_batches(ds, b, tcfg) if d.main and ema is not None and tcfg.eval_batches else []

    writer = metrics = bar = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
        metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in finally
        bar = tqdm(total=tcfg.steps, initial=step, desc="train", unit="step", disable=not tcfg.progress,
                   dynamic_ncols=True)  # fmt: skip
    pending: list[tuple[int, torch.Tensor, float]] = []  # (step, loss on device, lr): fetched at log time
    last_loss: float | None = None
    last_ckpt = ckpt
    t_log, data_time = time.perf_counter(), 0.0
    steps_since_log = 0
    try:
        sampler.set_position(epoch, pos)
        if dcfg.num_workers:
            prefork()
        it = iter(loader)
        while step < tcfg.steps:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                epoch, pos = epoch + 1, 0
                sampler.set_position(epoch, 0)
                it = iter(loader)
                continue
            data_time += time.perf_counter() - t0
            pos += 1
            batch = _to_device(batch, device)
            k_all, noise_all = model.sample_labels_and_noise(B, step_generator(tcfg.seed, step))
            mine = slice(d.rank * b, (d.rank + 1) * b)
            obs, actions = normalize_batch(norm, batch)
            with autocast:
                total, count = loss_module(
                    obs, actions, batch.get("action_is_pad"), k_all[mine].to(device), noise_all[mine].to(device)
                )
            if d.world > 1:
                sc = torch.stack([total.detach().float(), count.detach().float()])
                dist.all_reduce(sc)
                loss = total * d.world / sc[1]
                loss_value = sc[0] / sc[1]
            else:
                loss = total / count
                loss_value = loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip) if tcfg.grad_clip > 0 else torch.zeros(())
            )
            opt.step()
            lr = sched.get_last_lr()[0]
            sched.step()
            if ema is not None:
                ema.update(model)
            step += 1
            steps_since_log += 1
            if d.main:
                pending.append((step, loss_value, lr))
                bar.update(1)
            if d.main and (step % tcfg.log_every == 0 or step == tcfg.steps):
                now = time.perf_counter()
                elapsed = max(now - t_log, 1e-9)
                losses = torch.stack([p[1] for p in pending]).float().cpu().tolist()
                for (s, _, lr_s), value in zip(pending, losses):
                    metrics.write(json.dumps({"step": s, "loss": value, "lr": lr_s}) + "\n")
                metrics.flush()
                last_loss = losses[-1]
                mean_loss = float(np.mean(losses))
                sps = steps_since_log * B / elapsed
                writer.add_scalar("train/loss", mean_loss, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
                writer.add_scalar("train/epoch", epoch + pos / sampler.batches_per_epoch, step)
                writer.add_scalar("perf/samples_per_s", sps, step)
                writer.add_scalar("perf/data_wait_fraction", data_time / elapsed, step)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{sps:.0f}", refresh=False)
                pending.clear()
                t_log, data_time, steps_since_log = now, 0.0, 0
            if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
                rng = _gather_rng(d)
                if d.main:
                    trainer = TrainerState(step, epoch, pos, tcfg.seed, B, d.world)
                    extras["train"] = {"step": step, "seed": tcfg.seed, "precision": precision}
                    last_ckpt = save_training_checkpoint(
                        ckpt_root, trainer, policy, opt, sched, ema, rng, extras, tcfg.keep_last
                    )
                    if eval_batches:
                        ev = _eval_loss(ema.shadow, norm, eval_batches, tcfg.seed, device)
                        writer.add_scalar("eval/ema_loss", ev, step)
                        log.info("step %d: checkpoint %s, EMA loss on fixed batches %.4f", step, last_ckpt.name, ev)
                    writer.flush()
                if d.world > 1:
                    dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        if metrics is not None:
            metrics.close()
    if d.main and step >= tcfg.steps:
        log.info("done: step %d, final checkpoint %s", step, (last_ckpt / PRETRAINED) if last_ckpt else None)
    return TrainResult(run_dir, last_ckpt, step, last_loss)


def _resume(
    ckpt: Path,
    pcfg: PolicyConfig,
    tcfg: TrainConfig,
    model: DiffusionModel,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    ema: EMA | None,
    d: DistInfo,
) -> tuple[int, int, int]:
    saved_cfg, _ = read_config(ckpt / PRETRAINED)
    diff = config_diff(saved_cfg, pcfg)
    if diff:
        raise ConfigError(f"cannot resume from {ckpt}: the policy config differs in {diff}; use the run's own config")
    st = load_training_state(ckpt)
    tr: TrainerState = st["trainer"]
    if tr.global_batch != tcfg.batch_size or tr.seed != tcfg.seed:
        raise ConfigError(
            f"cannot resume from {ckpt}: it was trained with train.batch_size={tr.global_batch}, "
            f"train.seed={tr.seed} (now {tcfg.batch_size}, {tcfg.seed}); keep them to continue the same run"
        )
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if ema is not None:
        if "ema" in st:
            ema.load_state_dict(st["ema"])
        else:
            ema.shadow.load_state_dict(model.state_dict())
    rng = st["rng"].get(d.rank) if tr.world_size == d.world else None
    if rng is None:
        rng = st["rng"][0]
        if d.rank:  # a different world size: derive distinct streams from rank 0's state
            restore_rng(*rng)
            seed_everything(int(torch.randint(0, 2**31 - 1, ()).item()) + d.rank)
            rng = None
    if rng is not None:
        restore_rng(*rng)
    return tr.step, tr.epoch, tr.batch_in_epoch


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill
    path.write_text("".join(f"{line}\n" for line in keep))


def _eval_batches(ds: Any, batch: int, tcfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """A few fixed batches (fixed seed) on which the EMA model's loss is tracked at each checkpoint."""
    s = ResumableSampler(ds, batch, seed=tcfg.seed + 7919)
    idx = list(iter(s))[: tcfg.eval_batches * batch]
    out = []
    for j in range(0, len(idx), batch):
        items = [ds[i] for i in idx[j : j + batch]]
        out.append({k: torch.stack([it[k] for it in items]) for k in items[0]})
    return out


@torch.no_grad()
def _eval_loss(
    model: DiffusionModel, norm: Normalizer, batches: list[dict[str, torch.Tensor]], seed: int, device: torch.device
) -> float:
    model.eval()
    g = torch.Generator().manual_seed(seed + 104729)
    tot = cnt = 0.0
    for batch in batches:
        batch = _to_device(batch, device)
        obs, actions = normalize_batch(norm, batch)
        s, c = model.loss_terms(obs, actions, batch.get("action_is_pad"), generator=g)
        tot, cnt = tot + float(s), cnt + float(c)
    return tot / max(cnt, 1.0)


# ------------------------------------------------------------------------------------------------ CLI
def _task(cfg: Any) -> None:
    try:
        train(cfg)
    except USER_ERRORS as e:
        log.error("%s: %s", type(e).__name__, e)
        print(f"streamdp-train: {type(e).__name__}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (hydra): ``streamdp-train [--cfg job] key=value ...``."""
    import hydra

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local datasets only: never reach for the Hub
    args = list(sys.argv[1:] if argv is None else argv)
    out = override_value(args, "train.output_dir")
    if out and override_value(args, "hydra.run.dir") is None:
        args.append(f"hydra.run.dir={out}")  # one run directory for hydra's files and ours
    if int(os.environ.get("RANK", "0")) > 0:  # only rank 0 writes: the others get rank 0's run dir
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                 "hydra.run.dir=."]  # fmt: skip
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(_task)()


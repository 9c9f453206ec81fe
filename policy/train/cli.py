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

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from streamdp.policy.checkpoint import CheckpointError, read_config
from streamdp.policy.cli import config_dir, help_text, one_line, presets, register, user_errors
from streamdp.policy.config import ConfigError, PolicyConfig
from streamdp.policy.policy import Policy
from streamdp.policy.train.checkpoints import (
    PRETRAINED,
    TrainerState,
    latest_checkpoint,
    load_training_state,
    restore_rng,
    save_training_checkpoint,
)
from streamdp.policy.train.config import (
    DatasetConfig,
    TrainConfig,
    TrainJobConfig,
    config_diff,
    override_value,
    policy_config,
    to_dataclass,
)
from streamdp.policy.train.data import DataError, ResumableSampler, Window, WindowedDataset, make_loader, prefork
from streamdp.policy.train.sources import load_dataset
from streamdp.policy.train.trainer import (
    DistInfo,
    StepResult,
    Trainer,
    broadcast,
    gather_rng,
    init_distributed,
    seed_everything,
)

log = logging.getLogger("streamdp.train")
USER_ERRORS = (DataError, ConfigError, CheckpointError)


# -------------------------------------------------------------------------------------------- config
def load_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``config/train.yaml`` with hydra overrides (programmatic use; the CLI uses hydra.main)."""
    from hydra import compose, initialize_config_dir

    register("train", TrainJobConfig)
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
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
    return Path(broadcast(str(Path(run).resolve()), d))


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
    if tcfg.batch_size % d.world:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} (global) is not divisible by {d.world} ranks")
    run_dir = _run_dir(tcfg, output_dir, d)
    ckpt_root = run_dir / "checkpoints"
    seed_everything(tcfg.seed)

    window = Window(int(policy_node.get("n_obs_steps") or 2), int(policy_node.get("horizon") or 16))
    ds = load_dataset(task, dcfg, window)
    pcfg = policy_config(policy_node, ds.info)
    policy = Policy(pcfg, stats=ds.stats, device=device, seed=tcfg.seed)
    assert policy.normalizer is not None
    trainer = Trainer(policy.model, policy.normalizer, tcfg, device, d)
    sampler = ResumableSampler(ds, tcfg.batch_size, num_replicas=d.world, rank=d.rank, seed=tcfg.seed)
    loader = make_loader(ds, sampler, dcfg.num_workers, pin_memory=device.type == "cuda", seed=tcfg.seed)
    batches = EpochBatches(loader, sampler, prefork_workers=dcfg.num_workers > 0)

    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if resume and ckpt is None and d.main:
        log.warning("resume=true but %s holds no checkpoint: starting from scratch", ckpt_root)
    if ckpt is not None:
        _resume(ckpt, pcfg, tcfg, trainer, batches, d)
        if d.main:
            log.info("resumed from %s: step %d, epoch %d, batch %d", ckpt, trainer.step, batches.epoch, batches.pos)
    if d.main:
        _write_run_files(run_dir, cfg, ds, resumed=ckpt is not None, step=trainer.step)
        n_params = sum(p.numel() for p in policy.model.parameters())
        log.info(
            "run %s | %s: %d episodes, %d frames | policy %s/%s, %.2fM parameters | global batch %d on %d rank(s), %s",
            run_dir, ds.info.source, ds.info.num_episodes, ds.info.num_frames, pcfg.denoiser, pcfg.sampler,
            n_params / 1e6, tcfg.batch_size, d.world, device,
        )  # fmt: skip

    eval_batches = _eval_batches(ds, tcfg.batch_size // d.world, tcfg) if d.main and tcfg.ema else []
    run_log = RunLog(run_dir, tcfg, trainer.step, batches) if d.main else None
    saver = Checkpointer(ckpt_root, policy, trainer, batches, _extras(task, dcfg, ds), eval_batches, ckpt)

    def on_step(r: StepResult) -> None:
        if run_log is not None:
            run_log.record(r)
        saver.maybe_save(r.step, run_log)

    try:
        trainer.run(batches, on_step)
    finally:
        if run_log is not None:
            run_log.close()
    if d.main and trainer.step >= tcfg.steps:
        last = (saver.last / PRETRAINED) if saver.last else None
        log.info("done: step %d, final checkpoint %s", trainer.step, last)
    return TrainResult(run_dir, saver.last, trainer.step, run_log.last_loss if run_log else None)


def _extras(task: dict[str, Any], dcfg: DatasetConfig, ds: WindowedDataset) -> dict[str, Any]:
    """What a checkpoint's ``config.json`` records about the task and the data it was trained on."""
    return {
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


def _write_run_files(run_dir: Path, cfg: Any, ds: WindowedDataset, resumed: bool, step: int) -> None:
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        _truncate_metrics(run_dir / "metrics.jsonl", step)  # drop steps the interrupted run did past it
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "dataset.json").write_text(json.dumps(asdict(ds.info), indent=2))


# -------------------------------------------------------------------------------------------- batches
class EpochBatches:
    """The loader's batches epoch after epoch from a position (epoch, batch in the epoch) that a
    checkpoint records; counts the time spent waiting for data."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: ResumableSampler, prefork_workers: bool) -> None:
        self.loader, self.sampler, self.prefork_workers = loader, sampler, prefork_workers
        self.epoch, self.pos, self.data_time = 0, 0, 0.0

    @property
    def progress(self) -> float:
        """Epochs done, fractional."""
        return self.epoch + self.pos / self.sampler.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.set_position(self.epoch, self.pos)
        if self.prefork_workers:
            prefork()
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                self.epoch, self.pos = self.epoch + 1, 0
                self.sampler.set_position(self.epoch, 0)
                it = iter(self.loader)
                continue
            self.data_time += time.perf_counter() - t0
            self.pos += 1
            yield batch


# --------------------------------------------------------------------------------- logs, checkpoints
class RunLog:
    """Rank 0's record of a run: ``metrics.jsonl`` (every step), TensorBoard scalars and the tqdm bar
    (every ``train.log_every`` steps). Losses stay on the device until then (reading one is a sync)."""

    def __init__(self, run_dir: Path, tcfg: TrainConfig, step: int, batches: EpochBatches) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.tcfg, self.batches = tcfg, batches
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
        self.metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.bar = tqdm(total=tcfg.steps, initial=step, desc="train", unit="step", disable=not tcfg.progress,
                        dynamic_ncols=True)  # fmt: skip
        self.pending: list[StepResult] = []
        self.last_loss: float | None = None
        self.t_log = time.perf_counter()

    def record(self, r: StepResult) -> None:
        self.pending.append(r)
        self.bar.update(1)
        if r.step % self.tcfg.log_every == 0 or r.step == self.tcfg.steps:
            self._flush_pending(r)

    def _flush_pending(self, r: StepResult) -> None:
        now = time.perf_counter()
        elapsed = max(now - self.t_log, 1e-9)
        losses = torch.stack([p.loss for p in self.pending]).float().cpu().tolist()
        for p, value in zip(self.pending, losses):
            self.metrics.write(json.dumps({"step": p.step, "loss": value, "lr": p.lr}) + "\n")
        self.metrics.flush()
        self.last_loss = losses[-1]
        mean_loss = float(np.mean(losses))
        sps = len(self.pending) * self.tcfg.batch_size / elapsed
        w = self.writer
        w.add_scalar("train/loss", mean_loss, r.step)
        w.add_scalar("train/lr", r.lr, r.step)
        w.add_scalar("train/grad_norm", float(r.grad_norm), r.step)
        w.add_scalar("train/epoch", self.batches.progress, r.step)
        w.add_scalar("perf/samples_per_s", sps, r.step)
        w.add_scalar("perf/data_wait_fraction", self.batches.data_time / elapsed, r.step)
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{r.lr:.2e}", samples_s=f"{sps:.0f}", refresh=False)
        self.pending.clear()
        self.t_log, self.batches.data_time = now, 0.0

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.metrics.close()


class Checkpointer:
    """Every ``train.checkpoint_every`` steps and at the end: rank 0 writes a training checkpoint (all
    ranks' RNG states gathered) and the EMA loss on fixed batches; the ranks then wait for each other."""

    def __init__(
        self,
        root: Path,
        policy: Policy,
        trainer: Trainer,
        batches: EpochBatches,
        extras: dict[str, Any],
        eval_batches: list[dict[str, torch.Tensor]],
        last: Path | None,
    ) -> None:
        self.root, self.policy, self.trainer, self.batches = root, policy, trainer, batches
        self.extras, self.eval_batches, self.last = extras, eval_batches, last

    def maybe_save(self, step: int, run_log: RunLog | None) -> None:
        t, tcfg, d = self.trainer, self.trainer.cfg, self.trainer.dist
        if step % tcfg.checkpoint_every and step != tcfg.steps:
            return
        rng = gather_rng(d)
        if d.main:
            state = TrainerState(step, self.batches.epoch, self.batches.pos, tcfg.seed, tcfg.batch_size, d.world)
            self.extras["train"] = {"step": step, "seed": tcfg.seed, "precision": t.precision}
            self.last = save_training_checkpoint(
                self.root, state, self.policy, t.opt, t.sched, t.ema, rng, self.extras, tcfg.keep_last
            )
            if self.eval_batches:
                ev = t.ema_loss(self.eval_batches, tcfg.seed)
                assert run_log is not None
                run_log.writer.add_scalar("eval/ema_loss", ev, step)
                log.info("step %d: checkpoint %s, EMA loss on fixed batches %.4f", step, self.last.name, ev)
            if run_log is not None:
                run_log.writer.flush()
        if d.world > 1:
            dist.barrier()


def _resume(
    ckpt: Path, pcfg: PolicyConfig, tcfg: TrainConfig, trainer: Trainer, batches: EpochBatches, d: DistInfo
) -> None:
    """Continue from `ckpt`: its model, optimiser, scheduler, EMA, RNG states and data position."""
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
    trainer.load_state(st)
    rng = st["rng"].get(d.rank) if tr.world_size == d.world else None
    if rng is None:
        rng = st["rng"][0]
        if d.rank:  # a different world size: derive distinct streams from rank 0's state
            restore_rng(*rng)
            seed_everything(int(torch.randint(0, 2**31 - 1, ()).item()) + d.rank)
            rng = None
    if rng is not None:
        restore_rng(*rng)
    trainer.step, batches.epoch, batches.pos = tr.step, tr.epoch, tr.batch_in_epoch


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


def _eval_batches(ds: WindowedDataset, batch: int, tcfg: TrainConfig) -> list[dict[str, torch.Tensor]]:
    """A few fixed batches (fixed seed) on which the EMA model's loss is tracked at each checkpoint."""
    if not tcfg.eval_batches:
        return []
    s = ResumableSampler(ds, batch, seed=tcfg.seed + 7919)
    idx = list(iter(s))[: tcfg.eval_batches * batch]
    return [ds.batch(idx[j : j + batch]) for j in range(0, len(idx), batch)]


# ------------------------------------------------------------------------------------------------ CLI
PROG = "streamdp-train"


def _fail(e: BaseException) -> NoReturn:
    """The one-line error of the job convention (streamdp.policy.cli), exit code 2; also in train.log
    once the run has one."""
    if logging.getLogger().handlers:
        log.error("%s: %s", type(e).__name__, e)
    print(one_line(PROG, e), file=sys.stderr)
    raise SystemExit(2) from None


def _task(cfg: Any, debug: bool = False) -> None:
    try:
        train(cfg)
    except USER_ERRORS as e:
        if debug:
            raise
        _fail(e)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (hydra): ``streamdp-train [--cfg job] [--debug] key=value ...``.

    The job convention of every streamdp job (see streamdp.policy.cli): ``--help`` lists the keys, a
    wrong key or value is one line and exit code 2. Hydra's own runner still drives the run, so the run
    directory, ``.hydra/`` and ``--cfg job`` behave as hydra users expect.
    """
    import functools

    import hydra

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local datasets only: never reach for the Hub
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("STREAMDP_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if any(a in ("-h", "--help") for a in args):
        groups = {g: presets("train.yaml", g) for g in ("task", "policy")}
        print(help_text(PROG, __doc__.split("\n\n")[0], TrainJobConfig, groups))
        return
    try:  # compose once up front: a wrong key or value fails here, in one line, before any run dir exists
        load_config([a for a in args if "=" in a and not a.startswith("-")])
    except user_errors() as e:
        if debug:
            raise
        _fail(e)
    out = override_value(args, "train.output_dir")
    if out and override_value(args, "hydra.run.dir") is None:
        args.append(f"hydra.run.dir={out}")  # one run directory for hydra's files and ours
    if int(os.environ.get("RANK", "0")) > 0:  # only rank 0 writes: the others get rank 0's run dir
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                 "hydra.run.dir=."]  # fmt: skip
    sys.argv = [sys.argv[0], *args]
    register("train", TrainJobConfig)
    task = functools.wraps(_task)(functools.partial(_task, debug=debug))
    hydra.main(config_path=str(config_dir("train.yaml")), config_name="train", version_base="1.3")(task)()

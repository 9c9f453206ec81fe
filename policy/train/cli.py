"""Train a streaming diffusion policy from a LeRobot v3 dataset or a diffusion_policy zarr replay buffer.

    streamdp-train task=arm_reach_dynamic policy=sdp_unet dataset.root=/data/arm train.steps=20000
    streamdp-train task=arm_reach_dynamic_image policy=sdp_transformer dataset.root=/data/arm_img
    streamdp-train task=generic dataset.format=zarr dataset.root=/data/pusht.zarr task.fps=10 \\
        dataset.zarr.state=[agent_pos] dataset.zarr.images={top: img}
    streamdp-train --cfg job task=pusht dataset.root=/data/pusht      # print the resolved config
    streamdp-train train.output_dir=runs/arm resume=true                 # continue runs/arm exactly

(``python -m streamdp.policy.train`` is the same.) Each run directory (``train.output_dir``, else
hydra's ``hydra.run.dir``) holds ``config.yaml`` (resolved), ``dataset.json``, ``.hydra/``,
``train.log`` (a progress line with loss, learning rate, speed and ETA every ``train.log_interval_s``;
on a terminal also a tqdm bar), ``tb/`` (TensorBoard), ``metrics.jsonl`` (loss per step, and one row per
closed-loop evaluation), ``training_curve.png`` (loss and closed-loop success against steps, see
``streamdp.policy.train.curve``) and ``checkpoints/step_<N>/`` (see ``streamdp.policy.train.checkpoints``)
with ``checkpoints/last`` pointing at the newest and ``checkpoints/best`` at the best evaluated one;
``Policy.from_pretrained("<run>/checkpoints/last/pretrained")`` loads the trained (EMA) policy.

Closed-loop evaluation (``eval.*``, see ``streamdp.policy.train.closed_loop``): every ``eval.every`` steps
and at the last step, the exported policy runs ``eval.episodes`` seeded episodes of the dataset's
simulated task with its own sampler (success, coverage, distance next to the loss); off, with a line in
the log saying why, for datasets not collected in a simulated task. It never changes the training numbers.
A new run refuses a folder holding a run (``train.overwrite=true`` deletes that run's files first); a
resumed one runs with its saved ``config.yaml`` (see ``streamdp.policy.train.rundir``). Every check
(config, run directory, dataset) runs before the run directory is created.

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
import shutil
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
    BEST,
    PRETRAINED,
    STEP_RE,
    TrainerState,
    find_checkpoint,
    linked,
    list_checkpoints,
    load_training_state,
    point_last,
    restore_rng,
    save_training_checkpoint,
)
from streamdp.policy.train.closed_loop import ClosedLoop, Score, SimTask, read_score, sim_task
from streamdp.policy.train.config import (
    ClosedLoopConfig,
    DatasetConfig,
    TrainConfig,
    TrainJobConfig,
    config_diff,
    override_value,
    policy_config,
    to_dataclass,
)
from streamdp.policy.train.curve import plot_training_curve
from streamdp.policy.train.curve import read_metrics as read_metrics_file
from streamdp.policy.train.data import DataError, ResumableSampler, Window, WindowedDataset, make_loader, prefork
from streamdp.policy.train.rundir import CURVE, check_fresh, check_resume, clear_run, resume_config, saved_config
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
    """Compose ``config/train.yaml`` with hydra overrides (programmatic use; the CLI composes the same).

    With ``resume=true`` and a ``train.output_dir`` that holds a run, the result is that run's saved
    ``config.yaml`` with these overrides on top (see :mod:`streamdp.policy.train.rundir`), so
    ``train.output_dir=runs/arm resume=true`` alone continues the run as it was configured.
    """
    from hydra import compose, initialize_config_dir

    register("train", TrainJobConfig)
    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    out = cfg.train.output_dir
    saved = saved_config(Path(out)) if cfg.get("resume") and out else None
    return resume_config(cfg, overrides, saved) if saved is not None else cfg


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None  # newest training checkpoint (its `pretrained/` loads with Policy.from_pretrained)
    step: int
    last_loss: float | None
    best: Path | None = None  # best evaluated checkpoint (closed-loop evaluation on)
    best_score: Score | None = None


@dataclass
class RunPlan:
    """A run that passed every check (config, run directory, saved config, dataset); nothing written yet."""

    cfg: Any
    tcfg: TrainConfig
    dcfg: DatasetConfig
    ecfg: ClosedLoopConfig
    sim: SimTask | None  # the simulated task closed-loop evaluation runs in (None: no evaluation)
    task: dict[str, Any]
    policy_node: dict[str, Any]
    resume: bool
    run_dir: Path
    ds: WindowedDataset
    pcfg: PolicyConfig
    ckpt: Path | None  # the checkpoint to resume from
    clear: bool  # an old run's files are to be deleted first (train.overwrite, or resume with no checkpoint)
    notes: list[str]  # for the run's log, once it has one


# ---------------------------------------------------------------------------------------------- train
def train(cfg: Any, output_dir: str | Path | None = None) -> TrainResult:
    """Run (or resume) training as configured by a composed hydra config (see ``load_config``)."""
    threads_before = torch.get_num_threads()
    try:
        return execute(prepare(cfg, output_dir))
    finally:
        torch.set_num_threads(threads_before)


def prepare(cfg: Any, output_dir: str | Path | None = None, check_run_dir: bool = True) -> RunPlan:
    """Every check a run can fail, before anything is written: the config, the run directory (a new
    run refuses a folder holding one; a resumed run's config must match its saved one), the dataset.
    `check_run_dir`: False on ranks > 0 of a data-parallel run (rank 0 owns the run directory)."""
    from omegaconf import OmegaConf

    tcfg: TrainConfig = to_dataclass(TrainConfig, cfg.train, "train")
    dcfg: DatasetConfig = to_dataclass(DatasetConfig, cfg.dataset, "dataset")
    ecfg: ClosedLoopConfig = to_dataclass(ClosedLoopConfig, cfg.get("eval") or {}, "eval")  # none in older runs
    task = OmegaConf.to_container(cfg.task, resolve=True)
    policy_node = OmegaConf.to_container(cfg.policy, resolve=True)
    resume = bool(cfg.get("resume", False))
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    run_dir, notes = _run_dir(tcfg, output_dir, resume), []
    if resume and tcfg.overwrite:
        raise ConfigError("resume=true and train.overwrite=true contradict each other: pick one")
    saved = saved_config(run_dir) if resume else None
    if saved is not None:
        notes += [f"resume: {c} (given now)" for c in check_resume(run_dir, saved, cfg)]
    elif resume:
        if not dcfg.root:
            raise ConfigError(f"resume=true: {run_dir} holds no run to continue (no config.yaml), and no "
                              "dataset.root is given to start one there")  # fmt: skip
        notes.append(f"resume=true but {run_dir} holds no run: starting one")
    clear = check_fresh(run_dir, tcfg.overwrite) if check_run_dir and not resume else False

    window = Window(int(policy_node.get("n_obs_steps") or 2), int(policy_node.get("horizon") or 16))
    ds = load_dataset(task, dcfg, window)
    pcfg = policy_config(policy_node, ds.info)
    sim = None
    if ecfg.every:
        sim, why = sim_task(task, ds.info)
        if sim is None:
            notes.append(why)
    ckpt = None
    if resume:
        ckpt, found = find_checkpoint(run_dir / "checkpoints")
        notes += found
        if ckpt is None:
            notes.append(f"resume=true but {run_dir} holds no complete checkpoint: starting from scratch")
            clear = saved is not None and check_run_dir  # that run's metrics and events would mix in
    return RunPlan(cfg, tcfg, dcfg, ecfg, sim, task, policy_node, resume, run_dir, ds, pcfg, ckpt, clear, notes)


def _run_dir(tcfg: TrainConfig, output_dir: str | Path | None, resume: bool) -> Path:
    run = output_dir or tcfg.output_dir
    if run is None and resume:
        raise ConfigError("resume=true needs the run to continue: train.output_dir=<its run directory>")
    if run is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("no run directory: set train.output_dir (or run through the streamdp-train CLI)")
        run = HydraConfig.get().runtime.output_dir
    return Path(run).resolve()


def start_run_dir(plan: RunPlan) -> None:
    """Delete an old run's files when the plan says so (once; rank 0 only)."""
    if plan.clear:
        everything = not plan.resume  # resume with no checkpoint keeps the config, .hydra/ and the log
        gone = clear_run(plan.run_dir, everything=everything)
        plan.notes.append(f"{'train.overwrite=true' if everything else 'starting over'}: deleted {plan.run_dir}'s "
                          f"run files {gone}")  # fmt: skip
        plan.clear = False


def execute(plan: RunPlan) -> TrainResult:
    """Run a prepared plan: join the data-parallel group, set up the run directory, train."""
    d, device = init_distributed(plan.tcfg.device)
    try:
        return _train(plan, d, device)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(plan: RunPlan, d: DistInfo, device: torch.device) -> TrainResult:
    tcfg, ds, pcfg = plan.tcfg, plan.ds, plan.pcfg
    if tcfg.batch_size % d.world:
        raise ConfigError(f"train.batch_size={tcfg.batch_size} (global) is not divisible by {d.world} ranks")
    run_dir = Path(broadcast(str(plan.run_dir), d))
    ckpt_root = run_dir / "checkpoints"
    seed_everything(tcfg.seed)
    policy = Policy(pcfg, stats=ds.stats, device=device, seed=tcfg.seed)
    assert policy.normalizer is not None
    trainer = Trainer(policy.model, policy.normalizer, tcfg, device, d)
    sampler = ResumableSampler(ds, tcfg.batch_size, num_replicas=d.world, rank=d.rank, seed=tcfg.seed)
    loader = make_loader(ds, sampler, plan.dcfg.num_workers, pin_memory=device.type == "cuda", seed=tcfg.seed)
    batches = EpochBatches(loader, sampler, prefork_workers=plan.dcfg.num_workers > 0)

    ckpt = plan.ckpt
    if ckpt is not None:
        _resume(ckpt, pcfg, tcfg, trainer, batches, d)
    if d.main:
        start_run_dir(plan)
        _write_run_files(run_dir, plan, step=trainer.step)
        for note in plan.notes:
            log.warning("%s", note)
        if ckpt is not None:
            log.info("resumed from %s: step %d, epoch %d, batch %d", ckpt, trainer.step, batches.epoch, batches.pos)
        n_params = sum(p.numel() for p in policy.model.parameters())
        log.info(
            "run %s | %s: %d episodes, %d frames | policy %s/%s, %.2fM parameters | global batch %d on %d rank(s), %s",
            run_dir, ds.info.source, ds.info.num_episodes, ds.info.num_frames, pcfg.denoiser, pcfg.sampler,
            n_params / 1e6, tcfg.batch_size, d.world, device,
        )  # fmt: skip
    if d.world > 1:
        dist.barrier()  # rank 0 has cleared and set up the run directory

    eval_batches = _eval_batches(ds, tcfg.batch_size // d.world, tcfg) if d.main and tcfg.ema else []
    closed_loop = ClosedLoop(plan.sim, plan.ecfg, ckpt_root) if d.main and plan.sim is not None else None
    if closed_loop is not None:
        closed_loop.restore_best()  # (a resumed run: after the checkpoints past its step are gone)
        e, sim = plan.ecfg, closed_loop.task
        best = f"; best so far: step {closed_loop.best.step}" if closed_loop.best else ""
        each = f" of each of its {sim.n_tasks} tasks" if sim.n_tasks > 1 else ""
        log.info("closed-loop evaluation in %s/%s: %d episodes%s (seeds %d..%d) of the checkpoint's sampler every "
                 "%d steps and at step %d%s", sim.name, sim.obs_mode, e.episodes, each, e.seed,
                 e.seed + e.episodes - 1, e.every, tcfg.steps, best)  # fmt: skip
    run_log = RunLog(run_dir, tcfg, trainer.step, batches) if d.main else None
    saver = Checkpointer(ckpt_root, policy, trainer, batches, _extras(plan.task, plan.dcfg, ds), eval_batches, ckpt,
                         plan.ecfg if plan.sim is not None else None, closed_loop)  # fmt: skip

    def on_step(r: StepResult) -> None:
        if run_log is not None:
            run_log.record(r)
        saver.maybe_save(r.step, run_log)

    try:
        with run_log.redirect_logging() if run_log is not None else contextlib.nullcontext():
            if closed_loop is not None and run_log is not None and ckpt is not None:
                if plan.ecfg.due(trainer.step, tcfg.steps):
                    saver.catch_up(ckpt, trainer.step, run_log)
            trainer.run(batches, on_step)
    finally:
        if run_log is not None:
            run_log.close()
    best = best_score = None
    if closed_loop is not None and closed_loop.best is not None:
        best, best_score = linked(ckpt_root, BEST), closed_loop.best
    if d.main and tcfg.stop_at and trainer.step == tcfg.stop_at < tcfg.steps:
        log.info("stopped at step %d (train.stop_at) of %d; resume=true continues", trainer.step, tcfg.steps)
    if d.main and trainer.step >= tcfg.steps:
        last = (saver.last / PRETRAINED) if saver.last else None
        log.info("done: step %d, final checkpoint %s", trainer.step, last)
        if best is not None and best_score is not None:
            log.info("best checkpoint: %s (step %d: %s)", best / PRETRAINED, best_score.step, best_score.text())
    return TrainResult(run_dir, saver.last, trainer.step, run_log.last_loss if run_log else None, best, best_score)


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


def _write_run_files(run_dir: Path, plan: RunPlan, step: int) -> None:
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.ckpt is not None:
        _truncate_metrics(run_dir / "metrics.jsonl", step)  # drop steps the interrupted run did past it
        _tidy_checkpoints(run_dir / "checkpoints", plan.ckpt, plan.notes)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(plan.cfg, resolve=True))
    (run_dir / "dataset.json").write_text(json.dumps(asdict(plan.ds.info), indent=2))


def _tidy_checkpoints(root: Path, ckpt: Path, notes: list[str]) -> None:
    """Before continuing from `ckpt`: drop the (broken) step directories past it, which this run will
    write again, and point ``last`` at it if it pointed elsewhere."""
    step = int(STEP_RE.match(ckpt.name).group(1))  # type: ignore[union-attr]
    for s, p in list_checkpoints(root):
        if s > step:
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"deleted {p.name}: incomplete, and this run writes it again")
    last = root / "last"
    if not (last.is_symlink() and os.readlink(last) == ckpt.name):
        point_last(root, ckpt.name)


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
    """Rank 0's record of a run: ``metrics.jsonl`` (every step, and a row per closed-loop evaluation),
    TensorBoard scalars and the tqdm bar (every ``train.log_every`` steps), a progress line in the log
    (train.log) at most every ``train.log_interval_s`` seconds, so ``tail -f`` follows a run, and the
    training-curve plot. Losses stay on the device until then (reading one is a sync). The bar (steps,
    loss, samples/s, steps/s, ETA, last success rate) is drawn only on a terminal (``train.progress``);
    log files get the progress lines."""

    def __init__(self, run_dir: Path, tcfg: TrainConfig, step: int, batches: EpochBatches) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.run_dir, self.tcfg, self.batches = run_dir, tcfg, batches
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if step else None)
        self.metrics = open(run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        # disable=None: tqdm draws only on a terminal (redirected output keeps the log lines alone)
        self.bar = tqdm(total=tcfg.steps, initial=step, desc="train", unit="step",
                        disable=None if tcfg.progress else True, dynamic_ncols=True)  # fmt: skip
        self.postfix: dict[str, str] = {}
        self.pending: list[StepResult] = []
        self.last_loss: float | None = None
        self.t_log = time.perf_counter()
        self.line = _ProgressLine(step, self.t_log)

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
        self.postfix.update(loss=f"{mean_loss:.4f}", lr=f"{r.lr:.2e}", samples_s=f"{sps:.0f}")
        self.bar.set_postfix(self.postfix, refresh=False)
        self.line.add(losses, self.batches.data_time)
        if now - self.line.t0 >= self.tcfg.log_interval_s or r.step == self.tcfg.steps:
            log.info("%s", self.line.text(r, now, self.tcfg, self.batches.progress))
            self.line = _ProgressLine(r.step, now)
        self.pending.clear()
        self.t_log, self.batches.data_time = now, 0.0

    def redirect_logging(self) -> contextlib.AbstractContextManager:
        """Log lines printed above the bar instead of through it (while the bar is drawn)."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        return contextlib.nullcontext() if self.bar.disable else logging_redirect_tqdm()

    def record_eval(self, score: Score, best: bool) -> None:
        """An evaluation: a ``metrics.jsonl`` row ``{"step", "eval": {...}}``, TensorBoard, log line, bar."""
        self.metrics.write(json.dumps({"step": score.step, "eval": {**score.record(), "best": best}}) + "\n")
        self.metrics.flush()
        w = self.writer
        w.add_scalar("eval/success_rate", score.success_rate, score.step)
        if score.mean_max_coverage is not None:
            w.add_scalar("eval/mean_max_coverage", score.mean_max_coverage, score.step)
        if score.mean_final_distance is not None:
            w.add_scalar("eval/mean_final_distance", score.mean_final_distance, score.step)
        w.add_scalar("eval/seconds", score.seconds, score.step)
        w.flush()
        log.info("step %d: closed-loop %s%s", score.step, score.text(), " (best so far)" if best else "")
        self.postfix["success"] = f"{score.success_rate:.2f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def has_eval(self, step: int) -> bool:
        self.metrics.flush()
        return step in read_metrics_file(self.run_dir / "metrics.jsonl")[1]

    def plot(self, best_step: int | None) -> None:
        """Rewrite ``training_curve.png`` from ``metrics.jsonl``."""
        self.metrics.flush()
        title = f"{self.run_dir.name}: {self.tcfg.steps} steps, batch {self.tcfg.batch_size}, lr {self.tcfg.lr:g}"
        plot_training_curve(self.run_dir / "metrics.jsonl", self.run_dir / CURVE, title, best_step)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.metrics.close()


class _ProgressLine:
    """Losses and data wait since the last progress line in the log."""

    def __init__(self, step: int, t0: float) -> None:
        self.step0, self.t0, self.losses, self.data_time = step, t0, 0.0, 0.0
        self.n = 0

    def add(self, losses: list[float], data_time: float) -> None:
        self.losses += float(np.sum(losses))
        self.n += len(losses)
        self.data_time += data_time

    def text(self, r: StepResult, now: float, tcfg: TrainConfig, epochs: float) -> str:
        dt = max(now - self.t0, 1e-9)
        rate = (r.step - self.step0) / dt
        eta = (tcfg.steps - r.step) / rate if rate > 0 else float("inf")
        return (
            f"step {r.step}/{tcfg.steps} ({100 * r.step / tcfg.steps:.1f}%) | epoch {epochs:.2f} | "
            f"loss {self.losses / max(self.n, 1):.4f} | lr {r.lr:.2e} | {rate:.2f} steps/s, "
            f"{rate * tcfg.batch_size:.0f} samples/s | data wait {100 * self.data_time / dt:.0f}% | ETA {_hms(eta)}"
        )


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Checkpointer:
    """Every ``train.checkpoint_every`` steps, every ``eval.every`` steps (closed-loop evaluation on) and
    at the end: rank 0 writes a training checkpoint (all ranks' RNG states gathered), the EMA loss on
    fixed batches, the closed-loop evaluation of the checkpoint when one is due, and the training curve;
    the ranks then wait for each other."""

    def __init__(
        self,
        root: Path,
        policy: Policy,
        trainer: Trainer,
        batches: EpochBatches,
        extras: dict[str, Any],
        eval_batches: list[dict[str, torch.Tensor]],
        last: Path | None,
        ecfg: ClosedLoopConfig | None = None,
        closed_loop: ClosedLoop | None = None,
    ) -> None:
        self.root, self.policy, self.trainer, self.batches = root, policy, trainer, batches
        self.extras, self.eval_batches, self.last = extras, eval_batches, last
        self.ecfg, self.closed_loop = ecfg, closed_loop  # ecfg on every rank (the schedule), closed_loop on rank 0

    def maybe_save(self, step: int, run_log: RunLog | None) -> None:
        t, tcfg, d = self.trainer, self.trainer.cfg, self.trainer.dist
        evaluate = self.ecfg is not None and self.ecfg.due(step, tcfg.steps)
        if step % tcfg.checkpoint_every and step not in (tcfg.steps, tcfg.stop_at) and not evaluate:
            return
        rng = gather_rng(d)
        if d.main:
            state = TrainerState(step, self.batches.epoch, self.batches.pos, tcfg.seed, tcfg.batch_size, d.world)
            self.extras["train"] = {"step": step, "seed": tcfg.seed, "precision": t.precision}
            self.last = save_training_checkpoint(
                self.root, state, self.policy, t.opt, t.sched, t.ema, rng, self.extras, tcfg.keep_last
            )
            ev = ""
            if self.eval_batches:
                loss = t.ema_loss(self.eval_batches, tcfg.seed)
                assert run_log is not None
                run_log.writer.add_scalar("eval/ema_loss", loss, step)
                ev = f", EMA loss on fixed batches {loss:.4f}"
            log.info("step %d: checkpoint %s%s", step, self.last.name, ev)
            if run_log is not None:
                if evaluate and self.closed_loop is not None:
                    self._evaluate(self.last, step, run_log)
                run_log.writer.flush()
                run_log.plot(self.closed_loop.best.step if self.closed_loop and self.closed_loop.best else None)
        if d.world > 1:
            dist.barrier()

    def _evaluate(self, ckpt: Path, step: int, run_log: RunLog) -> None:
        """Evaluate `ckpt`; a failure (a simulator that cannot start, say) is logged and ends evaluation for
        the rest of the run, not the training."""
        assert self.closed_loop is not None
        run_log.bar.set_description("eval", refresh=True)
        try:
            score = self.closed_loop.evaluate(ckpt, step)
        except Exception as e:  # noqa: BLE001 - hours of training are worth more than the evaluation
            log.error("step %d: closed-loop evaluation failed, and is off for the rest of this run: %s",
                      step, f"{type(e).__name__}: {' '.join(str(e).split())}")  # fmt: skip
            self.closed_loop = None
            return
        finally:
            run_log.bar.set_description("train", refresh=False)
        run_log.record_eval(score, self.closed_loop.is_best(step))

    def catch_up(self, ckpt: Path, step: int, run_log: RunLog) -> None:
        """A resumed run whose checkpoint `ckpt` (at an evaluation step) was written but not evaluated, or
        whose evaluation did not reach ``metrics.jsonl``, before the run stopped: finish that first."""
        assert self.closed_loop is not None
        stored = read_score(ckpt)
        if stored is None:
            log.info("step %d: evaluating %s, which the interrupted run did not", step, ckpt.name)
            self._evaluate(ckpt, step, run_log)
        elif not run_log.has_eval(step):
            self.closed_loop.consider(stored, ckpt)
            run_log.record_eval(stored, self.closed_loop.is_best(step))


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
# hydra flags that print something instead of running: no checks, no run directory
INFO_FLAGS = ("-c", "--cfg", "-i", "--info", "-sc", "--shell-completion", "-p", "--package", "--resolve")


def _fail(e: BaseException, to_log: bool = True) -> NoReturn:
    """The one-line error of the job convention (streamdp.policy.cli), exit code 2; also in train.log
    once the run has one."""
    if to_log and logging.getLogger().handlers:
        log.error("%s: %s", type(e).__name__, e)
    print(one_line(PROG, e), file=sys.stderr)
    raise SystemExit(2) from None


def _task(cfg: Any, plan: RunPlan | None = None, debug: bool = False) -> None:
    try:
        if plan is None:
            threads_before = torch.get_num_threads()
            try:
                plan = prepare(cfg)
            finally:
                torch.set_num_threads(threads_before)
        execute(plan)
    except USER_ERRORS as e:
        if debug:
            raise
        _fail(e)


def _hydra_run_dir(overrides: Sequence[str]) -> str:
    """hydra.run.dir as hydra will resolve it now (``${now:...}``, the preset choices)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(config_dir("train.yaml")), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return str(OmegaConf.select(cfg, "hydra.run.dir"))
    finally:
        HydraConfig.instance().cfg = None


def _preflight(overrides: Sequence[str], rank0: bool) -> RunPlan:
    """Compose and check everything before hydra creates the run directory (a failing run leaves none)."""
    cfg = load_config(overrides)
    run_dir = cfg.train.output_dir or _hydra_run_dir(overrides)
    plan = prepare(cfg, run_dir, check_run_dir=rank0)
    if rank0:
        start_run_dir(plan)  # train.overwrite: the old run's files go before hydra writes the new ones
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (hydra): ``streamdp-train [--cfg job] [--debug] key=value ...``.

    The job convention of every streamdp job (see streamdp.policy.cli): ``--help`` lists the keys, a
    wrong key or value is one line and exit code 2. Every check (config, run directory, saved config on
    resume, dataset) runs before hydra's runner creates the run directory, so a run that fails one
    leaves nothing behind; then hydra drives the run (its ``.hydra/``, ``train.log``, ``--cfg job``).
    """
    import functools

    import hydra

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local datasets only: never reach for the Hub
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("STREAMDP_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if any(a in ("-h", "--help") for a in args):
        groups = {g: presets("train.yaml", g) for g in ("task", "policy", "recipe")}
        print(help_text(PROG, __doc__.split("\n\n")[0], TrainJobConfig, groups))
        return
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    rank0 = int(os.environ.get("RANK", "0")) == 0
    plan = None
    try:  # a wrong key or value, run directory or dataset fails here, in one line, before any run dir exists
        if any(a.split("=")[0] in INFO_FLAGS for a in args):
            load_config(overrides)
        else:
            plan = _preflight(overrides, rank0)
    except user_errors() as e:
        if debug:
            raise
        _fail(e, to_log=False)
    if override_value(args, "hydra.job.name") is None:
        args.append("hydra.job.name=train")  # the log is <run>/train.log
    if plan is not None and rank0:
        args = [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={plan.run_dir}"]
        if plan.resume:
            args.append("hydra.output_subdir=null")  # .hydra/ keeps the command that started the run
    elif rank0 and (out := override_value(args, "train.output_dir")) and override_value(args, "hydra.run.dir") is None:
        args.append(f"hydra.run.dir={out}")  # one run directory for hydra's files and ours
    if not rank0:  # only rank 0 writes: the others get rank 0's run dir
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                 "hydra.run.dir=."]  # fmt: skip
    sys.argv = [sys.argv[0], *args]
    register("train", TrainJobConfig)
    task = functools.wraps(_task)(functools.partial(_task, plan=plan, debug=debug))
    hydra.main(config_path=str(config_dir("train.yaml")), config_name="train", version_base="1.3")(task)()

"""Closed-loop evaluation during training: the exported (EMA) policy run in the dataset's simulated task.

Every ``eval.every`` steps and at the last step, ``streamdp-train`` writes a training checkpoint and runs
``eval.episodes`` seeded episodes of its ``pretrained/`` export with the checkpoint's own sampler, through
the evaluator of ``streamdp-eval`` (:func:`streamdp.sim.evaluate.evaluate`; episode i resets env and
policy with ``eval.seed + i``, so every evaluation of a run sees the same initial states; on the CPU, in
this process, with the training's torch threads). Its
``result.json`` goes into the checkpoint (``step_<N>/eval/``, written atomically), the summary into
``metrics.jsonl``, TensorBoard and the log.

**Which task.** The task card names it (``task=pusht``), and the dataset must record that it came from
that simulated task: ``streamdp-collect`` writes the task's ``robot_type`` and its description as the
per-frame task string. A dataset that records neither (a real robot's, a diffusion_policy zarr buffer)
or another task, or whose dimensions, cameras, image size or fps differ from the simulated task's,
trains without closed-loop evaluation, and the log says why in one line.

**Best checkpoint.** Evaluated checkpoints are ranked by success rate, ties broken by mean max coverage
where the task reports it (PushT), else by the negative mean final distance (the arm); a later
checkpoint that equals the best takes its place. ``checkpoints/best`` points at the best one, and
pruning (``train.keep_last``) never deletes it.

**Determinism.** The evaluator seeds torch's global generator per episode; every RNG state (torch,
CUDA, numpy, Python) is saved before an evaluation and restored after it, so a run trains exactly as
with evaluation off. Only rank 0 evaluates (the other ranks wait at the checkpoint barrier).

The simulator is imported only when an evaluation runs (``streamdp.sim`` sits above ``streamdp.policy``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streamdp.policy.checkpoint import atomic_write_dir
from streamdp.policy.train.checkpoints import (
    BEST,
    PRETRAINED,
    capture_rng,
    fsync_dir,
    linked,
    list_checkpoints,
    point_last,
    restore_rng,
)
from streamdp.policy.train.config import ClosedLoopConfig
from streamdp.policy.train.data import DatasetInfo

log = logging.getLogger("streamdp.train")
EVAL_DIR = "eval"
RESULT = "result.json"


# -------------------------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class SimTask:
    """The simulated task a run evaluates in: the task card's name, observation mode and make_task kwargs."""

    name: str
    obs_mode: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    n_tasks: int = 1  # tasks the kwargs name (a suite: LIBERO's task_id=all), each run for eval.episodes


def sim_task(task: Mapping[str, Any], info: DatasetInfo) -> tuple[SimTask | None, str]:
    """The simulated task the dataset was collected in, or None; and a one-line sentence saying which or
    why none (for the run's log)."""
    name, obs_mode = str(task.get("name")), str(task.get("obs_mode") or "state")
    kwargs = dict(task.get("kwargs") or {})
    off = "closed-loop evaluation off"
    from streamdp.sim.tasks import list_tasks, task_spec, task_variants

    if name not in list_tasks():
        return None, f"{off}: task {name!r} is not a simulated task (those are {', '.join(list_tasks())})"
    if info.robot_type is None:
        return None, (f"{off}: dataset {info.source} records no robot_type, so it was not collected in the "
                      f"simulated task {name!r} (a real robot's or a converted dataset)")  # fmt: skip
    try:  # a suite (LIBERO's task_id=all): every task of it, each evaluated for eval.episodes episodes
        specs = [task_spec(name, obs_mode, **v) for v in task_variants(name, **kwargs)]
    except Exception as e:  # noqa: BLE001 - a task whose simulator is not installed, a bad kwarg
        return None, f"{off}: cannot build the simulated task {name}/{obs_mode}: {type(e).__name__}: {e}"
    spec = specs[0]
    if info.robot_type != spec.robot_type:
        return None, (f"{off}: dataset {info.source} was recorded on robot_type {info.robot_type!r}, the "
                      f"simulated task {name!r} is {spec.robot_type!r}")  # fmt: skip
    missing = [s.description for s in specs if info.tasks and s.description and s.description not in info.tasks]
    if missing:
        return None, (f"{off}: dataset {info.source} holds the tasks {info.tasks[:3]}{'...' * (len(info.tasks) > 3)}, "
                      f"not the simulated task's {missing[0]!r} (task.kwargs?)")  # fmt: skip
    image = (spec.image_shape[2], spec.image_shape[0], spec.image_shape[1]) if spec.image_shape else None
    pairs = (  # (what, simulated task, dataset)
        ("state dim", spec.state_dim, info.state_dim),
        ("action dim", spec.action_dim, info.action_dim),
        ("fps", float(spec.fps), float(info.fps)),
        ("cameras", sorted(spec.camera_names), sorted(info.camera_names)),
        ("image shape (C, H, W)", image, tuple(info.image_shape) if info.image_shape else None),
    )
    problems = [f"{what} {theirs} (task) != {ours} (dataset)" for what, theirs, ours in pairs if theirs != ours]
    if problems:
        return None, f"{off}: the simulated task {name}/{obs_mode} does not fit the dataset: {'; '.join(problems)}"
    suite = f" ({len(specs)} tasks)" if len(specs) > 1 else ""
    sim = SimTask(name, obs_mode, kwargs, len(specs))
    return sim, f"closed-loop evaluation in the simulated task {name}/{obs_mode}{suite}"


# -------------------------------------------------------------------------------------------- a score
@dataclass(frozen=True)
class Score:
    """The summary of one evaluation (one sampler: the checkpoint's own)."""

    step: int
    success_rate: float
    successes: int
    episodes: int
    mean_max_coverage: float | None  # tasks that report coverage (PushT)
    mean_final_distance: float | None  # tasks that report a distance (the arm)
    sampler: str
    seconds: float

    def key(self) -> tuple[float, float]:
        """Ranking: success rate, then coverage (higher is better), else the negative final distance."""
        if self.mean_max_coverage is not None:
            tie = self.mean_max_coverage
        elif self.mean_final_distance is not None:
            tie = -self.mean_final_distance
        else:
            tie = 0.0
        return self.success_rate, tie

    def beats(self, best: Score | None) -> bool:
        """Whether this evaluation replaces `best` (ties go to the later checkpoint)."""
        return best is None or self.key() >= best.key()

    def record(self) -> dict[str, Any]:
        """The ``eval`` entry of this step's ``metrics.jsonl`` row."""
        return {
            "success_rate": self.success_rate,
            "successes": self.successes,
            "episodes": self.episodes,
            "mean_max_coverage": self.mean_max_coverage,
            "mean_final_distance": self.mean_final_distance,
            "sampler": self.sampler,
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        parts = [f"success {self.successes}/{self.episodes} = {self.success_rate:.2f}"]
        if self.mean_max_coverage is not None:
            parts.append(f"mean max coverage {self.mean_max_coverage:.3f}")
        if self.mean_final_distance is not None:
            parts.append(f"mean final distance {self.mean_final_distance:.4f}")
        return f"{', '.join(parts)} ({self.sampler}, {self.seconds:.1f} s)"

    @classmethod
    def from_result(cls, step: int, result: Mapping[str, Any]) -> Score:
        """From the evaluator's ``result.json`` (its only run)."""
        r = result["runs"][0]
        return cls(step, float(r["success_rate"]), int(r["successes"]), int(r["episodes"]),
                   r.get("mean_max_coverage"), r.get("mean_final_distance"), str(r["label"]),
                   float(result.get("seconds", 0.0)))  # fmt: skip


def read_score(ckpt: Path) -> Score | None:
    """The evaluation stored in checkpoint `ckpt` (None when it has none or it is unreadable)."""
    from streamdp.policy.train.checkpoints import STEP_RE

    path = ckpt / EVAL_DIR / RESULT
    m = STEP_RE.match(ckpt.name)
    if not path.is_file() or m is None:
        return None
    try:
        return Score.from_result(int(m.group(1)), json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


# -------------------------------------------------------------------------------------- the evaluator
class ClosedLoop:
    """Rank 0's evaluator: runs the schedule, stores each result in its checkpoint, keeps ``best``."""

    def __init__(self, task: SimTask, cfg: ClosedLoopConfig, ckpt_root: Path) -> None:
        self.task, self.cfg, self.root = task, cfg, ckpt_root
        self.best: Score | None = None

    def restore_best(self) -> None:
        """The best evaluation among the checkpoints on disk (``best``'s, else the best stored one), and
        ``best`` pointing at it; for a resumed run, after the checkpoints past its step are gone."""
        current = linked(self.root, BEST)
        self.best = read_score(current) if current is not None else None
        if self.best is None:
            for _, p in list_checkpoints(self.root):
                s = read_score(p)
                if s is not None and s.beats(self.best):
                    self.best, current = s, p
            link = self.root / BEST
            if self.best is None and link.is_symlink():
                link.unlink()  # names a checkpoint that is gone
            elif self.best is not None and current is not None:
                point_last(self.root, current.name, BEST)

    def evaluate(self, ckpt: Path, step: int) -> Score:
        """Run the episodes on ``ckpt/pretrained`` (RNG states restored afterwards) and store the result
        in ``ckpt/eval/``; ``best`` moves to `ckpt` when it is the best so far."""
        from streamdp.sim.evaluate import evaluate

        rng = capture_rng()
        try:
            result = evaluate(
                ckpt / PRETRAINED, self.task.name, episodes=self.cfg.episodes, seed=self.cfg.seed,
                obs_mode=self.task.obs_mode, task_kwargs=self.task.kwargs, max_steps=self.cfg.max_steps,
                workers=1, threads=torch.get_num_threads(), warmup=False, progress=False,
            )  # fmt: skip
        finally:
            restore_rng(*rng)
        doc = result.to_dict()
        text = json.dumps(doc, indent=1, default=_plain)
        atomic_write_dir(ckpt / EVAL_DIR, lambda tmp: (tmp / RESULT).write_text(text))
        fsync_dir(ckpt)
        score = Score.from_result(step, doc)
        self.consider(score, ckpt)
        return score

    def consider(self, score: Score, ckpt: Path) -> bool:
        """Make `ckpt` the best when `score` beats the best so far."""
        if not score.beats(self.best):
            return False
        point_last(self.root, ckpt.name, BEST)
        self.best = score
        return True

    def is_best(self, step: int) -> bool:
        return self.best is not None and self.best.step == step


def _plain(o: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    return o.tolist() if hasattr(o, "tolist") else str(o)

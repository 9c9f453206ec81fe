"""Record scripted-expert demonstrations of a task into a LeRobot v3 dataset (lerobot 0.4.4 API).

    streamdp-collect task=NAME episodes=N [obs_mode=state|image] [root=DIR] [seed=S] [repo_id=...]
    python -m streamdp.sim.collect task=pusht episodes=20 root=/tmp/pusht_demo

Overrides are hydra ``key=value`` pairs on ``config/collect.yaml``; ``task=NAME`` selects
``config/task/NAME.yaml`` (whose ``kwargs`` go to ``make_task``, e.g. ``task.kwargs.task_id=3`` for
LIBERO). Episode ``i`` resets with seed ``seed + i``, so a run is reproducible; only successful
episodes are written (an episode is buffered in memory and discarded on failure).

**Suites.** Options naming several tasks (LIBERO's ``task.kwargs.task_id=all`` or ``=[0,2]``) collect
``episodes`` episodes of each task, one task after the other, into one dataset; each frame's ``task``
is its own task's instruction (LeRobot's task_index), and the expert's success is reported per task.
``merge=[DIR,...] root=OUT`` instead joins datasets collected separately (same features, fps and robot)
into one with lerobot's own ``aggregate_datasets``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamdp.policy import cli
from streamdp.policy.cli import UserError, opt

from .tasks import (
    ACTION_KEY,
    STATE_KEY,
    Expert,
    TaskCard,
    TaskSpec,
    make_expert,
    make_task,
    task_spec,
    task_variants,
)


@dataclass
class EpisodeRecord:
    """One rolled-out episode: LeRobot frames (without ``task``), outcome and length."""

    seed: int
    success: bool
    frames: list[dict[str, np.ndarray]]
    info: dict[str, Any]


@dataclass
class TaskCount:
    """The expert's outcome on one task of a collection."""

    task: str  # the task string written with its frames (the instruction)
    kwargs: dict[str, Any]
    episodes_tried: int = 0
    episodes_kept: int = 0

    @property
    def success_rate(self) -> float:
        return self.episodes_kept / max(self.episodes_tried, 1)


@dataclass
class CollectResult:
    """What a collection run produced."""

    task: str
    obs_mode: str
    repo_id: str
    root: Path
    episodes_tried: int
    episodes_kept: int
    frames: int
    kept_seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0
    per_task: list[TaskCount] = field(default_factory=list)  # one entry per task of a suite (or the one task)

    @property
    def success_rate(self) -> float:
        return self.episodes_kept / max(self.episodes_tried, 1)


def rollout(
    env: Any,
    expert: Expert,
    spec: TaskSpec,
    seed: int,
    max_steps: int | None = None,
) -> EpisodeRecord:
    """Run one expert episode from ``reset(seed=seed)``; frame t pairs observation t with action t."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    frames: list[dict[str, np.ndarray]] = []
    success = False
    limit = max_steps or spec.max_episode_steps
    for _ in range(limit):
        action = np.asarray(expert.act(obs, env), dtype=np.float32)
        frame = {STATE_KEY: np.asarray(obs[STATE_KEY], dtype=np.float32), ACTION_KEY: action}
        for key in spec.image_keys:
            frame[key] = obs[key]
        frames.append(frame)
        obs, _, terminated, truncated, info = env.step(action)
        success = bool(info.get("is_success", False))
        if terminated or truncated:
            break
    return EpisodeRecord(seed=seed, success=success, frames=frames, info=info)


def collect(
    task: str,
    episodes: int,
    root: str | Path | None = None,
    obs_mode: str = "state",
    seed: int = 0,
    repo_id: str | None = None,
    task_kwargs: dict[str, Any] | None = None,
    expert_kwargs: dict[str, Any] | None = None,
    expert_factory: Callable[[Any], Expert] | None = None,
    use_videos: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> CollectResult:
    """Roll out the task's scripted expert for ``episodes`` seeded episodes and save the successful
    ones as a LeRobot dataset at ``root`` (default: LeRobot's cache, ``$HF_LEROBOT_HOME/repo_id``).

    ``task_kwargs`` naming several tasks of a suite (:func:`~streamdp.sim.tasks.task_variants`) collect
    ``episodes`` episodes of each into the one dataset. ``expert_factory(env)`` replaces the task's expert
    (e.g. a deliberately weak one in tests). If no episode succeeds, the dataset folder is removed again
    and ``episodes_kept`` is 0.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    variants = task_variants(task, **dict(task_kwargs or {}))
    specs = [task_spec(task, obs_mode, **v) for v in variants]
    spec = specs[0]
    for v, other in zip(variants[1:], specs[1:]):
        if (other.lerobot_features(use_videos), other.fps, other.robot_type) != (
            spec.lerobot_features(use_videos), spec.fps, spec.robot_type
        ):
            raise ValueError(f"{task} {v} has other features, fps or robot than {variants[0]}: one dataset cannot "
                             "hold both; collect them separately")  # fmt: skip
    repo_id = repo_id or f"streamdp/{task}_{obs_mode}"
    root = _fresh_root(root, overwrite)

    import datasets
    from tqdm import tqdm

    from .lerobot_writer import LeRobotWriter

    dataset = LeRobotWriter.create(
        repo_id=repo_id,
        fps=spec.fps,
        root=root,
        features=spec.lerobot_features(use_videos=use_videos),
        robot_type=spec.robot_type,
        use_videos=use_videos,
    )
    result = CollectResult(task, obs_mode, repo_id, Path(dataset.root), 0, 0, 0)
    t0 = time.perf_counter()
    # lerobot's save_episode runs a datasets.map with its own bar per episode: keep only ours
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    bar = tqdm(total=episodes * len(variants), desc=f"collect {task}/{obs_mode}", unit="ep", disable=not progress)
    try:
        for kw, sp in zip(variants, specs):
            count = TaskCount(sp.description, dict(kw))
            result.per_task.append(count)
            env = make_task(task, obs_mode, seed=seed, **kw)
            try:
                expert = expert_factory(env) if expert_factory is not None else make_expert(
                    task, env, **(expert_kwargs or {}))  # fmt: skip
                for i in range(episodes):
                    rec = rollout(env, expert, sp, seed + i)
                    result.episodes_tried += 1
                    count.episodes_tried += 1
                    if rec.success:
                        for frame in rec.frames:
                            dataset.add_frame({**frame, "task": sp.description})
                        dataset.save_episode()
                        result.episodes_kept += 1
                        count.episodes_kept += 1
                        result.frames += len(rec.frames)
                        result.kept_seeds.append(seed + i)
                    bar.update(1)
                    bar.set_postfix(kept=f"{result.episodes_kept}/{result.episodes_tried}")
            finally:
                env.close()
            if len(variants) > 1:
                print(f"[collect] {task} {_kw_text(kw)} ({sp.description!r}): expert kept "
                      f"{count.episodes_kept}/{count.episodes_tried}")  # fmt: skip
    finally:
        bar.close()
        dataset.finalize()
        if bars_were_on:
            datasets.enable_progress_bars()
        if result.episodes_kept == 0:
            # An episode-less folder is not a loadable LeRobot dataset: leave nothing half-made behind.
            shutil.rmtree(result.root, ignore_errors=True)
    result.seconds = time.perf_counter() - t0
    if result.episodes_kept == 0:
        print(f"[collect] {task}/{obs_mode}: no successful episode in {result.episodes_tried} tries; nothing written")
        return result
    tasks = f" of {len(variants)} tasks" if len(variants) > 1 else ""
    print(
        f"[collect] {task}/{obs_mode}: kept {result.episodes_kept}/{result.episodes_tried} episodes{tasks} "
        f"({result.frames} frames) in {result.seconds:.1f}s -> {result.root}"
    )
    return result


def _kw_text(kw: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in kw.items())


def _fresh_root(root: str | Path | None, overwrite: bool) -> Path | None:
    """The dataset folder to create: refused when it exists, unless `overwrite` (then deleted first)."""
    if root is None:
        return None
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"dataset folder {root} already exists (pass overwrite=true to replace it)")
        shutil.rmtree(root)
    return root


def merge(
    inputs: Sequence[str | Path], root: str | Path, repo_id: str | None = None, overwrite: bool = False
) -> Path:
    """Join LeRobot v3 datasets (same features, fps and robot_type) into one at `root` with lerobot's
    ``aggregate_datasets``: episodes in input order, the union of their task strings, stats aggregated."""
    from lerobot.datasets.aggregate import aggregate_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    paths = [Path(p).expanduser() for p in inputs]
    if len(paths) < 2:
        raise UserError(f"merge needs at least two datasets, got {[str(p) for p in paths]}")
    metas = []
    for p in paths:
        if not (p / "meta" / "info.json").is_file():
            raise UserError(f"merge: {p} is not a LeRobot dataset (no meta/info.json)")
        metas.append(LeRobotDatasetMetadata(f"local/{p.name}", root=p))
    first = metas[0]
    for p, m in zip(paths[1:], metas[1:]):
        diff = [name for name, a, b in (("fps", m.fps, first.fps), ("robot_type", m.robot_type, first.robot_type),
                                        ("features", m.features, first.features)) if a != b]  # fmt: skip
        if diff:
            raise UserError(f"merge: {p} differs from {paths[0]} in {', '.join(diff)}: they cannot be one dataset")
    out = _fresh_root(root, overwrite)
    assert out is not None
    aggregate_datasets(
        repo_ids=[f"local/{p.name}" for p in paths],
        aggr_repo_id=repo_id or f"local/{out.name}",
        roots=paths,
        aggr_root=out,
    )
    merged = LeRobotDatasetMetadata(repo_id or f"local/{out.name}", root=out)
    print(f"[collect] merged {len(paths)} datasets: {merged.total_episodes} episodes, {merged.total_frames} frames, "
          f"{len(merged.tasks)} task(s) -> {out}")  # fmt: skip
    return out


@dataclass
class CollectConfig:
    """``streamdp-collect`` keys (config/collect.yaml holds presets only)."""

    task: TaskCard = opt(help="task preset", factory=TaskCard)
    episodes: int = opt(50, "episodes to TRY; unsuccessful ones are dropped, so the dataset may hold fewer")
    obs_mode: str | None = opt(None, "state | image (null: the task card's)")
    seed: int = opt(0, "episode i resets with seed + i (reproducible)")
    root: str | None = opt(None, "dataset folder, new unless overwrite=true (null: $HF_LEROBOT_HOME/<repo_id>)")
    repo_id: str | None = opt(None, "null: streamdp/<task>_<obs_mode>")
    use_videos: bool = opt(False, "camera features stored as mp4 'video' instead of per-frame 'image'")
    overwrite: bool = opt(False, "replace an existing dataset folder")
    progress: bool = opt(True, "tqdm bar")
    merge: list[str] | None = opt(None, "instead of collecting: join these LeRobot datasets into root "
                                  "(lerobot's aggregate_datasets), e.g. merge=[data/t0,data/t2] root=data/suite")


def load_config(overrides: Sequence[str] = ()) -> CollectConfig:
    """The validated ``streamdp-collect`` config of these ``key=value`` overrides."""
    return cli.load_config("collect", CollectConfig, overrides, ("merge",))


def run(cfg: CollectConfig) -> int:
    """Collect (or merge) as `cfg` says; exit code 1 when no episode succeeded."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if cfg.merge is not None:
        if cfg.root is None:
            raise UserError("merge=[...] needs root=DIR, the merged dataset's folder")
        merge(cfg.merge, cfg.root, cfg.repo_id, cfg.overwrite)
        return 0
    result = collect(
        task=cfg.task.name,
        episodes=cfg.episodes,
        root=cfg.root,
        obs_mode=cfg.obs_mode or cfg.task.obs_mode,
        seed=cfg.seed,
        repo_id=cfg.repo_id,
        task_kwargs=cfg.task.kwargs,
        use_videos=cfg.use_videos,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    return 0 if result.episodes_kept > 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-collect task=NAME episodes=N [key=value ...]``."""
    return cli.run_job("streamdp-collect", "collect", CollectConfig, run, argv, doc=__doc__.split("\n\n")[0],
                       list_keys=("merge",))


if __name__ == "__main__":
    raise SystemExit(main())

"""Record scripted-expert demonstrations of a task into a LeRobot v3 dataset (lerobot 0.4.4 API).

    streamdp-collect task=NAME episodes=N [obs_mode=state|image] [root=DIR] [seed=S] [repo_id=...]
    python -m streamdp.sim.collect task=pusht episodes=20 root=/tmp/pusht_demo

Overrides are hydra ``key=value`` pairs on ``config/collect.yaml``; ``task=NAME`` selects
``config/task/NAME.yaml`` (whose ``kwargs`` go to ``make_task``, e.g. ``task.kwargs.task_id=3`` for
LIBERO). Episode ``i`` resets with seed ``seed + i``, so a run is reproducible; only successful
episodes are written (an episode is buffered in memory and discarded on failure).
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
from streamdp.policy.cli import opt

from .tasks import ACTION_KEY, STATE_KEY, Expert, TaskCard, TaskSpec, make_expert, make_task, task_spec


@dataclass
class EpisodeRecord:
    """One rolled-out episode: LeRobot frames (without ``task``), outcome and length."""

    seed: int
    success: bool
    frames: list[dict[str, np.ndarray]]
    info: dict[str, Any]


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

    ``expert_factory(env)`` replaces the task's expert (e.g. a deliberately weak one in tests). If no
    episode succeeds, the dataset folder is removed again and ``episodes_kept`` is 0.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    task_kwargs = dict(task_kwargs or {})
    spec = task_spec(task, obs_mode, **task_kwargs)
    repo_id = repo_id or f"streamdp/{task}_{obs_mode}"
    if root is not None:
        root = Path(root)
        if root.exists():
            if not overwrite:
                raise FileExistsError(
                    f"dataset folder {root} already exists (pass overwrite=true to replace it)"
                )
            shutil.rmtree(root)

    import datasets
    from tqdm import tqdm

    from .lerobot_writer import LeRobotWriter

    env = make_task(task, obs_mode, seed=seed, **task_kwargs)
    expert = (
        expert_factory(env) if expert_factory is not None else make_expert(task, env, **(expert_kwargs or {}))
    )
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
    bar = tqdm(range(episodes), desc=f"collect {task}/{obs_mode}", unit="ep", disable=not progress)
    try:
        for i in bar:
            rec = rollout(env, expert, spec, seed + i)
            result.episodes_tried += 1
            if rec.success:
                for frame in rec.frames:
                    dataset.add_frame({**frame, "task": spec.description})
                dataset.save_episode()
                result.episodes_kept += 1
                result.frames += len(rec.frames)
                result.kept_seeds.append(seed + i)
            bar.set_postfix(kept=f"{result.episodes_kept}/{result.episodes_tried}")
    finally:
        dataset.finalize()
        env.close()
        if bars_were_on:
            datasets.enable_progress_bars()
    result.seconds = time.perf_counter() - t0
    if result.episodes_kept == 0:
        # An episode-less folder is not a loadable LeRobot dataset: leave nothing half-made behind.
        shutil.rmtree(result.root, ignore_errors=True)
        print(f"[collect] {task}/{obs_mode}: no successful episode in {episodes} tries; nothing written")
        return result
    print(
        f"[collect] {task}/{obs_mode}: kept {result.episodes_kept}/{result.episodes_tried} episodes "
        f"({result.frames} frames) in {result.seconds:.1f}s -> {result.root}"
    )
    return result


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


def load_config(overrides: Sequence[str] = ()) -> CollectConfig:
    """The validated ``streamdp-collect`` config of these ``key=value`` overrides."""
    return cli.load_config("collect", CollectConfig, overrides)


def run(cfg: CollectConfig) -> int:
    """Collect as `cfg` says; exit code 1 when no episode succeeded."""
    os.environ.setdefault("MUJOCO_GL", "egl")
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
    return cli.run_job("streamdp-collect", "collect", CollectConfig, run, argv, doc=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())

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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import ACTION_KEY, STATE_KEY, Expert, TaskSpec, make_expert, make_task, task_spec


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
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    env = make_task(task, obs_mode, seed=seed, **task_kwargs)
    expert = (
        expert_factory(env) if expert_factory is not None else make_expert(task, env, **(expert_kwargs or {}))
    )
    dataset = LeRobotDataset.create(
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


def config_dir() -> Path:
    """The hydra config folder: the source tree's ``config/`` (editable install), else the installed
    ``share/streamdp/config``."""
    candidates = [
        Path(__file__).resolve().parents[1] / "config",
        Path(sys.prefix) / "share" / "streamdp" / "config",
    ]
    for c in candidates:
        if (c / "collect.yaml").is_file():
            return c
    raise FileNotFoundError(f"collect.yaml not found in any of {[str(c) for c in candidates]}")


def load_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``collect.yaml`` with hydra ``key=value`` overrides (``task=NAME`` picks the task card)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose(config_name="collect", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``streamdp-collect task=NAME episodes=N ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"expected key=value overrides, got {bad}", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf

    os.environ.setdefault("MUJOCO_GL", "egl")
    cfg = load_config(args)
    task_kwargs = OmegaConf.to_container(cfg.task.kwargs, resolve=True) if cfg.task.get("kwargs") else {}
    result = collect(
        task=cfg.task.name,
        episodes=int(cfg.episodes),
        root=cfg.root,
        obs_mode=cfg.obs_mode or cfg.task.obs_mode,
        seed=int(cfg.seed),
        repo_id=cfg.repo_id,
        task_kwargs=task_kwargs,
        use_videos=bool(cfg.use_videos),
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
    )
    return 0 if result.episodes_kept > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

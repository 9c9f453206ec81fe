"""Train a small policy on a task's scripted-expert demonstrations, in memory.

The fast path for tests, the first-run demo and benchmarks: roll out the expert (only successful
episodes are kept, as in collection), cut training windows, fit, and save a checkpoint that
`Policy.from_pretrained` loads. Datasets on disk and long runs go through `streamdp-collect` and
`streamdp-train` instead; this shares their rollout, windowing and training loop
(`streamdp.policy.train.trainer.train_in_memory`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from streamdp.policy.config import PolicyConfig, UnetConfig
from streamdp.policy.policy import Policy
from streamdp.policy.train.config import TrainConfig
from streamdp.policy.train.data import EpisodeWindows, Window
from streamdp.policy.train.trainer import train_in_memory
from streamdp.sim.collect import rollout
from streamdp.sim.tasks import make_expert, make_task, task_spec

DEFAULT_POLICY = dict(
    n_obs_steps=2, n_action_steps=4, horizon=16, sampler="sdp", num_inference_steps=20, primer="state",
    unet=UnetConfig(down_dims=(64, 128), step_embed_dim=32, cond_dim=64),
)


def expert_episodes(
    task: str, episodes: int, seed: int = 0, obs_mode: str = "state", progress: bool = False, **task_kw: Any
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Successful expert episodes as {key: (T, ...)} arrays, and how many were tried."""
    spec = task_spec(task, obs_mode, **task_kw)
    env = make_task(task, obs_mode=obs_mode, **task_kw)
    expert = make_expert(task, env)
    kept, tried = [], 0
    try:
        bar = tqdm(total=episodes, disable=not progress, desc=f"expert {task}")
        while len(kept) < episodes and tried < 3 * episodes:
            try:
                rec = rollout(env, expert, spec, seed=seed + tried)
            except ValueError:  # e.g. the arm expert's IK finds no in-limits solution for this seed's target
                rec = None
            tried += 1
            if rec is not None and rec.success:
                kept.append({k: np.stack([f[k] for f in rec.frames]) for k in rec.frames[0]})
                bar.update(1)
        bar.close()
    finally:
        env.close()
    if not kept:
        raise RuntimeError(f"the {task} expert succeeded in none of {tried} episodes")
    return kept, tried


def policy_config_for(task: str, obs_mode: str = "state", **overrides: Any) -> PolicyConfig:
    """A PolicyConfig whose dims, names and fps come from the task spec (never typed by hand)."""
    spec = task_spec(task, obs_mode)
    image_shape = None
    if spec.image_keys:
        h, w, c = spec.image_shape  # type: ignore[misc]
        image_shape = (c, h, w)
    fields = dict(DEFAULT_POLICY)
    fields.update(overrides)
    # The buffer can be primed with the measured state only where actions are position targets of
    # the first state entries (joint1.target_pos <-> joint1.pos).
    primer_ok = spec.state_dim >= spec.action_dim and spec.state_names[: spec.action_dim] == [
        n.replace("target_", "") for n in spec.action_names
    ]
    if fields.get("primer") == "state" and not primer_ok and "primer" not in overrides:
        fields["primer"] = "zeros"
    return PolicyConfig(
        action_dim=spec.action_dim, state_dim=spec.state_dim, fps=float(spec.fps),
        joint_names=list(spec.joint_names), action_names=list(spec.action_names),
        camera_names=list(spec.camera_names) if spec.image_keys else [], image_shape=image_shape, **fields,
    )


def train_expert_policy(
    task: str,
    out: str | Path | None = None,
    episodes: int = 30,
    steps: int = 1500,
    seed: int = 0,
    obs_mode: str = "state",
    batch_size: int = 64,
    lr: float = 1e-3,
    progress: bool = False,
    **policy_overrides: Any,
) -> Policy:
    """Expert demos -> windows -> the shared trainer -> Policy (EMA weights); saved to `out` when given."""
    cfg = policy_config_for(task, obs_mode, **policy_overrides)
    eps, _ = expert_episodes(task, episodes, seed=seed, obs_mode=obs_mode, progress=progress)
    cameras = [f"observation.images.{c}" for c in cfg.camera_names]
    data = EpisodeWindows(eps, Window(cfg.n_obs_steps, cfg.horizon), cameras, fps=cfg.fps, source=f"{task} expert")
    tcfg = TrainConfig.in_memory(steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    policy, losses = train_in_memory(cfg, data, tcfg)
    policy.extras["training"] = {"task": task, "episodes": len(eps), "steps": steps, "seed": seed,
                                 "final_loss": float(np.mean(losses[-50:]))}
    if out is not None:
        policy.save_pretrained(out)
    return policy

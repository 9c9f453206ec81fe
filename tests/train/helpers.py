"""Builders for training tests: tiny LeRobot datasets and zarr replay buffers, config overrides, runs."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

# A tiny SDP: fast enough for hundreds of CPU steps in a test.
TINY = [
    "policy=sdp_unet_tiny",
    "policy.n_obs_steps=2",
    "policy.n_action_steps=4",
    "policy.horizon=12",
    "train.lr=1e-3",
    "train.warmup_steps=10",
    "train.num_threads=1",
    "train.progress=false",
    "train.eval_batches=1",
    "eval.every=0",  # closed-loop evaluation: tests/train/test_closed_loop.py turns it on
]


def tiny_overrides(root: Path | str, run: Path | str, steps: int, batch: int = 16, **extra: object) -> list[str]:
    out = [
        f"dataset.root={root}",
        f"train.output_dir={run}",
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        *TINY,
    ]
    out += [f"{k}={v}" for k, v in extra.items()]
    return out


def train_inprocess(overrides: Sequence[str]):
    from streamdp.policy.train.cli import load_config, train

    return train(load_config(list(overrides)))


def read_metrics(run: Path | str) -> dict[int, float]:
    """step -> loss; a later line for the same step (a resumed run) replaces an earlier one; closed-loop
    evaluation rows are skipped."""
    out: dict[int, float] = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        MUJOCO_GL="egl",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    )
    return env


def python() -> str:
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lerobot(
    root: Path,
    lengths: Sequence[int],
    state_dim: int = 2,
    action_dim: int = 2,
    fps: int = 10,
    image: tuple[int, int] | None = None,
    video: bool = False,
    bad: dict[tuple[str, int, int], float] | None = None,
    seed: int = 0,
    tasks: Sequence[str] = ("test",),
) -> Path:
    """A LeRobot v3 dataset of smooth random-walk episodes; `bad[(key, episode, frame)] = value` plants a
    value (NaN, inf) in dim 0 of that frame; episode e's task string is ``tasks[e % len(tasks)]``."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    datasets.disable_progress_bars()
    feats = {
        "observation.state": {
            "dtype": "float32",
            "shape": (state_dim,),
            "names": [f"j{i}.pos" for i in range(state_dim)],
        },
        "action": {"dtype": "float32", "shape": (action_dim,), "names": [f"j{i}.target" for i in range(action_dim)]},
    }
    if image is not None:
        feats["observation.images.cam"] = {
            "dtype": "video" if video else "image",
            "shape": (image[0], image[1], 3),
            "names": ["height", "width", "channels"],
        }
    ds = LeRobotDataset.create("test/ds", fps=fps, features=feats, root=root, use_videos=video)
    rng = np.random.default_rng(seed)
    bad = bad or {}
    for e, n in enumerate(lengths):
        state = np.cumsum(rng.normal(0, 0.1, (n, state_dim)), axis=0).astype(np.float32)
        action = np.cumsum(rng.normal(0, 0.1, (n, action_dim)), axis=0).astype(np.float32)
        for t in range(n):
            frame = {"observation.state": state[t].copy(), "action": action[t].copy(), "task": tasks[e % len(tasks)]}
            for (key, be, bt), v in bad.items():
                if be == e and bt == t:
                    frame[key] = frame[key].copy()
                    frame[key][0] = v
            if image is not None:
                frame["observation.images.cam"] = rng.integers(0, 255, (image[0], image[1], 3), dtype=np.uint8)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


def write_zarr(
    path: Path,
    episodes: Sequence[dict[str, np.ndarray]],
    chunks: int = 64,
) -> Path:
    """A diffusion_policy replay buffer: data/<key> (frames first) and meta/episode_ends."""
    import zarr

    root = zarr.open(str(path), mode="w")
    data, meta = root.create_group("data"), root.create_group("meta")
    keys = episodes[0].keys() if episodes else []
    for k in keys:
        arr = np.concatenate([ep[k] for ep in episodes])
        data.create_dataset(k, data=arr, chunks=(chunks, *arr.shape[1:]))
    ends = np.cumsum([len(next(iter(ep.values()))) for ep in episodes]).astype(np.int64)
    meta.create_dataset("episode_ends", data=ends, shape=(len(ends),), dtype=np.int64)
    return path


# The schema of the public lerobot/pusht dataset (LeRobot v3): one camera named observation.image (not
# observation.images.<cam>), a 2-D agent position, a 2-D target, and shape-(1,) reward/done/success.
PUBLIC_PUSHT_FEATURES = {
    "observation.image": {"dtype": "video", "shape": (96, 96, 3), "names": ["height", "width", "channel"]},
    "observation.state": {"dtype": "float32", "shape": (2,), "names": {"motors": ["motor_0", "motor_1"]}},
    "action": {"dtype": "float32", "shape": (2,), "names": {"motors": ["motor_0", "motor_1"]}},
    "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    "next.success": {"dtype": "bool", "shape": (1,), "names": None},
}


def make_public_pusht(root: Path, lengths: Sequence[int], seed: int = 0, video: bool = True) -> Path:
    """A small dataset in the public lerobot/pusht layout (PUBLIC_PUSHT_FEATURES), written by lerobot through
    the project's LeRobotWriter: agent positions and targets in pixels ([0, 512]^2), random 96x96 frames, the
    reward ramping up and done/success on each episode's last frame."""
    import datasets

    from streamdp.sim.lerobot_writer import LeRobotWriter

    datasets.disable_progress_bars()
    feats = {k: dict(v) for k, v in PUBLIC_PUSHT_FEATURES.items()}
    if not video:
        feats["observation.image"]["dtype"] = "image"
    ds = LeRobotWriter.create("lerobot/pusht", fps=10, features=feats, root=root, use_videos=video)
    rng = np.random.default_rng(seed)
    for n in lengths:
        agent = np.clip(256 + np.cumsum(rng.normal(0, 8, (n + 1, 2)), axis=0), 0, 512).astype(np.float32)
        for t in range(n):
            ds.add_frame({
                "observation.image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
                "observation.state": agent[t],
                "action": agent[t + 1],
                "next.reward": np.array([t / max(n - 1, 1)], dtype=np.float32),
                "next.done": np.array([t == n - 1]),
                "next.success": np.array([t == n - 1]),
                "task": "Push the T-shaped block onto the T-shaped target.",
            })
        ds.save_episode()
    ds.finalize()
    return root

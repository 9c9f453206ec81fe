"""Training windows from whole episodes: To observation steps and Tp action steps per sample.

Slot i of a window starting at frame t holds action t - To + 1 + i, so the first To - 1 slots are in the
past (diffusion_policy's layout). Indices outside the episode are edge-padded and flagged in
``action_is_pad``, the LeRobot convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from streamdp.policy.normalize import Normalizer


def episode_windows(
    episodes: Sequence[dict[str, np.ndarray]],
    to: int,
    tp: int,
    obs_keys: Sequence[str] = ("observation.state",),
    action_key: str = "action",
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, np.ndarray]]]:
    """Stack every window of every episode; also return stats over all frames (images excluded)."""
    if not episodes:
        raise ValueError("no episodes to build training windows from")
    out: dict[str, list[np.ndarray]] = {k: [] for k in (*obs_keys, action_key, "action_is_pad")}
    for e, ep in enumerate(episodes):
        n = len(ep[action_key])
        if n == 0:
            raise ValueError(f"episode {e} is empty")
        for t in range(n):
            oi = np.clip(np.arange(t - to + 1, t + 1), 0, n - 1)
            ai = np.arange(t - to + 1, t - to + 1 + tp)
            for k in obs_keys:
                out[k].append(ep[k][oi])
            out[action_key].append(ep[action_key][np.clip(ai, 0, n - 1)])
            out["action_is_pad"].append((ai < 0) | (ai >= n))
    data = {k: torch.as_tensor(np.stack(v)) for k, v in out.items()}
    low_dim = [k for k in (*obs_keys, action_key) if not k.startswith("observation.images.")]
    stats = Normalizer.compute({k: np.concatenate([ep[k] for ep in episodes]) for k in low_dim})
    return data, stats

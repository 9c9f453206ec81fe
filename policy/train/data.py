"""Training data: one sample interface over LeRobot v3 datasets, diffusion_policy zarr replay buffers
(both in :mod:`streamdp.policy.train.sources`) and episodes held in memory (:class:`EpisodeWindows`).

Every sample is one anchor frame t of one episode, as a dict of tensors::

    observation.state            (To, Ds)        frames t-To+1 .. t (clamped to the episode: first frame repeated)
    observation.images.<cam>     (To, C, H, W)   float in [0, 1], same frames
    action                       (Tp, Da)        frames t-To+1 .. t-To+Tp (edge-padded outside the episode)
    action_is_pad                (Tp,)           True where the action frame lies outside the episode
    task_index                   (To,)           multi-task datasets only: each frame's row in DatasetInfo.tasks
    episode_index, frame_index   ()              where the sample comes from (for error messages)

That is LeRobot's ``delta_timestamps`` convention (offsets (i - To + 1) / fps for i in range(Tp) for the
action, of which the first To-1 lie in the past, as in diffusion_policy); every source other than
LeRobot's own reader is windowed by the one function :func:`window`. Data are checked once at load time
(missing features, dimensions, NaN/inf with episode and frame, short episodes, empty datasets,
unreadable videos); every problem is a :class:`DataError` whose message says what is wrong and where.
Stored images are mapped to [0, 1] by one divisor per camera, decided at load time (:func:`image_scale`).

lerobot 0.4.4 traps handled here (docs/architecture.md): the module-level torchcodec decoder cache must
not be shared with forked DataLoader workers (cleared before forking, replaced in each worker), and
decoding in the main process runs with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY, TASK_INDEX_KEY
from streamdp.policy.normalize import Normalizer
from streamdp.policy.train.config import SHORT_EPISODE_MODES

ACTION_KEY = "action"
PAD_KEY = "action_is_pad"
STAMP_KEYS = ("episode_index", "frame_index")  # where a sample comes from (not a model input)
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
SCALE_SAMPLE_FRAMES = 64  # frames inspected to tell a float camera's 0-255 range from 0-1
log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad or unreadable training data; the message names the dataset, feature, episode and frame."""


# ----------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    """To observation frames and Tp action frames per sample, relative to the anchor frame."""

    n_obs_steps: int
    horizon: int

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < self.n_obs_steps:
            raise ValueError(f"need 1 <= n_obs_steps <= horizon, got To={self.n_obs_steps}, Tp={self.horizon}")

    @property
    def obs_offsets(self) -> np.ndarray:
        return np.arange(-self.n_obs_steps + 1, 1)

    @property
    def action_offsets(self) -> np.ndarray:
        return np.arange(self.horizon) - self.n_obs_steps + 1

    def delta_timestamps(self, fps: float, obs_keys: Sequence[str], action_key: str) -> dict[str, list[float]]:
        """LeRobot ``delta_timestamps``: seconds relative to the anchor frame for each key."""
        obs = [float(d) / fps for d in self.obs_offsets]
        out = {k: list(obs) for k in obs_keys}
        out[action_key] = [float(d) / fps for d in self.action_offsets]
        return out


def window(
    t: int | np.ndarray, start: int | np.ndarray, end: int | np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of a window around absolute frame t of the episode [start, end), clamped to the
    episode, and the padding mask (LeRobot's ``_get_query_indices``). Scalars give (len(offsets),);
    arrays of B anchors (with their episodes' bounds) give (B, len(offsets)) in one go."""
    idx = np.asarray(t)[..., None] + offsets
    start, end = np.asarray(start)[..., None], np.asarray(end)[..., None]
    return np.clip(idx, start, end - 1), (idx < start) | (idx >= end)


# ----------------------------------------------------------------------------------------- descriptions
@dataclass(frozen=True)
class FeatureMap:
    """Which dataset keys feed the policy: the state, the action and each camera (name -> key)."""

    state: str | None = STATE_KEY
    action: str = ACTION_KEY
    cameras: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def camera_name(key: str) -> str:
        """``observation.images.top`` -> ``top``; any other key -> its last dotted component."""
        return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]

    @classmethod
    def from_keys(cls, state: str | None, action: str, image_keys: Sequence[str]) -> FeatureMap:
        cams = {cls.camera_name(k): k for k in image_keys}
        if len(cams) != len(image_keys):
            raise DataError(f"camera keys {list(image_keys)} map to duplicate camera names {sorted(cams)}")
        return cls(state, action, cams)


@dataclass
class DatasetInfo:
    """What the policy configuration takes from the data instead of from the user, and what the data
    records about where it came from (``robot_type`` and task strings: LeRobot's metadata)."""

    source: str
    fps: float
    state_dim: int
    action_dim: int
    state_names: list[str]
    action_names: list[str]
    camera_names: list[str]
    image_shape: tuple[int, int, int] | None  # (C, H, W)
    num_episodes: int
    num_frames: int
    episode_lengths: list[int]
    robot_type: str | None = None  # streamdp-collect writes its simulated task's (TaskSpec.robot_type)
    tasks: list[str] = field(default_factory=list)  # the per-frame task strings, in task_index order
    rename_map: dict[str, str] = field(default_factory=dict)  # dataset key -> policy key, the renames applied

    @property
    def joint_names(self) -> list[str]:
        return joint_names_from(self.state_names, self.action_names)

    @property
    def conditioning_tasks(self) -> list[str]:
        """The tasks a policy trained on these data is conditioned on: all of them when there are several
        (a multi-task dataset, e.g. a LIBERO suite), none for one task (the policy takes no task input)."""
        return list(self.tasks) if len(self.tasks) > 1 else []


def joint_names_from(state_names: Sequence[str], action_names: Sequence[str] = ()) -> list[str]:
    """Joint names from the state's feature names: the prefixes of ``<joint>.pos`` / ``<joint>_pos``
    entries when there are any (``joint1.pos`` -> ``joint1``); else the state entries the actions are
    position targets of, when every action names one (``agent.target_x`` -> ``agent.x``, the rule the
    evaluator's hold uses); else the state names themselves."""
    joints = [n[: -len(".pos")] for n in state_names if n.endswith((".pos", "_pos"))]
    if joints:
        return joints
    targets = [n.replace("target_", "") for n in action_names]
    if targets and all(t in state_names for t in targets):
        return targets
    return list(state_names)


def check_finite(
    where: str, key: str, arr: np.ndarray, episodes: np.ndarray, frames: np.ndarray, names: Sequence[str]
) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = np.nonzero(bad.reshape(len(arr), -1))
        r, c = int(rows[0]), int(cols[0])
        dim = f"{c} ({names[c]})" if c < len(names) else str(c)
        raise DataError(
            f"{where}: {key!r} has a non-finite value ({arr.reshape(len(arr), -1)[r, c]}) at episode "
            f"{int(episodes[r])}, frame {int(frames[r])}, dim {dim}; {len(np.unique(rows))} frame(s) affected "
            "in all. Fix or drop those episodes."
        )


def check_lengths(
    where: str, lengths: Sequence[int], episode_ids: Sequence[int], window_: Window, short_episodes: str
) -> None:
    if short_episodes not in SHORT_EPISODE_MODES:
        raise DataError(f"short_episodes must be one of {SHORT_EPISODE_MODES}, got {short_episodes!r}")
    short = [(int(e), int(n)) for e, n in zip(episode_ids, lengths) if n < window_.horizon]
    if short and short_episodes == "error":
        e, n = short[0]
        raise DataError(
            f"{where}: episode {e} has {n} frames, shorter than the horizon Tp={window_.horizon} "
            f"({len(short)} short episode(s) in all: {[s[0] for s in short][:10]}); set "
            "dataset.short_episodes=pad to pad them (LeRobot convention) or drop them"
        )
    if short:
        log.info("%s: %d episode(s) shorter than Tp=%d are edge-padded", where, len(short), window_.horizon)


def image_scale(frames: Any, where: str) -> float:
    """The divisor that maps a camera's stored values to [0, 1], decided once per camera at load time.

    Integer frames are 0-255. Float frames may be 0-255 or 0-1: the largest value over up to
    SCALE_SAMPLE_FRAMES evenly spaced frames tells which, so every window of the camera is scaled
    the same (a per-window test would leave a dark 0-255 window, all below 1, unscaled).
    """
    dtype = np.dtype(frames.dtype)
    if dtype.kind in "uib":
        return 1.0 if dtype.kind == "b" else 255.0
    if dtype.kind != "f":
        raise DataError(f"{where}: images must be uint8 or float, got {dtype}")
    n = len(frames)
    pick = np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE_FRAMES)).astype(np.int64)) if n else []
    peak = max((float(np.nanmax(np.asarray(frames[int(j)]))) for j in pick), default=0.0)
    return 255.0 if peak > 1.0 + 1e-6 else 1.0


def _channels_last(shape: Sequence[int]) -> bool:
    return shape[-1] in (1, 3, 4) and shape[-3] not in (1, 3, 4)


def chw_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of one stored frame, (H, W, C) or (C, H, W)."""
    return (shape[-1], shape[-3], shape[-2]) if _channels_last(shape) else (shape[-3], shape[-2], shape[-1])


def to_chw_float(img: np.ndarray | torch.Tensor, scale: float, where: str) -> torch.Tensor:
    """(..., H, W, C) or (..., C, H, W) frames -> float CHW in [0, 1], divided by the camera's `scale`."""
    t = torch.as_tensor(np.asarray(img))
    if _channels_last(t.shape):
        t = t.movedim(-1, -3)
    if t.dtype == torch.uint8:
        return t.float() / scale
    t = t.float()
    if not torch.isfinite(t).all():
        raise DataError(f"{where}: image contains NaN or inf")
    return t / scale if scale != 1.0 else t


# ------------------------------------------------------------------------------------------ base class
class WindowedDataset(Dataset):
    """Shared part of every source: episode bounds, in-memory low-dimensional arrays, windowing, stats."""

    info: DatasetInfo
    stats: dict[str, dict[str, np.ndarray]]

    def __init__(self, window_: Window, fmap: FeatureMap) -> None:
        self.window = window_
        self.fmap = fmap
        self._lowdim: dict[str, np.ndarray] = {}  # policy key -> (N, D) float32
        self._task_index: np.ndarray | None = None  # (N,) int64 row in info.tasks; multi-task data only
        self._ep_from = np.zeros(0, dtype=np.int64)
        self._ep_to = np.zeros(0, dtype=np.int64)
        self._ep_of_frame = np.zeros(0, dtype=np.int64)
        self._episode_ids = np.zeros(0, dtype=np.int64)

    def _set_episodes(self, starts: np.ndarray, ends: np.ndarray, episode_ids: np.ndarray) -> None:
        self._ep_from, self._ep_to = starts.astype(np.int64), ends.astype(np.int64)
        self._episode_ids = episode_ids.astype(np.int64)
        n = int(ends[-1]) if len(ends) else 0
        self._ep_of_frame = np.repeat(np.arange(len(starts)), ends - starts) if n else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ep_of_frame)

    def locate(self, i: int) -> tuple[int, int]:
        """(episode index, frame index within the episode) of sample i."""
        e = int(self._ep_of_frame[i])
        return int(self._episode_ids[e]), int(i - self._ep_from[e])

    def _bounds(self, i: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of the episode of sample(s) i."""
        e = self._ep_of_frame[i]
        return self._ep_from[e], self._ep_to[e]

    def _lowdim_window(self, i: int | np.ndarray) -> dict[str, torch.Tensor]:
        """State and action windows of sample i, or of a batch of samples when i is an index array."""
        s, t = self._bounds(i)
        out: dict[str, torch.Tensor] = {}
        if STATE_KEY in self._lowdim:
            oi, _ = window(i, s, t, self.window.obs_offsets)
            out[STATE_KEY] = torch.from_numpy(self._lowdim[STATE_KEY][oi])
        ai, pad = window(i, s, t, self.window.action_offsets)
        out[ACTION_KEY] = torch.from_numpy(self._lowdim[ACTION_KEY][ai])
        out[PAD_KEY] = torch.from_numpy(pad)
        if self._task_index is not None:
            out[TASK_INDEX_KEY] = self._task_window(i)
        return out

    def _task_window(self, i: int | np.ndarray) -> torch.Tensor:
        """Task indices of the observation frames of sample(s) i (To,) or (B, To)."""
        assert self._task_index is not None
        oi, _ = window(i, *self._bounds(i), self.window.obs_offsets)
        return torch.from_numpy(self._task_index[oi])

    def _stamp(self, item: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        ep, frame = self.locate(i)
        item[STAMP_KEYS[0]] = torch.tensor(ep)
        item[STAMP_KEYS[1]] = torch.tensor(frame)
        return item

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples `indices` stacked, training inputs only (no episode/frame bookkeeping)."""
        items = [self[int(i)] for i in np.asarray(indices)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0] if k not in STAMP_KEYS}

    def lowdim_arrays(self) -> dict[str, np.ndarray]:
        """Every frame's state and action (N, D), as loaded (for tests and statistics)."""
        return dict(self._lowdim)


# ------------------------------------------------------------------------------------------ in memory
class EpisodeWindows(WindowedDataset):
    """Episodes held in memory as {key: (T, ...)} arrays (scripted-expert demos, the synthetic task),
    windowed like the datasets on disk; :meth:`batch` cuts a whole batch of windows in one go."""

    def __init__(
        self,
        episodes: Sequence[Mapping[str, np.ndarray]],
        window_: Window,
        camera_keys: Sequence[str] = (),
        fps: float = 0.0,
        source: str = "memory",
    ) -> None:
        super().__init__(window_, FeatureMap.from_keys(STATE_KEY, ACTION_KEY, camera_keys))
        where = f"in-memory episodes ({source})"
        if not episodes:
            raise DataError(f"{where}: no episodes to build training windows from")
        lengths = np.asarray([len(ep[ACTION_KEY]) for ep in episodes], dtype=np.int64)
        if np.any(lengths == 0):
            raise DataError(f"{where}: episode {int(np.argmin(lengths))} is empty")
        ends = np.cumsum(lengths)
        self._set_episodes(ends - lengths, ends, np.arange(len(episodes)))
        keys = [k for k in (STATE_KEY, ACTION_KEY) if k in episodes[0]]
        for k in keys:
            self._lowdim[k] = np.concatenate([np.asarray(ep[k]) for ep in episodes]).astype(np.float32, copy=False)
        self._images = {cam: np.concatenate([ep[key] for ep in episodes]) for cam, key in self.fmap.cameras.items()}
        self._scale = {cam: image_scale(frames, f"{where} camera {cam!r}") for cam, frames in self._images.items()}
        self._where = where
        self.stats = Normalizer.compute(self._lowdim)
        self.info = DatasetInfo(
            source=source,
            fps=float(fps),
            state_dim=self._lowdim[STATE_KEY].shape[1] if STATE_KEY in self._lowdim else 0,
            action_dim=self._lowdim[ACTION_KEY].shape[1],
            state_names=[],
            action_names=[],
            camera_names=list(self._images),
            image_shape=next((chw_shape(f.shape[1:]) for f in self._images.values()), None),
            num_episodes=len(episodes),
            num_frames=int(ends[-1]),
            episode_lengths=[int(n) for n in lengths],
        )

    def _windows(self, i: int | np.ndarray) -> dict[str, torch.Tensor]:
        out = self._lowdim_window(i)
        if self._images:
            oi, _ = window(i, *self._bounds(i), self.window.obs_offsets)
            for cam, frames in self._images.items():
                out[IMAGE_PREFIX + cam] = to_chw_float(frames[oi], self._scale[cam], f"{self._where} camera {cam!r}")
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._stamp(self._windows(i), i)

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples `indices` stacked, training inputs only: cut in one go, not sample by sample."""
        return self._windows(np.asarray(indices, dtype=np.int64))


# ---------------------------------------------------------------------------------- loader workers
def _clear_decoder_cache() -> None:
    """Close lerobot's module-level torchcodec decoders (0.4.4 trap: they must not cross a fork)."""
    try:
        from lerobot.datasets import video_utils
    except ImportError:  # pragma: no cover - lerobot is a hard dependency of this module's users
        return
    cache = getattr(video_utils, "_default_decoder_cache", None)
    if cache is not None and hasattr(cache, "clear"):
        cache.clear()


def worker_init(_: int) -> None:
    """DataLoader worker_init_fn: a fresh decoder cache per worker (never the parent's handles)."""
    torch.set_num_threads(1)
    try:
        from lerobot.datasets import video_utils
    except ImportError:  # pragma: no cover
        return
    if hasattr(video_utils, "_default_decoder_cache"):
        video_utils._default_decoder_cache = video_utils.VideoDecoderCache()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """0.4.4 trap: decode with one torch thread in the main process (no-op inside workers)."""
    if torch.utils.data.get_worker_info() is not None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# -------------------------------------------------------------------------------------------- sampler
class ResumableSampler(DistributedSampler):
    """Shuffled epochs cut to whole *global* batches, each global batch split into contiguous per-rank
    slices, and able to start mid-epoch.

    Epoch e's order is ``randperm(N)`` from a generator seeded with ``seed + e`` (as DistributedSampler),
    truncated to ``N // global_batch`` batches. Rank r takes slice [r*b, (r+1)*b) of every global batch
    (b = global_batch / world), so the union over ranks of step s's batches is the same set of samples
    for any world size: a run can resume on a different number of GPUs and see the same data.
    """

    def __init__(
        self,
        dataset: Dataset,
        global_batch: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        if global_batch % num_replicas:
            raise ValueError(f"global batch {global_batch} is not divisible by the {num_replicas} ranks")
        self.global_batch = global_batch
        self.local_batch = global_batch // num_replicas
        self.n = len(dataset)  # type: ignore[arg-type]
        self.batches_per_epoch = self.n // global_batch
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the dataset has {self.n} samples, fewer than one global batch of {global_batch}: "
                "lower train.batch_size or add data"
            )
        self.start_batch = 0

    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at global batch `batch` of epoch `epoch`."""
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch position {batch} outside [0, {self.batches_per_epoch}]")
        self.set_epoch(epoch)
        self.start_batch = batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.arange(self.n)
        b = self.local_batch
        batches = perm[: self.batches_per_epoch * self.global_batch].view(self.batches_per_epoch, self.global_batch)
        mine = batches[self.start_batch :, self.rank * b : (self.rank + 1) * b]
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch


def make_loader(
    dataset: WindowedDataset,
    sampler: ResumableSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """DataLoader over the sampler's per-rank batches (last partial batch dropped).

    It gets its own generator: creating an iterator then never draws from the global torch RNG, which
    keeps a resumed run's random stream identical to the uninterrupted run's."""
    if num_workers > 0:
        _clear_decoder_cache()
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=sampler.local_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        worker_init_fn=worker_init if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def prefork() -> None:
    """Call before an iterator forks DataLoader workers (each new epoch without persistent workers)."""
    _clear_decoder_cache()

"""Training data: LeRobot v3 datasets and diffusion_policy zarr replay buffers behind one sample interface.

Every sample is one anchor frame t of one episode, as a dict of tensors::

    observation.state            (To, Ds)        frames t-To+1 .. t (clamped to the episode: first frame repeated)
    observation.images.<cam>     (To, C, H, W)   float in [0, 1], same frames
    action                       (Tp, Da)        frames t-To+1 .. t-To+Tp (edge-padded outside the episode)
    action_is_pad                (Tp,)           True where the action frame lies outside the episode
    episode_index, frame_index   ()              where the sample comes from (for error messages)

That is LeRobot's ``delta_timestamps`` convention (offsets (i - To + 1) / fps for i in range(Tp) for the
action, of which the first To-1 lie in the past, as in diffusion_policy); zarr buffers are windowed the
same way by :func:`window`. Data are checked once at load time (missing features, dimensions, NaN/inf
with episode and frame, short episodes, empty datasets, unreadable videos); every problem is a
:class:`DataError` whose message says what is wrong and where.

lerobot 0.4.4 traps handled here (DESIGN.md section 8): the module-level torchcodec decoder cache must
not be shared with forked DataLoader workers (cleared before forking, replaced in each worker), and
decoding in the main process runs with ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY
from streamdp.policy.normalize import Normalizer

ACTION_KEY = "action"
PAD_KEY = "action_is_pad"
SHORT_EPISODE_MODES = ("pad", "error")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
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


def window(t: int, start: int, end: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of a window around absolute frame t of the episode [start, end), clamped to the
    episode, and the padding mask (LeRobot's ``_get_query_indices``)."""
    idx = t + offsets
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
    """What the policy configuration takes from the data instead of from the user."""

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

    @property
    def joint_names(self) -> list[str]:
        return joint_names_from(self.state_names)


def joint_names_from(state_names: Sequence[str]) -> list[str]:
    """Joint names from the state's feature names: the prefixes of ``<joint>.pos`` / ``<joint>_pos``
    entries when there are any (``joint1.pos`` -> ``joint1``), else the state names themselves."""
    joints = [n[: -len(".pos")] for n in state_names if n.endswith((".pos", "_pos"))]
    return joints if joints else list(state_names)


def _names(feature: Mapping[str, Any], dim: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, Mapping):  # older LeRobot layout: {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, (list, tuple)) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return []


def _check_finite(
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


def _check_lengths(
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


def _to_chw_float(img: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """(..., H, W, C) or (..., C, H, W) uint8 or float (0-255 or 0-1) -> float CHW in [0, 1]."""
    t = torch.as_tensor(np.asarray(img))
    if t.shape[-1] in (1, 3, 4) and t.shape[-3] not in (1, 3, 4):
        t = t.movedim(-1, -3)
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    t = t.float()
    if not torch.isfinite(t).all():
        raise DataError(f"{where}: image contains NaN or inf")
    return t / 255.0 if float(t.max()) > 1.0 + 1e-6 else t


# ------------------------------------------------------------------------------------------ base class
class WindowedDataset(Dataset):
    """Shared part of both formats: episode bounds, in-memory low-dimensional arrays, windowing, stats."""

    info: DatasetInfo
    stats: dict[str, dict[str, np.ndarray]]

    def __init__(self, window_: Window, fmap: FeatureMap) -> None:
        self.window = window_
        self.fmap = fmap
        self._lowdim: dict[str, np.ndarray] = {}  # policy key -> (N, D) float32
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

    def _lowdim_window(self, i: int) -> dict[str, torch.Tensor]:
        e = int(self._ep_of_frame[i])
        s, t = int(self._ep_from[e]), int(self._ep_to[e])
        out: dict[str, torch.Tensor] = {}
        if STATE_KEY in self._lowdim:
            oi, _ = window(i, s, t, self.window.obs_offsets)
            out[STATE_KEY] = torch.from_numpy(self._lowdim[STATE_KEY][oi])
        ai, pad = window(i, s, t, self.window.action_offsets)
        out[ACTION_KEY] = torch.from_numpy(self._lowdim[ACTION_KEY][ai])
        out[PAD_KEY] = torch.from_numpy(pad)
        return out

    def _stamp(self, item: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
        ep, frame = self.locate(i)
        item["episode_index"] = torch.tensor(ep)
        item["frame_index"] = torch.tensor(frame)
        return item

    def lowdim_arrays(self) -> dict[str, np.ndarray]:
        """Every frame's state and action (N, D), as loaded (for tests and statistics)."""
        return dict(self._lowdim)


# -------------------------------------------------------------------------------------------- LeRobot
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
def _single_thread() -> Iterator[None]:
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


class LeRobotWindows(WindowedDataset):
    """A local LeRobot v3 dataset read through ``LeRobotDataset(repo_id, root, delta_timestamps=...)``.

    ``cache_lowdim``: for datasets without cameras, state and action windows are cut from in-memory
    arrays (read once from the parquet table) with exactly LeRobot's clamping and padding, instead of
    one ``LeRobotDataset.__getitem__`` per sample (~1.5 ms each); tests check both paths agree.
    """

    def __init__(
        self,
        root: str | Path,
        fmap: FeatureMap,
        window_: Window,
        repo_id: str | None = None,
        short_episodes: str = "pad",
        cache_lowdim: bool = True,
        video_backend: str | None = None,
        check_videos: bool = True,
    ) -> None:
        super().__init__(window_, fmap)
        self.root = Path(root).expanduser()
        where = f"LeRobot dataset {self.root}"
        if not self.root.is_dir():
            raise DataError(f"{where} does not exist (dataset.root)")
        if not (self.root / "meta" / "info.json").is_file():
            raise DataError(f"{where} has no meta/info.json: not a LeRobot v3 dataset (or a wrong dataset.root)")
        self._check_layout(where)
        self.repo_id = repo_id or f"local/{self.root.name}"
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        try:
            meta = LeRobotDatasetMetadata(self.repo_id, root=self.root)
        except Exception as e:  # noqa: BLE001 - anything lerobot raises means "cannot read it"
            raise DataError(f"{where}: cannot read its metadata: {type(e).__name__}: {e}") from e
        if meta.total_episodes == 0 or meta.total_frames == 0 or meta.episodes is None or len(meta.episodes) == 0:
            raise DataError(f"{where} is empty ({meta.total_episodes} episodes, {meta.total_frames} frames)")
        feats = meta.features
        self._check_features(where, feats)
        fps = float(meta.fps)
        state_dim = int(np.prod(feats[fmap.state]["shape"])) if fmap.state else 0
        action_dim = int(np.prod(feats[fmap.action]["shape"]))
        image_shape = self._image_shape(where, feats)
        self.video_keys = [k for k in fmap.cameras.values() if feats[k]["dtype"] == "video"]

        eps = meta.episodes
        starts = np.asarray(eps["dataset_from_index"], dtype=np.int64)
        ends = np.asarray(eps["dataset_to_index"], dtype=np.int64)
        ep_ids = np.asarray(eps["episode_index"], dtype=np.int64)
        order = np.argsort(starts)
        starts, ends, ep_ids = starts[order], ends[order], ep_ids[order]
        if starts[0] != 0 or np.any(starts[1:] != ends[:-1]) or np.any(ends <= starts):
            raise DataError(f"{where}: episode index ranges are not contiguous: {list(zip(starts, ends))[:5]}...")
        _check_lengths(where, list(ends - starts), list(ep_ids), window_, short_episodes)
        if check_videos and self.video_keys:
            self._check_videos(where, meta, ep_ids)

        obs_keys = ([fmap.state] if fmap.state else []) + list(fmap.cameras.values())
        self.delta_timestamps = window_.delta_timestamps(fps, obs_keys, fmap.action)
        try:
            self.dataset = LeRobotDataset(
                self.repo_id, root=self.root, delta_timestamps=self.delta_timestamps, video_backend=video_backend
            )
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{where}: LeRobotDataset could not load it: {type(e).__name__}: {e}") from e
        self._set_episodes(starts, ends, ep_ids)
        if len(self.dataset) != len(self):
            raise DataError(f"{where}: {len(self.dataset)} frames in data/ but the episodes cover {len(self)}")

        # One pass over the low-dimensional columns: finiteness scan, statistics fallback, fast path.
        table = self.dataset.hf_dataset.data
        ep_col = table.column("episode_index").to_numpy()
        fr_col = table.column("frame_index").to_numpy()
        for pkey, dkey, dim in ((STATE_KEY, fmap.state, state_dim), (ACTION_KEY, fmap.action, action_dim)):
            if dkey is None:
                continue
            arr = _column(table, dkey, dim, where)
            _check_finite(where, dkey, arr, ep_col, fr_col, _names(feats[dkey], dim))
            self._lowdim[pkey] = arr
        self.fast = cache_lowdim and not fmap.cameras
        self.stats = self._stats(where, meta)
        self.info = DatasetInfo(
            source=str(self.root),
            fps=fps,
            state_dim=state_dim,
            action_dim=action_dim,
            state_names=_names(feats[fmap.state], state_dim) if fmap.state else [],
            action_names=_names(feats[fmap.action], action_dim),
            camera_names=list(fmap.cameras),
            image_shape=image_shape,
            num_episodes=len(starts),
            num_frames=len(self),
            episode_lengths=[int(n) for n in ends - starts],
        )

    # -- load-time checks ----------------------------------------------------------------------------
    def _check_layout(self, where: str) -> None:
        """Files a local v3 dataset needs, checked here because lerobot would try the Hub for them."""
        try:
            info = json.loads((self.root / "meta" / "info.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: meta/info.json is unreadable: {e}") from e
        version = str(info.get("codebase_version", "?"))
        if not version.startswith("v3"):
            raise DataError(
                f"{where} is LeRobot format {version}, not v3.0: convert it with "
                "lerobot/datasets/v30/convert_dataset_v21_to_v30.py"
            )
        if not info.get("total_episodes") or not info.get("total_frames"):
            raise DataError(
                f"{where} is empty ({info.get('total_episodes', 0)} episodes, {info.get('total_frames', 0)} frames)"
            )
        for sub in ("meta/episodes", "data"):
            if not any((self.root / sub).glob("*/*.parquet")):
                raise DataError(f"{where} is incomplete: no parquet files under {sub}/")

    def _check_features(self, where: str, feats: Mapping[str, Mapping[str, Any]]) -> None:
        fmap = self.fmap
        wanted = [("state", fmap.state), ("action", fmap.action)] + [
            (f"camera {c!r}", k) for c, k in fmap.cameras.items()
        ]
        for role, key in wanted:
            if key is not None and key not in feats:
                raise DataError(
                    f"{where} has no feature {key!r} (wanted as the {role}); its features are "
                    f"{sorted(k for k in feats if k not in BOOKKEEPING)}: fix the task card's features "
                    "(or task.obs_mode) or use the right dataset"
                )
        for role, key in (("state", fmap.state), ("action", fmap.action)):
            if key is None:
                continue
            f = feats[key]
            if f["dtype"] in ("image", "video", "string") or len(f["shape"]) != 1:
                raise DataError(
                    f"{where}: {role} feature {key!r} must be a 1-D float vector, "
                    f"got dtype {f['dtype']} shape {f['shape']}"
                )
        for cam, key in fmap.cameras.items():
            if feats[key]["dtype"] not in ("image", "video"):
                raise DataError(
                    f"{where}: camera {cam!r} feature {key!r} has dtype {feats[key]['dtype']}, not image/video"
                )

    def _image_shape(self, where: str, feats: Mapping[str, Mapping[str, Any]]) -> tuple[int, int, int] | None:
        shapes = {}
        for cam, key in self.fmap.cameras.items():
            f = feats[key]
            shape, names = tuple(int(x) for x in f["shape"]), f.get("names") or []
            if len(shape) != 3:
                raise DataError(f"{where}: camera feature {key!r} has shape {shape}, expected 3 dims")
            if list(names)[:1] == ["channels"] or (shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)):
                shapes[cam] = shape  # stored CHW
            else:
                shapes[cam] = (shape[2], shape[0], shape[1])  # LeRobot's usual (height, width, channels)
        if len(set(shapes.values())) > 1:
            raise DataError(f"{where}: cameras have different image shapes {shapes}; the policy needs one shape")
        return next(iter(shapes.values())) if shapes else None

    def _check_videos(self, where: str, meta: Any, ep_ids: np.ndarray) -> None:
        """Every video file exists and decodes (its first frame); the message names its episodes."""
        files: dict[Path, list[int]] = {}
        for key in self.video_keys:
            for e in ep_ids:
                files.setdefault(self.root / meta.get_video_file_path(int(e), key), []).append(int(e))
        for path, eps in files.items():
            what = f"{where}: video {path.relative_to(self.root)} (episodes {eps[:10]}{'...' if len(eps) > 10 else ''})"
            if not path.is_file():
                raise DataError(f"{what} is missing")
            try:
                with _single_thread():
                    from torchcodec.decoders import VideoDecoder

                    dec = VideoDecoder(str(path), seek_mode="approximate")
                    dec.get_frame_at(0)
            except Exception as e:  # noqa: BLE001 - torchcodec raises RuntimeError/ValueError variants
                raise DataError(f"{what} is unreadable: {type(e).__name__}: {e}") from e

    def _stats(self, where: str, meta: Any) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        meta_stats = meta.stats or {}
        for pkey, dkey in ((STATE_KEY, self.fmap.state), (ACTION_KEY, self.fmap.action)):
            if dkey is None:
                continue
            s = meta_stats.get(dkey)
            dim = self._lowdim[pkey].shape[1]
            if s is not None and all(n in s for n in ("min", "max", "mean", "std")):
                st = {n: np.asarray(s[n], dtype=np.float64).reshape(-1) for n in ("min", "max", "mean", "std")}
                if all(v.shape == (dim,) and np.isfinite(v).all() for v in st.values()):
                    out[pkey] = st
                    continue
                log.warning("%s: meta/stats.json for %r is malformed or non-finite; recomputing", where, dkey)
            else:
                log.warning("%s: meta/stats.json lacks stats for %r; computing them from the data", where, dkey)
            out[pkey] = Normalizer.compute({pkey: self._lowdim[pkey]})[pkey]
        return out

    # -- samples --------------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.fast:
            return self._stamp(self._lowdim_window(i), i)
        try:
            if self.video_keys:
                with _single_thread():
                    item = self.dataset[i]
            else:
                item = self.dataset[i]
        except Exception as e:  # noqa: BLE001
            ep, frame = self.locate(i)
            raise DataError(
                f"LeRobot dataset {self.root}: reading episode {ep}, frame {frame} failed: {type(e).__name__}: {e}"
            ) from e
        out: dict[str, torch.Tensor] = {}
        if self.fmap.state:
            out[STATE_KEY] = item[self.fmap.state].float()
        out[ACTION_KEY] = item[self.fmap.action].float()
        out[PAD_KEY] = item[f"{self.fmap.action}_is_pad"].bool()
        for cam, key in self.fmap.cameras.items():
            out[IMAGE_PREFIX + cam] = item[key].float()
        return self._stamp(out, i)


def _column(table: Any, key: str, dim: int, where: str) -> np.ndarray:
    col = table.column(key).combine_chunks()
    if col.null_count:
        raise DataError(f"{where}: feature {key!r} has {col.null_count} missing (null) values")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    if flat.size != len(col) * dim:
        raise DataError(f"{where}: feature {key!r} holds {flat.size} values for {len(col)} frames x {dim} dims")
    return np.ascontiguousarray(flat.reshape(len(col), dim), dtype=np.float32)


# ----------------------------------------------------------------------------------------------- zarr
class ZarrWindows(WindowedDataset):
    """A diffusion_policy replay buffer: ``data/<key>`` arrays (frames first) and ``meta/episode_ends``.

    The state is the concatenation of ``state_keys`` (e.g. ``[agent_pos]`` or ``[keypoint, agent_pos]``),
    cameras map names to image arrays (N, H, W, C) or (N, C, H, W), uint8 or float (0-255 or 0-1).
    Low-dimensional arrays are loaded into memory; images are read lazily (zarr v2, DESIGN.md section 8).
    """

    def __init__(
        self,
        path: str | Path,
        window_: Window,
        fps: float,
        state_keys: Sequence[str] = ("state",),
        action_key: str = "action",
        cameras: Mapping[str, str] | None = None,
        state_names: Sequence[str] | None = None,
        action_names: Sequence[str] | None = None,
        short_episodes: str = "pad",
    ) -> None:
        cameras = dict(cameras or {})
        super().__init__(window_, FeatureMap("+".join(state_keys) or None, action_key, cameras))
        import zarr

        self.path = Path(path).expanduser()
        where = f"zarr replay buffer {self.path}"
        if not self.path.exists():
            raise DataError(f"{where} does not exist (dataset.root)")
        try:
            root = zarr.open(str(self.path), mode="r")
            data, ends = root["data"], root["meta/episode_ends"]
        except Exception as e:  # noqa: BLE001 - KeyError, PathNotFoundError, ValueError ...
            raise DataError(
                f"{where}: cannot open it as a replay buffer with data/<key> and meta/episode_ends: "
                f"{type(e).__name__}: {e}"
            ) from e
        if not fps or fps <= 0:
            raise DataError(f"{where}: a replay buffer stores no fps: set dataset.zarr.fps (or task.fps)")
        ends = np.asarray(ends[:], dtype=np.int64).reshape(-1)
        if len(ends) == 0 or ends[-1] == 0:
            raise DataError(f"{where} is empty (meta/episode_ends holds {len(ends)} episodes)")
        starts = np.concatenate([[0], ends[:-1]])
        if np.any(ends <= starts):
            e = int(np.nonzero(ends <= starts)[0][0])
            raise DataError(
                f"{where}: meta/episode_ends is not strictly increasing (episode {e}: {starts[e]}..{ends[e]})"
            )
        n = int(ends[-1])
        available = sorted(data.array_keys())
        for role, key in (
            [("state", k) for k in state_keys]
            + [("action", action_key)]
            + [(f"camera {c!r}", k) for c, k in cameras.items()]
        ):
            if key not in available:
                raise DataError(f"{where} has no array data/{key} (wanted as the {role}); it has {available}")
            if data[key].shape[0] != n:
                raise DataError(f"{where}: data/{key} has {data[key].shape[0]} frames but episode_ends says {n}")
        ep_ids = np.arange(len(ends))
        _check_lengths(where, list(ends - starts), list(ep_ids), window_, short_episodes)
        self._set_episodes(starts, ends, ep_ids)
        ep_col = self._ep_of_frame
        fr_col = np.arange(n) - starts[ep_col]

        def vec(key: str) -> np.ndarray:
            a = np.asarray(data[key][:], dtype=np.float32)
            return a.reshape(n, -1) if a.ndim != 2 else a

        action = vec(action_key)
        _check_finite(where, f"data/{action_key}", action, ep_col, fr_col, action_names or [])
        self._lowdim[ACTION_KEY] = action
        if state_keys:
            parts = [vec(k) for k in state_keys]
            for k, p in zip(state_keys, parts):
                _check_finite(where, f"data/{k}", p, ep_col, fr_col, [])
            self._lowdim[STATE_KEY] = np.ascontiguousarray(np.concatenate(parts, axis=1))
        self._images = {cam: data[key] for cam, key in cameras.items()}
        shapes = {}
        for cam, arr in self._images.items():
            if arr.ndim != 4:
                raise DataError(
                    f"{where}: data/{cameras[cam]} has shape {arr.shape}, expected (N, H, W, C) or (N, C, H, W)"
                )
            shapes[cam] = tuple(_to_chw_float(np.zeros(arr.shape[1:], dtype=np.uint8), where).shape)
        if len(set(shapes.values())) > 1:
            raise DataError(f"{where}: cameras have different image shapes {shapes}")
        state_dim = self._lowdim[STATE_KEY].shape[1] if state_keys else 0
        for label, names, dim in (("state", state_names, state_dim), ("action", action_names, action.shape[1])):
            if names and len(names) != dim:
                raise DataError(f"{where}: {len(names)} {label} names given for {dim} {label} dims")
        self.stats = Normalizer.compute(self._lowdim)
        self.info = DatasetInfo(
            source=str(self.path),
            fps=float(fps),
            state_dim=state_dim,
            action_dim=int(action.shape[1]),
            state_names=list(state_names or []),
            action_names=list(action_names or []),
            camera_names=list(cameras),
            image_shape=next(iter(shapes.values())) if shapes else None,  # type: ignore[arg-type]
            num_episodes=len(ends),
            num_frames=n,
            episode_lengths=[int(x) for x in ends - starts],
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = self._lowdim_window(i)
        if self._images:
            e = int(self._ep_of_frame[i])
            oi, _ = window(i, int(self._ep_from[e]), int(self._ep_to[e]), self.window.obs_offsets)
            lo, hi = int(oi.min()), int(oi.max()) + 1
            for cam, arr in self._images.items():
                try:
                    block = arr[lo:hi]
                except Exception as e:  # noqa: BLE001
                    ep, frame = self.locate(i)
                    raise DataError(
                        f"zarr {self.path}: reading camera {cam!r} at episode {ep}, frame {frame}: {e}"
                    ) from e
                out[IMAGE_PREFIX + cam] = _to_chw_float(block[oi - lo], f"zarr {self.path} camera {cam!r}")
        return self._stamp(out, i)


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

"""Dataset sources on disk: local LeRobot v3 datasets and diffusion_policy zarr replay buffers, opened
as described by a task card and the ``dataset`` config, and checked against the card.

Both give the sample interface of :mod:`streamdp.policy.train.data`; every load-time problem is a
:class:`~streamdp.policy.train.data.DataError` that names the dataset, feature, episode and frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamdp.policy.config import ConfigError
from streamdp.policy.encoders import IMAGE_PREFIX, STATE_KEY, TASK_INDEX_KEY
from streamdp.policy.normalize import Normalizer
from streamdp.policy.train.config import DatasetConfig
from streamdp.policy.train.data import (
    ACTION_KEY,
    BOOKKEEPING,
    PAD_KEY,
    DataError,
    DatasetInfo,
    FeatureMap,
    Window,
    WindowedDataset,
    check_finite,
    check_lengths,
    chw_shape,
    image_scale,
    single_thread,
    to_chw_float,
    window,
)

log = logging.getLogger(__name__)


def _names(feature: Mapping[str, Any], dim: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, Mapping):  # older LeRobot layout: {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, (list, tuple)) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return []



# -------------------------------------------------------------------------------------------- LeRobot
class LeRobotWindows(WindowedDataset):
    """A local LeRobot v3 dataset read through ``LeRobotDataset(repo_id, root, delta_timestamps=...)``.

    ``cache_lowdim``: state and action windows are cut from in-memory arrays (read once from the
    parquet table) with exactly LeRobot's clamping and padding, instead of one
    ``LeRobotDataset.__getitem__`` per sample (~1.5 ms each). ``cache_frames_mb``: when all camera
    frames fit in that many MB (uint8), they are decoded once at load time (``image`` features from
    their PNG bytes, each ``video`` file once, at the frame LeRobot's decoder would pick:
    ``round((from_timestamp + timestamp) * fps)``) and camera windows are cut from memory too;
    otherwise (or 0) every sample decodes its frames through LeRobot, which on a CPU costs as much as
    a small model's training step. Tests check the paths agree.
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
        cache_frames_mb: float = 0.0,
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
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        meta = self._metadata(where)
        feats = meta.features
        self._check_features(where, feats)
        fps = float(meta.fps)
        state_dim = int(np.prod(feats[fmap.state]["shape"])) if fmap.state else 0
        action_dim = int(np.prod(feats[fmap.action]["shape"]))
        image_shape = self._image_shape(where, feats)
        self.video_keys = [k for k in fmap.cameras.values() if feats[k]["dtype"] == "video"]

        starts, ends, ep_ids = self._episode_ranges(where, meta)
        check_lengths(where, list(ends - starts), list(ep_ids), window_, short_episodes)
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

        self._load_lowdim(where, feats, state_dim, action_dim)
        tasks = self._load_tasks(where, meta)
        self._frames: dict[str, np.ndarray] = {}  # camera key -> (N, C, H, W) uint8, when cached
        if cache_lowdim and fmap.cameras and cache_frames_mb > 0:
            self._cache_frames(where, meta, image_shape, cache_frames_mb)
        self.fast = cache_lowdim and (not fmap.cameras or bool(self._frames))
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
            robot_type=meta.robot_type,
            tasks=tasks,
        )

    # -- load-time checks ----------------------------------------------------------------------------
    def _metadata(self, where: str) -> Any:
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        try:
            meta = LeRobotDatasetMetadata(self.repo_id, root=self.root)
        except Exception as e:  # noqa: BLE001 - anything lerobot raises means "cannot read it"
            raise DataError(f"{where}: cannot read its metadata: {type(e).__name__}: {e}") from e
        if meta.total_episodes == 0 or meta.total_frames == 0 or meta.episodes is None or len(meta.episodes) == 0:
            raise DataError(f"{where} is empty ({meta.total_episodes} episodes, {meta.total_frames} frames)")
        return meta

    @staticmethod
    def _episode_ranges(where: str, meta: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Episodes' [start, end) frame ranges and indices, in frame order, checked to tile the data."""
        eps = meta.episodes
        starts = np.asarray(eps["dataset_from_index"], dtype=np.int64)
        ends = np.asarray(eps["dataset_to_index"], dtype=np.int64)
        ep_ids = np.asarray(eps["episode_index"], dtype=np.int64)
        order = np.argsort(starts)
        starts, ends, ep_ids = starts[order], ends[order], ep_ids[order]
        if starts[0] != 0 or np.any(starts[1:] != ends[:-1]) or np.any(ends <= starts):
            raise DataError(f"{where}: episode index ranges are not contiguous: {list(zip(starts, ends))[:5]}...")
        return starts, ends, ep_ids

    def _load_lowdim(self, where: str, feats: Mapping[str, Any], state_dim: int, action_dim: int) -> None:
        """One pass over the low-dimensional columns: finiteness scan, statistics fallback, fast path."""
        table = self.dataset.hf_dataset.data
        ep_col = table.column("episode_index").to_numpy()
        fr_col = table.column("frame_index").to_numpy()
        for pkey, dkey, dim in ((STATE_KEY, self.fmap.state, state_dim), (ACTION_KEY, self.fmap.action, action_dim)):
            if dkey is None:
                continue
            arr = _column(table, dkey, dim, where)
            check_finite(where, dkey, arr, ep_col, fr_col, _names(feats[dkey], dim))
            self._lowdim[pkey] = arr

    def _load_tasks(self, where: str, meta: Any) -> list[str]:
        """The task strings in task_index order; for several tasks also every frame's row in that list
        (through meta/tasks.parquet, so any task_index numbering, e.g. an aggregated dataset's, reads right)."""
        if meta.tasks is None or len(meta.tasks) == 0:
            return []
        order = meta.tasks.sort_values("task_index")
        names = [str(t) for t in order.index]
        if len(names) > 1:
            col = np.asarray(self.dataset.hf_dataset.data.column("task_index").to_numpy(), dtype=np.int64)
            row = {int(ti): k for k, ti in enumerate(order["task_index"])}
            unknown = sorted(set(np.unique(col).tolist()) - set(row))
            if unknown:
                raise DataError(f"{where}: frames have task_index {unknown[:5]}, which meta/tasks.parquet does not "
                                f"list (it has {sorted(row)})")  # fmt: skip
            lut = np.zeros(max(row) + 1, dtype=np.int64)
            for ti, k in row.items():
                lut[ti] = k
            self._task_index = lut[col]
        return names

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
                have = sorted(k for k in feats if k not in BOOKKEEPING)
                images = [k for k in have if feats[k].get("dtype") in ("image", "video")]
                like = (images if role.startswith("camera") else have) or ["<dataset key>"]
                raise DataError(
                    f"{where} has no feature {key!r} (wanted as the {role}); its features are {have}: read one "
                    f"under that name (dataset.rename_map={{{like[0]}:{key}}}), fix the task card's features "
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
                with single_thread():
                    from torchcodec.decoders import VideoDecoder

                    dec = VideoDecoder(str(path), seek_mode="approximate")
                    dec.get_frame_at(0)
            except Exception as e:  # noqa: BLE001 - torchcodec raises RuntimeError/ValueError variants
                raise DataError(f"{what} is unreadable: {type(e).__name__}: {e}") from e

    def _cache_frames(self, where: str, meta: Any, image_shape: Any, budget_mb: float) -> None:
        """Decode every camera frame once into ``self._frames`` (uint8 CHW) if they fit the budget."""
        cams = list(self.fmap.cameras.values())
        if image_shape is None:
            return
        need_mb = len(self) * len(cams) * int(np.prod(image_shape)) / 2**20
        if need_mb > budget_mb:
            log.info("%s: frames stay on disk: %.0f MB > dataset.cache_frames_mb=%g", where, need_mb, budget_mb)
            return
        frames = {}
        with single_thread():
            for key in cams:
                video = key in self.video_keys
                frames[key] = self._decode_videos(where, meta, key) if video else self._decode_images(where, key)
        self._frames = frames
        log.info("%s: %d frames x %d camera(s) decoded into memory (%.0f MB)", where, len(self), len(cams), need_mb)

    def _decode_images(self, where: str, key: str) -> np.ndarray:
        """An ``image`` feature: each cell decoded by the ``datasets`` Image feature, as LeRobotDataset reads it."""
        from datasets import Image

        decoder = Image()
        col = self.dataset.hf_dataset.data.column(key)
        out: np.ndarray | None = None
        for row, cell in enumerate(col.to_pylist()):
            try:
                img = np.asarray(decoder.decode_example(cell))
                img = img[..., None] if img.ndim == 2 else img
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds; any means "cannot read it"
                ep, frame = self.locate(row)
                raise DataError(f"{where}: image {key!r} of episode {ep}, frame {frame} is unreadable: {e}") from e
            if out is None:
                out = np.empty((len(self), img.shape[2], img.shape[0], img.shape[1]), dtype=np.uint8)
            out[row] = img.transpose(2, 0, 1)
        assert out is not None
        return out

    def _decode_videos(self, where: str, meta: Any, key: str) -> np.ndarray:
        """A ``video`` feature: each file decoded once, at the indices LeRobot's torchcodec path computes."""
        from torchcodec.decoders import VideoDecoder

        stamps = np.asarray(self.dataset.hf_dataset.data.column("timestamp").to_numpy(), dtype=np.float64)
        by_file: dict[Path, list[int]] = {}  # video file -> rows of this dataset's episodes in it
        for row, e in enumerate(self._episode_ids):
            by_file.setdefault(self.root / meta.get_video_file_path(int(e), key), []).append(row)
        out: np.ndarray | None = None
        for path, rows in by_file.items():
            what = f"{where}: video {path.relative_to(self.root)}"
            spans = [(int(self._ep_from[r]), int(self._ep_to[r])) for r in rows]
            try:
                dec = VideoDecoder(str(path), seek_mode="exact")
                fps = float(dec.metadata.average_fps)
                idx = [
                    np.round((float(meta.episodes[int(self._episode_ids[r])][f"videos/{key}/from_timestamp"])
                              + stamps[s:t]) * fps).astype(np.int64)
                    for r, (s, t) in zip(rows, spans)
                ]  # fmt: skip
                batch = dec.get_frames_at(indices=np.concatenate(idx).tolist()).data.numpy()
            except Exception as e:  # noqa: BLE001 - torchcodec raises RuntimeError/IndexError/ValueError variants
                raise DataError(f"{what} could not be decoded into memory: {type(e).__name__}: {e}") from e
            if out is None:
                out = np.empty((len(self), *batch.shape[1:]), dtype=np.uint8)
            if batch.shape[1:] != out.shape[1:]:
                raise DataError(f"{what}: frames of shape {batch.shape[1:]}, other files {out.shape[1:]}")
            k = 0
            for s, t in spans:
                out[s:t] = batch[k : k + t - s]
                k += t - s
        assert out is not None
        return out

    def _frame_windows(self, i: int) -> dict[str, torch.Tensor]:
        """Each camera's To frames of sample i from the in-memory frames, float CHW in [0, 1] like LeRobot's."""
        oi, _ = window(i, *self._bounds(i), self.window.obs_offsets)
        return {
            IMAGE_PREFIX + cam: torch.from_numpy(self._frames[key][oi]).float().div_(255.0)
            for cam, key in self.fmap.cameras.items()
        }

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
            out = self._lowdim_window(i)
            if self._frames:
                out.update(self._frame_windows(i))
            return self._stamp(out, i)
        try:
            if self.video_keys:
                with single_thread():
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
        if self._task_index is not None:
            out[TASK_INDEX_KEY] = self._task_window(i)
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
    cameras map names to image arrays (N, H, W, C) or (N, C, H, W), uint8 or float (0-255 or 0-1, told
    apart once per camera at load time). Low-dimensional arrays are loaded into memory; images are read
    lazily (zarr v2, docs/architecture.md, Environment rules).
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
        self.path = Path(path).expanduser()
        where = f"zarr replay buffer {self.path}"
        data, starts, ends = self._open(where, fps)
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
        check_lengths(where, list(ends - starts), list(ep_ids), window_, short_episodes)
        self._set_episodes(starts, ends, ep_ids)
        self._load_lowdim(where, data, list(state_keys), action_key, action_names or [])
        image_shape = self._load_cameras(where, data, cameras)
        state_dim = self._lowdim[STATE_KEY].shape[1] if state_keys else 0
        action_dim = self._lowdim[ACTION_KEY].shape[1]
        for label, names, dim in (("state", state_names, state_dim), ("action", action_names, action_dim)):
            if names and len(names) != dim:
                raise DataError(f"{where}: {len(names)} {label} names given for {dim} {label} dims")
        self.stats = Normalizer.compute(self._lowdim)
        self.info = DatasetInfo(
            source=str(self.path),
            fps=float(fps),
            state_dim=state_dim,
            action_dim=int(action_dim),
            state_names=list(state_names or []),
            action_names=list(action_names or []),
            camera_names=list(cameras),
            image_shape=image_shape,
            num_episodes=len(ends),
            num_frames=n,
            episode_lengths=[int(x) for x in ends - starts],
        )

    def _open(self, where: str, fps: float) -> tuple[Any, np.ndarray, np.ndarray]:
        """The ``data`` group and the episodes' [start, end) frame ranges, checked."""
        import zarr

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
        return data, starts, ends

    def _load_lowdim(
        self, where: str, data: Any, state_keys: list[str], action_key: str, action_names: Sequence[str]
    ) -> None:
        n = len(self)
        ep_col = self._ep_of_frame
        fr_col = np.arange(n) - self._ep_from[ep_col]

        def vec(key: str) -> np.ndarray:
            a = np.asarray(data[key][:], dtype=np.float32)
            return a.reshape(n, -1) if a.ndim != 2 else a

        action = vec(action_key)
        check_finite(where, f"data/{action_key}", action, ep_col, fr_col, action_names)
        self._lowdim[ACTION_KEY] = action
        if state_keys:
            parts = [vec(k) for k in state_keys]
            for k, p in zip(state_keys, parts):
                check_finite(where, f"data/{k}", p, ep_col, fr_col, [])
            self._lowdim[STATE_KEY] = np.ascontiguousarray(np.concatenate(parts, axis=1))

    def _load_cameras(self, where: str, data: Any, cameras: Mapping[str, str]) -> tuple[int, int, int] | None:
        """Lazy image arrays, each with its [0, 1] divisor decided once here; the common (C, H, W)."""
        self._images = {cam: data[key] for cam, key in cameras.items()}
        self._scale: dict[str, float] = {}
        shapes = {}
        for cam, arr in self._images.items():
            if arr.ndim != 4:
                raise DataError(
                    f"{where}: data/{cameras[cam]} has shape {arr.shape}, expected (N, H, W, C) or (N, C, H, W)"
                )
            shapes[cam] = chw_shape(arr.shape[1:])
            self._scale[cam] = image_scale(arr, f"{where}: data/{cameras[cam]}")
        if len(set(shapes.values())) > 1:
            raise DataError(f"{where}: cameras have different image shapes {shapes}")
        return next(iter(shapes.values())) if shapes else None

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = self._lowdim_window(i)
        if self._images:
            oi, _ = window(i, *self._bounds(i), self.window.obs_offsets)
            lo, hi = int(oi.min()), int(oi.max()) + 1
            for cam, arr in self._images.items():
                try:
                    block = arr[lo:hi]
                except Exception as e:  # noqa: BLE001
                    ep, frame = self.locate(i)
                    raise DataError(
                        f"zarr {self.path}: reading camera {cam!r} at episode {ep}, frame {frame}: {e}"
                    ) from e
                where = f"zarr {self.path} camera {cam!r}"
                out[IMAGE_PREFIX + cam] = to_chw_float(block[oi - lo], self._scale[cam], where)
        return self._stamp(out, i)


# ----------------------------------------------------------------------------------------- task card
def _per_mode(value: Any, obs_mode: str) -> Any:
    """A task-card entry that is either one value or {state: ..., image: ...} keyed by obs_mode."""
    if isinstance(value, Mapping):
        if obs_mode not in value:
            raise ConfigError(f"task card has no entry for obs_mode={obs_mode!r} in {dict(value)}")
        return value[obs_mode]
    return value


def card_features(task: Mapping[str, Any]) -> tuple[FeatureMap, dict[str, Any]]:
    """Feature keys and the expected values (dims, image shape, fps) a task card states for its obs_mode."""
    feats = task.get("features") or {}
    obs_mode = task.get("obs_mode") or "state"
    images = _per_mode(feats.get("images") or [], obs_mode) or []
    fmap = FeatureMap.from_keys(feats.get("state", "observation.state"), feats.get("action", "action"), list(images))
    expect = {
        "state_dim": _per_mode(feats.get("state_dim"), obs_mode),
        "action_dim": feats.get("action_dim"),
        "image_shape": tuple(feats["image_shape"]) if images and feats.get("image_shape") else None,  # HWC
        "fps": task.get("fps"),
    }
    return fmap, expect


def check_card(name: str, obs_mode: str, expect: Mapping[str, Any], info: DatasetInfo) -> None:
    """The dataset must be what the task card says (dimensions, image shape, fps)."""
    problems = []
    if expect.get("state_dim") is not None and int(expect["state_dim"]) != info.state_dim:
        problems.append(f"observation.state has {info.state_dim} dims, the card says {expect['state_dim']}")
    if expect.get("action_dim") is not None and int(expect["action_dim"]) != info.action_dim:
        problems.append(f"action has {info.action_dim} dims, the card says action_dim={expect['action_dim']}")
    if expect.get("image_shape") is not None and info.image_shape is not None:
        c, h, w = info.image_shape
        if tuple(int(x) for x in expect["image_shape"]) != (h, w, c):
            problems.append(
                f"images are {(h, w, c)} (H, W, C), the card says image_shape={list(expect['image_shape'])}"
            )
    if expect.get("fps") is not None and abs(float(expect["fps"]) - info.fps) > 1e-6:
        problems.append(f"the dataset runs at {info.fps:g} fps, the card says fps={expect['fps']}")
    if problems:
        raise DataError(
            f"dataset {info.source} does not match task card {name!r} (obs_mode={obs_mode}): "
            + "; ".join(problems)
            + ". Use the right dataset, task or task.obs_mode, or override the card (task.features.*)."
        )


def _no_camera_named(dcfg: DatasetConfig) -> None:
    """obs_mode=image with no camera named would silently train a state-only policy: refuse, listing
    the dataset's image keys and the override that names one."""
    root = Path(str(dcfg.root))
    if dcfg.format == "lerobot":
        try:
            feats = json.loads((root / "meta" / "info.json").read_text()).get("features", {})
        except (OSError, ValueError):
            feats = {}
        keys = sorted(k for k, v in feats.items() if isinstance(v, dict) and v.get("dtype") in ("image", "video"))
        fix = f"task.features.images=[{keys[0] if keys else 'observation.images.<cam>'}]"
    else:
        import zarr

        try:
            data = zarr.open(str(root), mode="r")["data"]
            keys = sorted(k for k in data.array_keys() if data[k].ndim == 4)
        except (KeyError, ValueError, OSError):
            keys = []
        fix = f"dataset.zarr.images={{top: {keys[0] if keys else '<array>'}}}"
    raise ConfigError(
        f"task.obs_mode=image but no camera is named for {root}; its image keys: {keys or 'none'}. "
        f"Name one, e.g. {fix}"
    )


def renamed_sources(fmap: FeatureMap, rename: Mapping[str, str]) -> tuple[FeatureMap, dict[str, str]]:
    """The dataset keys to read for the card's keys `fmap` under ``dataset.rename_map`` (dataset key -> card
    key), and the renames used; an entry that renames onto a key the card does not read is an error."""
    source = {dst: src for src, dst in rename.items()}
    wanted = [k for k in (fmap.state, fmap.action, *fmap.cameras.values()) if k is not None]
    unused = {src: dst for src, dst in rename.items() if dst not in wanted}
    if unused:
        raise ConfigError(
            f"dataset.rename_map renames {unused} onto keys the task card does not read; it reads {wanted} "
            "(name the camera in task.features.images, or fix the map)"
        )
    state = source.get(fmap.state, fmap.state) if fmap.state else None
    cams = {cam: source.get(key, key) for cam, key in fmap.cameras.items()}
    return FeatureMap(state, source.get(fmap.action, fmap.action), cams), dict(rename)


def load_dataset(task: Mapping[str, Any], dcfg: DatasetConfig, window: Window) -> WindowedDataset:
    """Open the dataset described by the task card and the dataset config, checked against the card;
    ``dataset.rename_map`` reads dataset keys under the card's names (recorded in ``info.rename_map``)."""
    if not dcfg.root:
        raise ConfigError("dataset.root is not set: pass dataset.root=/path/to/dataset")
    fmap, expect = card_features(task)
    fmap, renamed = renamed_sources(fmap, dcfg.rename_map or {})
    name, obs_mode = str(task.get("name", "?")), str(task.get("obs_mode") or "state")
    named = fmap.cameras if dcfg.format == "lerobot" else dcfg.zarr.images
    if obs_mode == "image" and not named:
        _no_camera_named(dcfg)
    if dcfg.format == "lerobot":
        ds: WindowedDataset = LeRobotWindows(
            dcfg.root,
            fmap,
            window,
            repo_id=dcfg.repo_id,
            short_episodes=dcfg.short_episodes,
            cache_lowdim=dcfg.cache_lowdim,
            cache_frames_mb=dcfg.cache_frames_mb,
            video_backend=dcfg.video_backend,
        )
    else:
        z = dcfg.zarr
        ds = ZarrWindows(
            dcfg.root,
            window,
            fps=float(z.fps or task.get("fps") or 0),
            state_keys=list(z.state),
            action_key=z.action,
            cameras=dict(z.images or {}),
            state_names=z.state_names,
            action_names=z.action_names,
            short_episodes=dcfg.short_episodes,
        )
        expect = {**expect, "image_shape": None if not z.images else expect.get("image_shape")}
    ds.info.rename_map = renamed
    check_card(name, obs_mode, expect, ds.info)
    return ds

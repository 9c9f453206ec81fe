"""The LeRobot v3 dataset a recording goes into (no rclpy): the :class:`~streamdp.ros_nodes.recording.FrameSink`
of the recorder node and the bag converter, written with lerobot itself (``LeRobotDataset.create`` through
``LeRobotWriter``, ``add_frame``, ``save_episode``, ``finalize``; cameras as video by default).

The dataset is created when an episode starts with the camera size known (else at its first good frame)
and finalised by :meth:`EpisodeWriter.close`: lerobot keeps its parquet writers open between episodes and
a dataset is readable only once they are closed, so a recorder must be stopped with SIGINT/SIGTERM (it
closes the writer on the way out), not killed. ``resume=true`` appends to an existing dataset whose features match.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from streamdp.ros_nodes.observation import IMAGE_PREFIX
from streamdp.ros_nodes.recording import RecordingOptions, lerobot_features


def _comparable(feats: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...], list[str]]]:
    return {k: (str(v["dtype"]), tuple(int(x) for x in v["shape"]), list(v.get("names") or []))
            for k, v in feats.items()}


class EpisodeWriter:
    """Writes recorded episodes to ``options.root`` (see the module docstring)."""

    def __init__(self, options: RecordingOptions, overwrite: bool = False) -> None:
        import lerobot.datasets.lerobot_dataset  # noqa: F401 - seconds of imports now, not when an episode starts

        self.options = options
        self.root = Path(options.root).expanduser()
        self.repo_id = options.repo_id or f"local/{self.root.name}"
        self._ds: Any = None
        self._created = False  # this writer created the dataset (removed again if it never saves an episode)
        self.saved = 0
        self._existing: dict[str, Any] | None = None
        info = self.root / "meta" / "info.json"
        if self.root.exists():
            if info.is_file() and options.resume:
                self._existing = json.loads(info.read_text())
                self._check_existing(self._existing, image_hw=None)
            elif overwrite:
                shutil.rmtree(self.root)
            elif info.is_file():
                raise FileExistsError(f"dataset folder {self.root} already exists: add episodes to it with "
                                      "resume=true, or choose another root")
            elif any(self.root.iterdir()):
                raise FileExistsError(f"{self.root} exists and is not a LeRobot dataset: choose another root")
            else:
                self.root.rmdir()  # an empty folder: lerobot creates it

    @property
    def is_open(self) -> bool:
        return self._ds is not None

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset (saved by this writer and, with resume, before)."""
        before = int(self._existing.get("total_episodes", 0)) if self._existing else 0
        return before + self.saved

    def _check_existing(self, info: dict[str, Any], image_hw: tuple[int, int] | None) -> None:
        """A resumed dataset must have this recording's fps and features (cameras once their size is known)."""
        o = self.options
        problems = []
        if int(info.get("fps", -1)) != o.fps:
            problems.append(f"it runs at {info.get('fps')} fps, this recording at {o.fps}")
        have = _comparable({k: v for k, v in info.get("features", {}).items()
                            if k == "action" or k.startswith("observation.")})
        want = _comparable(lerobot_features(o, image_hw or (1, 1)))
        for k in sorted(set(have) | set(want)):
            if image_hw is None and k.startswith(IMAGE_PREFIX):
                if k not in have or k not in want:
                    only = "the dataset" if k in have else "this recording"
                    problems.append(f"camera feature {k!r} is only in {only}")
                continue
            if have.get(k) != want.get(k):
                problems.append(f"{k}: dataset {have.get(k)} != recording {want.get(k)} (dtype, shape, names)")
        if problems:
            raise ValueError(f"cannot resume {self.root}: " + "; ".join(problems))

    def open(self, image_hw: tuple[int, int] | None) -> None:
        """Create (or, with resume, open) the dataset now, e.g. when an episode starts, so the first frame's
        control tick does not wait for it; cameras need their image size. No-op once open."""
        from streamdp.sim.lerobot_writer import LeRobotWriter

        o = self.options
        if self._ds is not None:
            return
        if o.camera_names and image_hw is None:
            raise ValueError("the camera image size is not known yet (set image_height/image_width)")
        threads = 2 if o.camera_names else 0  # PNGs are written off the control tick
        if self._existing is not None:
            self._check_existing(self._existing, image_hw)
            self._ds = LeRobotWriter(self.repo_id, root=self.root)
            if threads:
                self._ds.start_image_writer(num_threads=threads)
            return
        self._ds = LeRobotWriter.create(
            repo_id=self.repo_id, fps=o.fps, root=self.root, features=lerobot_features(o, image_hw),
            robot_type=o.robot_type or None, use_videos=o.use_videos, image_writer_threads=threads)
        self._created = True

    # -- FrameSink --------------------------------------------------------------------------------
    def add(self, frame: dict[str, Any]) -> None:
        if self._ds is None:
            self.open(next((tuple(frame[IMAGE_PREFIX + c].shape[:2]) for c in self.options.camera_names), None))
        self._ds.add_frame(frame)

    def save(self) -> str:
        import datasets

        # save_episode runs a datasets.map with a progress bar per episode (and loading a dataset turns bars
        # back on): keep the recorder's and the converter's output to their own lines
        datasets.disable_progress_bars()
        self._ds.save_episode()  # LeRobotWriter: the scheduling policy survives the video encoding
        self.saved += 1
        return f"episode {self.num_episodes - 1} of {self.root}"

    def clear(self) -> None:
        if self._ds is not None and self._ds.episode_buffer is not None and self._ds.episode_buffer["size"]:
            self._ds.clear_episode_buffer()

    def close(self) -> None:
        """Finalise the dataset (parquet footers, episode metadata); a dataset this writer created and never
        saved an episode to is removed (an episode-less folder is not a loadable dataset)."""
        if self._ds is None:
            return
        self.clear()
        self._ds.finalize()
        if self._ds.image_writer is not None:
            self._ds.stop_image_writer()
        self._ds = None
        if self._created and self.saved == 0:
            shutil.rmtree(self.root, ignore_errors=True)

    def abort(self) -> None:
        """Stop after a failure: like :meth:`close`, but a dataset this writer created is removed whatever it
        holds (with resume, the episodes it appended stay)."""
        created = self._created
        self.close()
        if created:
            shutil.rmtree(self.root, ignore_errors=True)

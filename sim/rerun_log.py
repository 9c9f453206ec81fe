"""One evaluation episode as a rerun recording (``.rrd``, rerun-sdk): what the robot saw, what the policy had in
its buffer and what it commanded, on one timeline.

Entities (timelines ``step``: the env step, and ``sim_time``: step / fps):

- ``camera/<name>``: every camera of the observation (image mode); state-mode tasks log ``camera/render``
  (``env.render()``) instead, so there is always a picture. One frame per step, the final one included.
- ``state``: ``observation.state``, one series per state name (the task's names), one row per step.
- ``action/commanded``: the command executed at that step (held ones included), one series per action name.
- ``action/held``: 1 where the command was a hold (latency-aware mode), else 0.
- ``buffer/noise_levels``: at every policy tick, the grid level of each SDP buffer slot (a bar chart, -1 =
  clean; the ladder of docs/timing.md); absent for samplers without a rolling buffer.

Open one with ``rerun outputs/eval/.../rerun/<file>.rrd`` (the viewer ships with rerun-sdk) or read it back
with ``rerun.chunk.RrdReader``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

APPLICATION_ID = "streamdp-eval"


class EpisodeRecording:
    """Writes one episode to ``path`` as it runs (see the module docstring)."""

    def __init__(self, path: str | Path, spec: Any, recording_id: str) -> None:
        import rerun as rr

        self._rr = rr
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(spec.fps)
        self.cameras = [k for k in spec.image_keys]
        self.rec = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
        self.rec.save(str(self.path))
        self.rec.log("state", rr.SeriesLines(names=list(spec.state_names)), static=True)
        self.rec.log("action/commanded", rr.SeriesLines(names=list(spec.action_names)), static=True)
        self.steps_logged = 0

    def _at(self, step: int) -> None:
        self.rec.set_time("step", sequence=step)
        self.rec.set_time("sim_time", duration=step / self.fps)

    def observation(self, step: int, obs: dict[str, Any], render: Any = None) -> None:
        """The observation at `step` (and, without cameras, `render()`'s frame)."""
        rr = self._rr
        self._at(step)
        self.rec.log("state", rr.Scalars(np.asarray(obs["observation.state"], dtype=np.float64)))
        for key in self.cameras:
            self.rec.log("camera/" + key.rsplit(".", 1)[-1], rr.Image(np.asarray(obs[key], dtype=np.uint8)))
        if not self.cameras and render is not None:
            self.rec.log("camera/render", rr.Image(np.asarray(render(), dtype=np.uint8)))

    def command(self, step: int, action: np.ndarray, held: bool) -> None:
        """The command executed at `step`."""
        rr = self._rr
        self._at(step)
        self.rec.log("action/commanded", rr.Scalars(np.asarray(action, dtype=np.float64)))
        self.rec.log("action/held", rr.Scalars(float(held)))
        self.steps_logged += 1

    def noise_levels(self, step: int, levels: np.ndarray | None) -> None:
        """The SDP buffer after the policy tick at `step` (nothing for samplers without one)."""
        if levels is None:
            return
        self._at(step)
        self.rec.log("buffer/noise_levels", self._rr.BarChart(np.asarray(levels, dtype=np.float64)))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()


def read_recording(path: str | Path) -> dict[str, dict[str, list[Any]]]:
    """Entity path -> its temporal rows in a recording, sorted by ``step``: ``{"step": [...], "<Archetype>:<field>":
    [...]}`` (static rows left out). Uses rerun's own reader: what a test or a script needs without the viewer."""
    from rerun.chunk import RrdReader

    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for chunk in RrdReader(str(path)).stream():
        if chunk.is_static or "step" not in chunk.timeline_names:
            continue
        b = chunk.to_record_batch()
        cols = {n: b.column(n).to_pylist() for n in b.schema.names if ":" in n}
        for i, step in enumerate(b.column("step").to_pylist()):
            rows.setdefault(chunk.entity_path, []).append((int(step), {n: v[i] for n, v in cols.items()}))
    out: dict[str, dict[str, list[Any]]] = {}
    for entity, items in rows.items():
        items.sort(key=lambda r: r[0])
        d: dict[str, list[Any]] = {"step": [r[0] for r in items]}
        for _, values in items:
            for n, v in values.items():
                d.setdefault(n, []).append(v)
        out[entity] = d
    return out

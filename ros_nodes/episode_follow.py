"""Recording the sim bridge's episodes as they come (no rclpy): its episode events bracket the recorder's episodes.

``sim_bridge_node`` publishes a ``diagnostic_msgs/DiagnosticStatus`` on ``/task/episode`` when an episode
starts (``running``) and when it ends (``success`` or ``timeout``), with the header stamp of the joint state
published with the event (``stamp``: the episode's first observation, or its last). The recorder with
``episode_topic`` set hands them to an :class:`EpisodeFollower`, which

* starts an episode at ``running``, from that observation on (an observation of the episode before, still
  the latest at the first control tick, is not taken);
* ends it at ``success`` / ``timeout`` before its last observation (no action follows that one inside the
  episode: frame t pairs observation t with the action that moved the arm to t+1, as ``streamdp-collect``
  writes them), and saves it once that observation has arrived, so every frame has its action; a
  ``timeout`` is discarded unless ``save_failed``;
* with ``request_resets``, asks for every next episode (the recorder publishes ``std_msgs/Empty`` on the
  bridge's ``/task/reset``; the bridge runs with ``auto_reset:=false``) once the last one is written, so no
  observation is lost while lerobot writes an episode. The first one once ``connected()`` says every input
  is matched and a command has arrived (DDS may match the teleop with the bridge or the recorder seconds
  after the rest; the bridge's first episode, running at start-up, has commands), or ``first_wait_s``
  after it is matched without one. It asks again when no episode has started ``reset_retry_s`` later (a
  request sent before DDS matched the bridge is lost);
* with ``every_step`` (the recorder takes one frame per joint state), refuses an episode with fewer frames
  than the bridge's steps: an observation lost on the way (or one before the recorder started) is never
  silently skipped;
* stops after ``max_episodes`` saved episodes (0: never).

Events stamped before the follower was made are ignored: the recorder cannot have that episode's start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamdp.ros_nodes.recording import EpisodeRecorder, RecordingError

RUNNING = "running"
END_STATES = ("success", "timeout")


@dataclass(frozen=True)
class EpisodeEvent:
    """One sim-bridge episode event (the key-values of its DiagnosticStatus)."""

    state: str  # running | success | timeout
    stamp: float  # joint-state stamp of the episode's first (running) or last (end) observation, seconds
    episode: int
    seed: int
    steps: int

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> EpisodeEvent:
        """From the DiagnosticStatus key-values; ValueError naming what is missing or malformed."""
        try:
            sec, _, nsec = values["stamp"].partition(".")
            return cls(values["state"], float(int(sec)) + 1e-9 * float(int(nsec or 0)), int(values["episode"]),
                       int(values["seed"]), int(values["steps"]))
        except KeyError as e:
            raise ValueError(f"episode event without {e.args[0]!r} (keys {sorted(values)}): is it the sim "
                             "bridge's /task/episode?") from e
        except ValueError as e:
            raise ValueError(f"malformed episode event {dict(values)}: {e}") from e

    def describe(self) -> str:
        return f"sim episode {self.episode} (seed {self.seed})"


@dataclass(frozen=True)
class FollowOptions:
    save_failed: bool = False
    max_episodes: int = 0
    request_resets: bool = False
    every_step: bool = False  # one frame per bridge step is expected (frame_trigger joint_state)
    reset_retry_s: float = 2.0
    first_wait_s: float = 5.0  # the first request: how long to wait for a command once every input is matched
    end_wait_s: float = 0.25  # after an end event, wait this long at most for its last observation

    def __post_init__(self) -> None:
        if self.max_episodes < 0 or not self.reset_retry_s > 0 or not self.end_wait_s > 0 or self.first_wait_s < 0:
            raise ValueError(f"max_episodes must be >= 0, reset_retry_s and end_wait_s > 0, first_wait_s >= 0, got "
                             f"{self}")


@dataclass
class FollowStep:
    """What the node does after a control tick: log `lines`, publish a reset request, stop."""

    lines: list[str]
    request_reset: bool = False
    done: bool = False


class EpisodeFollower:
    """Drives an :class:`EpisodeRecorder` from sim-bridge episode events (see the module docstring)."""

    def __init__(self, recorder: EpisodeRecorder, options: FollowOptions, now: float,
                 connected: Callable[[], bool] = lambda: True) -> None:
        self.rec, self.o = recorder, options
        self.connected = connected
        self.created = now
        self.current: EpisodeEvent | None = None  # the running event of the episode being recorded
        self._end: EpisodeEvent | None = None
        self._end_seen_at = math.nan
        self._requested_at: float | None = None
        self._connected_since: float | None = None
        self.saved = self.refused = self.discarded = self.resets_requested = 0

    @property
    def done(self) -> bool:
        return 0 < self.o.max_episodes <= self.saved

    def on_event(self, ev: EpisodeEvent, now: float) -> list[str]:
        """Start or end an episode; returns lines to log."""
        if ev.stamp < self.created or self.done:
            return []
        if ev.state == RUNNING:
            lines = self._finish() if self._end is not None else []  # the bridge reset at once (auto_reset)
            if self.done:
                return lines
            if self.rec.recording:  # reset before it ended (someone else reset the sim): it is incomplete
                lines.append(f"{self.current.describe() if self.current else 'episode'} was reset before it "
                             f"ended: {self.rec.discard()}")
                self.discarded += 1
            self.current, self._requested_at = ev, None
            self.rec.start(now, first_stamp=ev.stamp)
            return [*lines, f"recording {ev.describe()}"]
        if ev.state in END_STATES and self.rec.recording and self._end is None and self.current is not None \
                and ev.episode == self.current.episode:
            self.rec.end_at(ev.stamp)
            self._end, self._end_seen_at = ev, now
        return []

    def _finish(self) -> list[str]:
        """Save the ended episode (a time-out: discard it unless save_failed)."""
        end, self._end, self.current = self._end, None, None
        what = f"{end.describe()}, {end.state} in {end.steps} steps"
        if end.state != "success" and not self.o.save_failed:
            self.discarded += 1
            return [f"{what}: {self.rec.discard()} (save_failed_episodes is false)"]
        if self.o.every_step and self.rec.counters.ticks < end.steps:
            self.refused += 1
            lost = f"{self.rec.counters.ticks} of its {end.steps} observations reached the recorder"
            return [f"{what}: episode refused, nothing saved: only {lost}; {self.rec.discard()}"]
        try:
            out = self.rec.save()
        except RecordingError as e:
            return [f"{what}: {e}"]
        self.saved += int(out.saved)
        self.refused += int(not out.saved)
        return [f"{what}: {out.message}"]

    def poll(self, now: float) -> FollowStep:
        """After every control tick: finish an ended episode once its last observation is in; ask for the next."""
        step = FollowStep([])
        if self._end is not None:
            last = self.rec.sync.joint_stamp
            if (last is None or last < self._end.stamp) and now - self._end_seen_at < self.o.end_wait_s:
                return step
            step.lines += self._finish()
        step.done = self.done
        if self.o.request_resets and not step.done and not self.rec.recording and self.rec.sync.joint_stamp is not None:
            due = self._requested_at is None or now - self._requested_at >= self.o.reset_retry_s
            if due and self._ready(now):
                self._requested_at = now
                self.resets_requested += 1
                step.request_reset = True
        return step

    def _ready(self, now: float) -> bool:
        """Inputs matched and, before the first request, a command heard (or first_wait_s passed without)."""
        if not self.connected():
            self._connected_since = None
            return False
        if self.resets_requested or not self.rec.options.command_topic or self.rec.counters.commands:
            return True
        if self._connected_since is None:
            self._connected_since = now
        return now - self._connected_since >= self.o.first_wait_s

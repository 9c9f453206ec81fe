"""Recording demonstrations (no rclpy): ROS inputs -> LeRobot frames at the control rate, episode by episode.

The recorder node (``streamdp-record``) and the bag converter (``streamdp-convert-bag``) feed one
:class:`EpisodeRecorder` the same messages with the same :class:`RecordingOptions`, so a live recording
and a converted bag of one run hold the same frames. The observation goes through the policy node's
adapter, :class:`~streamdp.ros_nodes.observation.ObservationSync`, with the same layout and staleness
rules: a recorded frame and a deployed observation of one robot state are the same arrays.

Timing, one frame per control tick:

* **observation** of frame t: ``ObservationSync.sample(now)`` at tick t (joint state matched by name,
  extra state entries, cameras), as the policy node samples at its control tick;
* **action** of frame t: the robot's target when the *next* joint state after frame t's was measured
  (stamp s'): the command in force at s' (the latest received by then; a JointTrajectory evaluated
  ``trajectory_lookahead_s`` after s', by default one period, where a position controller and the sim
  bridge aim) or, without a command topic, the joint positions measured at s'. A policy deployed with
  ``action_delay_ticks=1`` sends frame t's action one tick after it saw frame t's observation;
* **stale or missing input** (a stream older than its max age, no command yet, a command older than
  ``max_command_age_s``, a next joint state later than ``max_obs_age_s``, a control tick more than one
  period late) marks the frame with the reason; nothing is filled in. ``on_stale=trim`` drops marked
  frames at the start and at the end of an episode and refuses an episode with marked frames between
  good ones; ``on_stale=refuse`` refuses an episode with any marked frame. The last frame has no next
  joint state yet when the episode is saved, so it is normally trimmed.

Good frames go to a :class:`FrameSink` (the LeRobot writer, :mod:`streamdp.ros_nodes.episode_writer`) as
soon as their action is known, so an episode never piles up in memory; a refused or discarded episode
is cleared from the sink.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamdp.policy.cli import opt
from streamdp.policy.config import ConfigError
from streamdp.ros_nodes.observation import IMAGE_PREFIX, STATE_KEY, ExtraState, ObservationSync, StateLayout
from streamdp.ros_nodes.params import extra_states
from streamdp.ros_nodes.trajectory import TrajectorySampler, sampler_from_msg

ACTION_KEY = "action"
COMMAND_TYPES = ("joint_trajectory", "float64_multi_array")
STALE_POLICIES = ("trim", "refuse")
_FIELD_SUFFIX = {"position": "pos", "velocity": "vel", "effort": "eff"}


class RecordingError(RuntimeError):
    """An episode operation out of turn (start while recording, save or discard with none)."""


@dataclass
class RecordingOptions:
    """What to record and how: the recorder node's ROS parameters and the bag converter's keys (same names).

    Topic, joint and state-layout names match the policy node's parameters, so one robot description
    serves recording and deployment."""

    root: str = opt("", "dataset folder (LeRobot v3); a new one unless resume=true")
    repo_id: str = opt("", "LeRobot repo id, a label only (empty: local/<root folder name>)")
    task_description: str = opt("demonstration", "the task's text stored with every frame (LeRobot's 'task')")
    robot_type: str = opt("", "robot type stored in the dataset's info")
    resume: bool = opt(False, "append episodes to the dataset at root (its features must match)")
    use_videos: bool = opt(True, "cameras stored as mp4 video (false: one PNG per frame)")
    joint_names: list[str] = opt(help="robot joints in the dataset's order (JointState is matched by name)",
                                 factory=list)
    joint_states_topic: str = opt("/joint_states", "sensor_msgs/JointState input")
    state_layout: list[str] = opt(help="observation.state entries in order: joint_state.{position,velocity,effort} "
                                  "or an extra_state_names entry",
                                  factory=lambda: ["joint_state.position", "joint_state.velocity"])
    extra_state_names: list[str] = opt(help="state entries from their own geometry_msgs/PointStamped topics",
                                       factory=list)
    extra_state_topics: list[str] = opt(help="topic of each extra state entry", factory=list)
    extra_state_fields: list[str] = opt(help="PointStamped components of each extra entry, e.g. 'xy'", factory=list)
    camera_names: list[str] = opt(help="cameras, stored as observation.images.<name>", factory=list)
    camera_topics: list[str] = opt(help="sensor_msgs/Image topic of each camera (rgb8/bgr8/mono8)", factory=list)
    image_height: int = opt(0, "camera image height; 0: the first image's (later ones must match)")
    image_width: int = opt(0, "camera image width; 0: the first image's")
    command_type: str = opt("joint_trajectory", "joint_trajectory | float64_multi_array (the command topic's type)")
    command_topic: str = opt("", "teleop / leader-arm command topic; empty: the action is the next measured "
                             "joint positions")
    trajectory_lookahead_s: float = opt(-1.0, "a JointTrajectory command is read this long after the next joint "
                                        "state; <0: one control period")
    control_rate_hz: float = opt(0.0, "frames per second (the control rate of the policy to train); required")
    max_obs_age_s: float = opt(0.25, "joint/extra state older than this at a tick marks the frame stale")
    max_image_age_s: float = opt(0.25, "an image older than this at a tick marks the frame stale")
    max_command_age_s: float = opt(0.25, "a command older than this marks the frame stale; 0: no limit")
    on_stale: str = opt("trim", "trim: drop stale frames at the start and end, refuse a gap inside | refuse: "
                        "refuse an episode with any stale frame")
    min_episode_frames: int = opt(10, "an episode with fewer good frames is refused")

    def __post_init__(self) -> None:
        problems = []
        if not self.root:
            problems.append("root is not set: give the dataset folder")
        if not self.joint_names:
            problems.append("joint_names is empty: list the robot joints in the dataset's order")
        elif len(set(self.joint_names)) != len(self.joint_names):
            problems.append(f"joint_names repeats a joint: {list(self.joint_names)}")
        if len(self.camera_names) != len(self.camera_topics):
            problems.append(f"camera_names {list(self.camera_names)} and camera_topics {list(self.camera_topics)} "
                            "differ in length")
        if len(set(self.camera_names)) != len(self.camera_names) or not all(self.camera_names):
            problems.append(f"camera_names must be distinct and non-empty: {list(self.camera_names)}")
        if (self.image_height > 0) != (self.image_width > 0) or self.image_height < 0 or self.image_width < 0:
            problems.append(f"image_height and image_width must both be > 0 or both 0, got {self.image_height}, "
                            f"{self.image_width}")
        if self.command_type not in COMMAND_TYPES:
            problems.append(f"command_type must be one of {COMMAND_TYPES}, got {self.command_type!r}")
        if not (self.control_rate_hz > 0 and float(self.control_rate_hz).is_integer()):
            problems.append(f"control_rate_hz must be a whole number of frames per second > 0 (LeRobot stores an "
                            f"integer fps), got {self.control_rate_hz}")
        if not (self.max_obs_age_s > 0 and self.max_image_age_s > 0 and self.max_command_age_s >= 0):
            problems.append("max_obs_age_s and max_image_age_s must be > 0 and max_command_age_s >= 0")
        if self.on_stale not in STALE_POLICIES:
            problems.append(f"on_stale must be one of {STALE_POLICIES}, got {self.on_stale!r}")
        if self.min_episode_frames < 1:
            problems.append(f"min_episode_frames must be >= 1, got {self.min_episode_frames}")
        if not problems:
            try:
                self.layout  # noqa: B018 - builds and checks the layout and its extra entries
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def extras(self) -> list[ExtraState]:
        return extra_states(self.extra_state_names, self.extra_state_topics, self.extra_state_fields)

    @property
    def layout(self) -> StateLayout:
        return StateLayout(tuple(self.joint_names), tuple(self.state_layout), tuple(self.extras))

    @property
    def fps(self) -> int:
        return int(self.control_rate_hz)

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def lookahead(self) -> float:
        return self.period if self.trajectory_lookahead_s < 0 else self.trajectory_lookahead_s

    @property
    def topics(self) -> dict[str, str]:
        """Every input topic -> what it feeds (for messages and bag checks)."""
        out = {self.joint_states_topic: "joint states"}
        out.update({e.topic: f"extra state {e.name!r}" for e in self.extras})
        out.update({t: f"camera {c!r}" for c, t in zip(self.camera_names, self.camera_topics)})
        if self.command_topic:
            out[self.command_topic] = f"commands ({self.command_type})"
        return out


# ----------------------------------------------------------------------------------------- dataset layout
def state_names(layout: StateLayout) -> list[str]:
    """Names of the ``observation.state`` entries: ``<joint>.pos|vel|eff`` and ``<extra>.<x|y|z>``, the
    names the sim tasks use, from which training reads the joint names back."""
    out: list[str] = []
    for e in layout.entries:
        if e.startswith("joint_state."):
            suffix = _FIELD_SUFFIX[e.split(".", 1)[1]]
            out += [f"{j}.{suffix}" for j in layout.joint_names]
        else:
            out += [f"{e}.{c}" for c in layout.extra(e).fields]
    return out


def lerobot_features(
    options: RecordingOptions, image_hw: tuple[int, int] | None, use_videos: bool | None = None
) -> dict[str, dict[str, Any]]:
    """The feature dict of ``LeRobotDataset.create`` for these options and camera image size."""
    layout = options.layout
    feats: dict[str, dict[str, Any]] = {}
    if layout.dim:
        feats[STATE_KEY] = {"dtype": "float32", "shape": (layout.dim,), "names": state_names(layout)}
    feats[ACTION_KEY] = {"dtype": "float32", "shape": (len(options.joint_names),),
                         "names": [f"{j}.target_pos" for j in options.joint_names]}
    videos = options.use_videos if use_videos is None else use_videos
    for cam in options.camera_names:
        if image_hw is None:
            raise ValueError("the camera image size is not known yet (set image_height/image_width)")
        feats[IMAGE_PREFIX + cam] = {"dtype": "video" if videos else "image", "shape": (*image_hw, 3),
                                     "names": ["height", "width", "channels"]}
    return feats


# ----------------------------------------------------------------------------------------- episodes
class FrameSink(Protocol):
    """Where good frames go (the LeRobot writer); an episode is saved or cleared as a whole."""

    def add(self, frame: dict[str, Any]) -> None: ...

    def save(self) -> str: ...  # says where the episode went

    def clear(self) -> None: ...


@dataclass
class _Frame:
    index: int
    time: float
    obs: dict[str, np.ndarray] | None
    js_stamp: float | None
    reason: str = ""
    action: np.ndarray | None = None


@dataclass
class _Command:
    time: float  # when it was received (node clock; a bag's log time)
    value: np.ndarray | None = None  # Float64MultiArray positions
    trajectory: TrajectorySampler | None = None

    def at(self, t: float) -> np.ndarray:
        return self.trajectory(t) if self.trajectory is not None else np.array(self.value)


@dataclass
class _Marked:
    """A run of marked frames: how many, and the first one's place and reason."""

    count: int = 0
    index: int = -1
    time: float = math.nan
    reason: str = ""

    def add(self, f: _Frame) -> None:
        if self.count == 0:
            self.index, self.time, self.reason = f.index, f.time, f.reason
        self.count += 1


@dataclass
class RecorderCounters:
    ticks: int = 0  # control ticks while recording (this episode)
    frames: int = 0  # good frames handed to the sink (this episode)
    marked: int = 0  # stale/missing-input frames (this episode)
    commands: int = 0
    commands_rejected: int = 0
    episodes_saved: int = 0
    episodes_refused: int = 0
    episodes_discarded: int = 0


@dataclass
class EpisodeOutcome:
    """What saving an episode did; `message` is what the service returns and the log says."""

    saved: bool
    frames: int
    message: str
    trimmed_head: int = 0
    trimmed_tail: int = 0


class EpisodeRecorder:
    """Samples frames at the control rate while an episode is recorded (see the module docstring).

    Feed it messages as they arrive (``*_msg``; any time) and call :meth:`tick` at every control tick;
    :meth:`start`, :meth:`save` and :meth:`discard` bracket an episode. `warn` receives a line as soon as
    an episode is doomed (so an operator can discard it at once)."""

    def __init__(
        self, options: RecordingOptions, sink: FrameSink, warn: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self.sink = sink
        self.warn = warn or (lambda _m: None)
        self.sync = ObservationSync(options.layout, options.camera_names, options.max_obs_age_s,
                                    options.max_image_age_s, history=2)
        self.image_hw: tuple[int, int] | None = (
            (options.image_height, options.image_width) if options.image_height > 0 else None)
        self.counters = RecorderCounters()
        self.last_command_drop = ""
        self._measured: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._commands: collections.deque[_Command] = collections.deque()
        self.recording = False
        self._reset_episode(math.nan)

    def _reset_episode(self, now: float, first_stamp: float | None = None) -> None:
        self._t0 = now
        self._first_stamp, self._end_stamp = first_stamp, None  # the episode's observations: [first, end)
        self._first_emitted: float | None = None
        self._last_emitted: float | None = None
        self._pending: collections.deque[_Frame] = collections.deque()
        self._head, self._tail = _Marked(), _Marked()
        self._refusal = ""
        self._last_tick: float | None = None
        c = self.counters
        c.ticks = c.frames = c.marked = 0

    # -- inputs ----------------------------------------------------------------------------------
    def joint_state_msg(self, msg: Any, stamp: float | None = None) -> bool:
        """A sensor_msgs/JointState (`stamp` replaces its header stamp); False when the adapter dropped it."""
        if not self.sync.add_joint_state_msg(msg, stamp):
            return False
        self._measured.append((float(self.sync.joint_stamp), self.sync.joint_positions))
        self._prune()
        return True

    def extra_msg(self, name: str, msg: Any, stamp: float | None = None) -> bool:
        return self.sync.add_extra_msg(name, msg, stamp)

    def image_msg(self, camera: str, msg: Any, stamp: float | None = None) -> bool:
        """A sensor_msgs/Image; the first accepted image fixes the size when image_height/width are 0."""
        ok = self.sync.add_image_msg(camera, msg, self.image_hw, 3, stamp)
        if ok and self.image_hw is None:
            self.image_hw = (int(msg.height), int(msg.width))
        return ok

    def command_msg(self, msg: Any, time: float) -> bool:
        """A command (options.command_type) received at `time`; False (and `last_command_drop`) when unusable."""
        names = self.options.joint_names
        try:
            if self._commands and time < self._commands[-1].time:
                raise ValueError(f"received at {time:.6f}, before the previous command ({self._commands[-1].time:.6f})")
            if self.options.command_type == "float64_multi_array":
                v = np.asarray(msg.data, dtype=np.float64).reshape(-1)
                if v.size != len(names):
                    raise ValueError(f"{v.size} values for the {len(names)} joints {list(names)}")
                if not np.all(np.isfinite(v)):
                    raise ValueError("non-finite values")
                cmd = _Command(time, value=v)
            else:
                cmd = _Command(time, trajectory=sampler_from_msg(msg, names, time, self._held(time)))
        except ValueError as e:
            self.counters.commands_rejected += 1
            self.last_command_drop = str(e)
            return False
        self._commands.append(cmd)
        self.counters.commands += 1
        self._prune()
        return True

    @property
    def last_drop(self) -> str:
        """Why the latest dropped sensor message was dropped."""
        return self.sync.last_drop

    def _held(self, t: float) -> np.ndarray | None:
        """The target at time `t`: the command in force, else the measured joint positions."""
        cmd = self._command_at(t)
        return cmd.at(t) if cmd is not None else self.sync.joint_positions

    def _command_at(self, t: float) -> _Command | None:
        found = None
        for c in self._commands:
            if c.time > t:
                break
            found = c
        return found

    # -- episodes --------------------------------------------------------------------------------
    def start(self, now: float, first_stamp: float | None = None) -> str:
        """Start an episode; with `first_stamp` (the joint-state stamp of its first observation, e.g. the sim
        bridge's reset) an older observation, still the latest at the first ticks, is not taken."""
        if self.recording:
            raise RecordingError(f"an episode is being recorded ({self.counters.frames} frames so far): save or "
                                 "discard it first")
        self._reset_episode(now, first_stamp)
        self.recording = True
        return "recording"

    def end_at(self, stamp: float) -> None:
        """The episode's last observation has joint-state stamp `stamp` (the sim bridge's end event): it and later
        ones are not taken (no action follows the last one inside the episode, as in ``streamdp-collect``). A
        frame of it already written (the event came that late) refuses the episode: it cannot be taken back."""
        if not self.recording:
            raise RecordingError("no episode is being recorded: nothing to end")
        self._end_stamp = stamp
        self._pending = collections.deque(f for f in self._pending if f.js_stamp is None or f.js_stamp < stamp)
        if self._last_emitted is not None and self._last_emitted >= stamp:
            self._refuse(f"a frame of the observation at {self._last_emitted:.6f} was written before the end "
                         f"event (last observation {stamp:.6f}) arrived")

    def _outside(self, stamp: float | None) -> bool:
        """An observation before this episode's first one or from its last one on (see start / end_at)."""
        if stamp is None:
            return False
        return ((self._first_stamp is not None and stamp < self._first_stamp)
                or (self._end_stamp is not None and stamp >= self._end_stamp))

    def tick(self, now: float, check_spacing: bool = True) -> None:
        """One control tick: sample a frame (or mark why there is none) while recording. `check_spacing` false:
        ticks come with the robot's joint states (one frame each), so a late one is the robot's own timing."""
        if not self.recording:
            return
        period = self.options.period
        res = self.sync.sample(now)
        reason = res.reason
        if check_spacing and self._last_tick is not None and now - self._last_tick > 2 * period:
            reason = (f"control tick {now - self._last_tick:.3f} s after the previous one (period {period:.3f} s): "
                      "frames are missing")
        self._last_tick = now
        if self._outside(res.stamp):
            return
        self._pending.append(_Frame(self.counters.ticks, now, res.obs, res.stamp, reason))
        self.counters.ticks += 1
        self._resolve(final=False)

    def save(self) -> EpisodeOutcome:
        """End the episode: write it to the sink, or refuse it with the reason (nothing written)."""
        if not self.recording:
            raise RecordingError("no episode is being recorded: start one first")
        self._resolve(final=True)
        self.recording = False
        n, o = self.counters.frames, self.options
        if not self._refusal and n < o.min_episode_frames:
            head = f"; {self._describe(self._head, 'at the start')}" if self._head.count else ""
            self._refusal = f"{n} good frame(s), fewer than min_episode_frames={o.min_episode_frames}{head}"
        if self._refusal:
            self.sink.clear()
            self.counters.episodes_refused += 1
            return EpisodeOutcome(False, 0, f"episode refused, nothing saved: {self._refusal}")
        where = self.sink.save()
        self.counters.episodes_saved += 1
        msg = f"saved {where}: {n} frames ({n / o.fps:.2f} s)"
        for run, where_ in ((self._head, "leading"), (self._tail, "trailing")):
            if run.count:
                msg += f"; trimmed {run.count} {where_} frame(s) (first: {run.reason})"
        if self._first_stamp is not None and self._first_emitted is not None:
            late = round((self._first_emitted - self._first_stamp) / o.period)
            if late > 0:
                msg += f"; {late} observation(s) at the episode's start were missed (the first frame came late)"
        return EpisodeOutcome(True, n, msg, self._head.count, self._tail.count)

    def discard(self) -> str:
        if not self.recording:
            raise RecordingError("no episode is being recorded: nothing to discard")
        self.sink.clear()
        self.recording = False
        self.counters.episodes_discarded += 1
        return f"discarded the episode ({self.counters.ticks} ticks, {self.counters.frames} good frames)"

    # -- frame bookkeeping -----------------------------------------------------------------------
    def _describe(self, run: _Marked, where: str) -> str:
        return (f"{run.count} frame(s) without usable input {where}, the first at frame {run.index} "
                f"({run.time - self._t0:.3f} s into the episode): {run.reason}")

    def _resolve(self, final: bool) -> None:
        """Give pending frames their action once the next joint state is known, in order; emit them."""
        o = self.options
        while self._pending:
            f = self._pending[0]
            if not f.reason and f.action is None:
                nxt = next(((s, q) for s, q in self._measured if s > f.js_stamp), None)
                if nxt is None:
                    if not final:
                        break
                    f.reason = "no joint state measured after it (its action is unknown)"
                elif nxt[0] - f.js_stamp > o.max_obs_age_s:
                    f.reason = (f"the next joint state came {nxt[0] - f.js_stamp:.3f} s later "
                                f"(> max_obs_age_s {o.max_obs_age_s:g})")
                else:
                    f.action, f.reason = self._action_at(*nxt)
            self._pending.popleft()
            self._emit(f)
        self._prune()

    def _action_at(self, stamp: float, measured: np.ndarray) -> tuple[np.ndarray | None, str]:
        o = self.options
        if not o.command_topic:
            return measured.copy(), ""
        cmd = self._command_at(stamp)
        if cmd is None:
            return None, f"no command on {o.command_topic} yet"
        age = stamp - cmd.time
        if o.max_command_age_s > 0 and age > o.max_command_age_s:
            return None, (f"the command on {o.command_topic} is stale (age {age:.3f} s > max_command_age_s "
                          f"{o.max_command_age_s:g})")
        return cmd.at(stamp + o.lookahead), ""

    def _emit(self, f: _Frame) -> None:
        if self._refusal:
            return
        if f.reason:
            self.counters.marked += 1
            if self.options.on_stale == "refuse":
                run = _Marked()
                run.add(f)
                self._refuse(self._describe(run, "(on_stale=refuse)"))
            elif self.counters.frames == 0:
                self._head.add(f)
            else:
                self._tail.add(f)
            return
        if self._tail.count:  # good frames on both sides of a gap: trimming cannot fix it
            self._refuse(self._describe(self._tail, "between good ones"))
            return
        frame: dict[str, Any] = dict(f.obs or {})
        frame[ACTION_KEY] = np.asarray(f.action, dtype=np.float32)
        frame["task"] = self.options.task_description
        try:
            self.sink.add(frame)
        except ValueError as e:  # e.g. a resumed dataset whose features differ
            self._refuse(f"the dataset refused frame {f.index}: {e}")
            return
        self.counters.frames += 1
        if self._first_emitted is None:
            self._first_emitted = f.js_stamp
        self._last_emitted = f.js_stamp

    def _refuse(self, why: str) -> None:
        self._refusal = why
        self.sink.clear()
        self.warn(f"this episode will be refused when saved: {why}. Discard it and record it again")

    def _prune(self) -> None:
        """Keep only the joint states and commands that pending or future frames can still need."""
        waiting = [f.js_stamp for f in self._pending if not f.reason and f.action is None]
        after = min(waiting) if waiting else self.sync.joint_stamp
        if after is None:
            return
        while self._measured and self._measured[0][0] <= after:
            self._measured.popleft()
        while len(self._commands) >= 2 and self._commands[1].time <= after:
            self._commands.popleft()


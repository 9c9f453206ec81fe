"""``streamdp-convert-bag``: rosbag2 recordings (MCAP or sqlite3) -> a LeRobot v3 dataset, with the recorder's
adapter and options.

    streamdp-convert-bag bags=[runs/bag_0,runs/bag_1] root=data/demos control_rate_hz=20 \\
        joint_names=[joint1,joint2,joint3] command_topic=/teleop/joint_trajectory

Every key but ``bags``, ``split``, ``gap_s``, ``marker_topic``, ``stamps``, ``overwrite`` and ``params_file`` is a
parameter of ``streamdp-record`` with the same name and meaning
(:class:`~streamdp.ros_nodes.recording.RecordingOptions`); ``params_file=FILE`` reads them from the recorder's
own parameter YAML (``recorder: ros__parameters: ...``), keys given on the command line winning.
The bags are read with ``rosbags`` (message definitions from the bag, else ROS 2 Kilted's) and their messages
replayed in log-time order into the recorder's own :class:`~streamdp.ros_nodes.recording.EpisodeRecorder`, with
control ticks every 1/control_rate_hz on the log-time clock, the first half a period after the episode starts:
a tick sees what was logged up to it, as a live recorder would have received it. Sensor stamps are the
header stamps and a command's time is its log time (``stamps=log`` uses log times for everything, for bags
whose header stamps are on another clock).

Episodes (``split``):

* ``bag`` (default): one bag is one episode, from its first joint state to its last;
* ``gap``: a new episode wherever the joint states pause for more than ``gap_s`` seconds;
* ``marker``: each message on ``marker_topic`` starts an episode that ends at the next one (a
  ``diagnostic_msgs/DiagnosticStatus`` marker, as the sim bridge's ``/task/episode``, starts one with
  message ``running`` and ends it with any other).

A bad bag stops the conversion with one line naming the bag, the topic and the time, exit code 2: a missing
topic or one of the wrong type, a message the adapter drops (unknown joint names, wrong sizes, non-finite
values, header stamps that go backwards or repeat, an image of another size), header stamps on another
clock than the log, a truncated or unreadable file. A dataset the run created is removed then. An episode
refused for stale or missing input is reported and skipped; the exit code is then 1.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamdp.policy import cli
from streamdp.policy.cli import UserError, opt
from streamdp.policy.config import ConfigError
from streamdp.ros_nodes.recording import EpisodeRecorder, RecordingOptions

SPLITS = ("bag", "gap", "marker")
STAMPS = ("header", "log")
MSGTYPES = {"joint_states": "sensor_msgs/msg/JointState", "extra": "geometry_msgs/msg/PointStamped",
            "camera": "sensor_msgs/msg/Image", "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
            "float64_multi_array": "std_msgs/msg/Float64MultiArray"}
MARKER_DIAGNOSTIC = "diagnostic_msgs/msg/DiagnosticStatus"
CLOCK_TOLERANCE_S = 1.0  # header stamps further than this from the log time are on another clock


class BagError(UserError):
    """A bag that cannot be converted; the message names the bag, the topic and the time."""


@dataclass
class ConvertBagConfig(RecordingOptions):
    """``streamdp-convert-bag`` keys: the recorder's options plus where the bags are and how they split."""

    bags: list[str] = opt(help="rosbag2 folders (or .mcap / .db3 files), converted in this order", factory=list)
    split: str = opt("bag", "bag: one bag = one episode | gap: split where joint states pause > gap_s | marker: "
                     "each message on marker_topic starts an episode")
    gap_s: float = opt(1.0, "split=gap: a pause in the joint states longer than this ends an episode")
    marker_topic: str = opt("", "split=marker: the episode-marker topic")
    stamps: str = opt("header", "header: sensor header stamps | log: log times for everything")
    overwrite: bool = opt(False, "replace an existing dataset at root")
    params_file: str = opt("", "a streamdp-record parameter YAML (<node>: ros__parameters: ...): its values apply "
                           "to the keys not given here")

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not self.bags:
            problems.append("bags is empty: give one or more rosbag2 folders, e.g. bags=[runs/bag_0]")
        if self.split not in SPLITS:
            problems.append(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.split == "gap" and self.gap_s <= 0:
            problems.append(f"gap_s must be > 0, got {self.gap_s}")
        if self.split == "marker" and not self.marker_topic:
            problems.append("split=marker needs marker_topic")
        if self.stamps not in STAMPS:
            problems.append(f"stamps must be one of {STAMPS}, got {self.stamps!r}")
        if self.overwrite and self.resume:
            problems.append("overwrite=true and resume=true contradict each other")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def recording(self) -> RecordingOptions:
        return RecordingOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RecordingOptions)})


ROS_OWN_PARAMS = ("use_sim_time",)  # parameters every ROS node has: allowed in a params file, not ours


def _hydra_value(v: Any) -> str:
    """A YAML value as a hydra override value (strings quoted, lists bracketed)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return "'" + str(v).replace("'", "\\'") + "'"  # hydra's quoted string: only quotes are escaped


def params_file_overrides(path: str | Path, node: str = "recorder") -> list[str]:
    """``key=value`` overrides of a ``streamdp-record`` parameter YAML: the section of node `node`, ``/**``, or
    the file's only node. Raises ConfigError naming unknown parameters (a typo must not pass unnoticed)."""
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"params_file {p} is not valid YAML: {' '.join(str(e).split())}") from e
    sections = {k: v["ros__parameters"] for k, v in (data or {}).items() if isinstance(v, dict) and
                isinstance(v.get("ros__parameters"), dict)} if isinstance(data, dict) else {}
    key = next((k for k in (node, f"/{node}", "/**") if k in sections), None)
    if key is None and len(sections) == 1:
        key = next(iter(sections))
    if key is None:
        raise ConfigError(f"params_file {p}: no '{node}: ros__parameters:' section (it has {sorted(sections)})")
    params = sections[key]
    names = {f.name for f in dataclasses.fields(RecordingOptions)}
    unknown = sorted(set(params) - names - set(ROS_OWN_PARAMS))
    if unknown:
        raise ConfigError(f"params_file {p}: {unknown} are not streamdp-record parameters (see streamdp-record --help)")
    return [f"{k}={_hydra_value(v)}" for k, v in params.items() if k in names]


def with_params_file(overrides: Sequence[str]) -> list[str]:
    """`overrides` preceded by those of ``params_file=FILE`` (if given) for the keys they do not set."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    path = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("params_file=")), "")
    if not path:
        return list(overrides)
    extra = [o for o in params_file_overrides(path) if o.split("=", 1)[0] not in given]
    return extra + list(overrides)


LIST_KEYS = tuple(f.name for f in dataclasses.fields(ConvertBagConfig) if f.type in ("list[str]", list[str]))


@dataclass
class BagResult:
    bag: str
    saved: int = 0
    refused: int = 0
    lines: list[str] = dataclasses.field(default_factory=list)


@dataclass
class ConvertResult:
    root: Path
    bags: list[BagResult]
    episodes: int  # in the dataset afterwards

    @property
    def refused(self) -> int:
        return sum(b.refused for b in self.bags)


# ------------------------------------------------------------------------------------------------ reading
def _seconds(ns: int) -> float:
    return ns * 1e-9


class _Bag:
    """One open bag: its connections by role, and where-messages for errors."""

    def __init__(self, path: Path, cfg: ConvertBagConfig, reader: Any) -> None:
        self.path, self.cfg, self.reader = path, cfg, reader
        self.start = _seconds(reader.start_time)
        topics = reader.topics
        wanted: dict[str, str] = {cfg.joint_states_topic: MSGTYPES["joint_states"]}
        wanted.update({e.topic: MSGTYPES["extra"] for e in cfg.recording.extras})
        wanted.update({t: MSGTYPES["camera"] for t in cfg.camera_topics})
        if cfg.command_topic:
            wanted[cfg.command_topic] = MSGTYPES[cfg.command_type]
        roles = cfg.recording.topics
        if cfg.split == "marker":
            wanted[cfg.marker_topic] = ""
            roles = {**roles, cfg.marker_topic: "episode markers"}
        for topic, msgtype in wanted.items():
            if topic not in topics:
                raise BagError(f"{path}: no topic {topic} (the {roles[topic]}); the bag has "
                               f"{sorted(topics)}: record it, or set the topic parameter to one of those")
            have = topics[topic].msgtype
            if msgtype and have != msgtype:
                raise BagError(f"{path}: topic {topic} ({roles[topic]}) is {have}, not {msgtype}")
        self.connections = [c for c in reader.connections if c.topic in wanted]
        self.marker_type = topics[cfg.marker_topic].msgtype if cfg.split == "marker" else ""

    def where(self, topic: str, log: float, stamp: float | None = None) -> str:
        at = f"{self.path}: {topic} at {log - self.start:.3f} s into the bag"
        return at + (f" (header stamp {stamp:.6f})" if stamp is not None else "")

    def messages(self, topics: Sequence[str] | None = None) -> Any:
        """(topic, log time in s, message) in log-time order; any failure to read is a BagError naming where."""
        conns = [c for c in self.connections if topics is None or c.topic in topics]
        it = self.reader.messages(connections=conns)
        last = "the start"
        while True:
            try:
                conn, log_ns, raw = next(it)
                msg = self.reader.deserialize(raw, conn.msgtype)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - rosbags, mcap, sqlite and codec errors all mean a bad file
                raise BagError(f"{self.path}: unreadable after {last}: {type(e).__name__}: {e} (truncated or "
                               "corrupt file?)") from e
            last = f"{conn.topic} at {_seconds(log_ns) - self.start:.3f} s into the bag"
            yield conn.topic, _seconds(log_ns), msg


def episode_windows(bag: _Bag) -> list[tuple[float, float]]:
    """[start, end] log times (s) of the episodes in `bag`, by the split rule (module docstring)."""
    cfg = bag.cfg
    js = [t for _, t, _ in bag.messages([cfg.joint_states_topic])]
    if not js:
        raise BagError(f"{bag.path}: topic {cfg.joint_states_topic} has no messages")
    if cfg.split == "bag":
        return [(js[0], js[-1])]
    if cfg.split == "gap":
        out, start = [], js[0]
        for a, b in zip(js, js[1:]):
            if b - a > cfg.gap_s:
                out.append((start, a))
                start = b
        return out + [(start, js[-1])]
    out, open_at = [], None
    for _, t, msg in bag.messages([cfg.marker_topic]):
        starts = bag.marker_type != MARKER_DIAGNOSTIC or msg.message == "running"
        if open_at is not None:
            out.append((open_at, t))
        open_at = t if starts else None
    if open_at is not None:
        out.append((open_at, js[-1]))
    return out


def _log_stamped(msg: Any) -> Any:
    """`msg` with a zero header stamp (a JointTrajectory then starts when it was logged: stamps=log)."""
    stamp = dataclasses.replace(msg.header.stamp, sec=0, nanosec=0)
    return dataclasses.replace(msg, header=dataclasses.replace(msg.header, stamp=stamp))


def convert_bag(bag: _Bag, writer: Any, report: Callable[[str], None]) -> BagResult:
    """Replay one bag into a fresh EpisodeRecorder writing to `writer`; returns what it saved and refused."""
    cfg = bag.cfg
    result = BagResult(str(bag.path))
    windows = episode_windows(bag)
    rec = EpisodeRecorder(cfg.recording, writer, warn=lambda _m: None)  # the outcome says why, once
    period = cfg.period
    extras = {e.topic: e.name for e in cfg.recording.extras}
    cameras = dict(zip(cfg.camera_topics, cfg.camera_names))
    state = {"w": 0, "k": 0, "clock_checked": False}

    def finish() -> None:
        out = rec.save()
        result.saved += int(out.saved)
        result.refused += int(not out.saved)
        result.lines.append(f"{bag.path} episode {len(result.lines)}: {out.message}")
        report(result.lines[-1])

    def advance(until: float, inclusive: bool = False) -> None:
        """Run the control ticks before `until` (log time), starting and ending episodes on the way."""
        while state["w"] < len(windows):
            start, end = windows[state["w"]]
            t = start + (state["k"] + 0.5) * period  # mid-way between ticks of a robot at the same rate
            if t > end + 1e-9:
                if until <= end and not inclusive:
                    return  # messages up to the window's end may still resolve its last frames
                if rec.recording:
                    finish()
                state["w"], state["k"] = state["w"] + 1, 0
                continue
            if t > until or (t == until and not inclusive):
                return
            if not rec.recording:
                rec.start(t)
            rec.tick(t)
            state["k"] += 1

    for topic, log, msg in bag.messages():
        advance(log)
        stamp = log if cfg.stamps == "log" else None
        if topic == cfg.joint_states_topic:
            if not state["clock_checked"] and stamp is None:
                state["clock_checked"] = True
                header = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
                if abs(header - log) > CLOCK_TOLERANCE_S:
                    raise BagError(f"{bag.where(topic, log, header)}: header stamps are {header - log:+.1f} s from "
                                   "the log time, another clock (sim time?): convert with stamps=log")
            ok, why = rec.joint_state_msg(msg, stamp), rec.last_drop
        elif topic in extras:
            ok, why = rec.extra_msg(extras[topic], msg, stamp), rec.last_drop
        elif topic in cameras:
            ok, why = rec.image_msg(cameras[topic], msg, stamp), rec.last_drop
        elif topic == cfg.command_topic:
            if cfg.stamps == "log" and cfg.command_type == "joint_trajectory":
                msg = _log_stamped(msg)
            ok, why = rec.command_msg(msg, log), rec.last_command_drop
        else:  # episode markers: only their times matter (episode_windows)
            continue
        if not ok:
            header = getattr(getattr(msg, "header", None), "stamp", None)
            stamp_s = None if header is None else header.sec + 1e-9 * header.nanosec
            raise BagError(f"{bag.where(topic, log, stamp_s)}: {why}")
    advance(math.inf, inclusive=True)
    if rec.recording:
        finish()
    return result


def convert(cfg: ConvertBagConfig, report: Callable[[str], None] = print) -> ConvertResult:
    """Convert every bag of `cfg` into the dataset at ``cfg.root`` (see the module docstring)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from streamdp.ros_nodes.episode_writer import EpisodeWriter

    paths = [Path(b).expanduser() for b in cfg.bags]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"bags not found: {missing}")
    writer = EpisodeWriter(cfg.recording, overwrite=cfg.overwrite)
    results = []
    ok = False
    try:
        for path in paths:
            try:
                reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
                reader.open()
            except Exception as e:  # noqa: BLE001 - rosbags raises several kinds for a file it cannot open
                raise BagError(f"{path}: cannot open it as a rosbag2 recording, no message can be read: "
                               f"{type(e).__name__}: {e} (a truncated or corrupt file, e.g. an interrupted "
                               "recording?)") from e
            try:
                results.append(convert_bag(_Bag(path, cfg, reader), writer, report))
            finally:
                reader.close()
        ok = True
    finally:
        if ok:
            writer.close()
        else:
            writer.abort()
    return ConvertResult(writer.root, results, writer.num_episodes)


def run(cfg: ConvertBagConfig) -> int:
    res = convert(cfg)
    saved = sum(b.saved for b in res.bags)
    print(f"[convert-bag] {saved} episode(s) saved, {res.refused} refused, from {len(res.bags)} bag(s) -> "
          f"{res.root} ({res.episodes} episodes)")
    return 1 if res.refused else 0


def load_config(overrides: Sequence[str] = ()) -> ConvertBagConfig:
    """The validated ``streamdp-convert-bag`` config of these ``key=value`` overrides (``params_file`` expanded)."""
    return cli.load_config("convert_bag", ConvertBagConfig, with_params_file(overrides), LIST_KEYS)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-convert-bag bags=[...] root=DIR control_rate_hz=N joint_names=[...]``."""
    prog = "streamdp-convert-bag"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        args = with_params_file(args)
    except (ConfigError, OSError) as e:
        if "--debug" in args:
            raise
        print(cli.one_line(prog, e), file=sys.stderr)
        return 2
    return cli.run_job(prog, "convert_bag", ConvertBagConfig, run, args, doc=__doc__.split("\n\n")[0], groups=(),
                       list_keys=LIST_KEYS)


if __name__ == "__main__":
    sys.exit(main())

"""``streamdp-soak``: the sim bring-up over DDS for a long time under a competing CPU load, every command judged.

    streamdp-soak duration_s=1200 load=1 out=/root/streamdp-long/soak/run    # 20 minutes, one busy core
    streamdp-soak duration_s=180 restart_every_s=45 out=outputs/soak/restart   # SIGKILL + restart, mid-motion
    streamdp-soak duration_s=180 relay.drop_share=0.3 relay.delay_share=0.3 relay.delay_s=0.5 out=outputs/soak/lossy

It starts what ``streamdp-bringup sim`` starts (``sim_bridge_node`` with automatic episode resets
coordinated with ``policy_node``, the bundled arm policy and the safety filter of config/ros/sim.yaml) as
processes, plus ``load`` busy-loop processes, and watches from its own node:

* every command on the wire, checked by the safety oracle (:mod:`streamdp.ros_nodes.safety_oracle`, the
  fault suite's): chained point by point per publisher, each activation from the joint state measured
  when its first command arrives (activations are seen on ``/policy_node/transition_event``), so a
  restarted or re-seeded node whose first command is not within one step of the arm is unsafe too;
* who else is on the ROS domain: commands are attributed to their publisher (its node, from the ROS
  graph), and nodes other than the soak's own are reported (``foreign_nodes``): a test or a second
  bring-up on the same ``ROS_DOMAIN_ID`` would publish on the same topics, so give the soak a domain of
  its own (tests draw theirs from 1-101);
* the policy node's ``/diagnostics`` totals (ticks, deadline misses, holds, clamps, catch-ups, stale
  ticks, latency percentiles over its whole life), the sim's episodes, the relay's counts;
* the resident memory of the two node processes (``/proc/<pid>/status``) every ``sample_every_s``.

``restart_every_s``: the policy node is killed with SIGKILL while it streams and started again (it
configures and activates by itself, seeding from the measured state). ``relay.*``: the policy node reads
its joint states through :mod:`streamdp.ros_nodes.joint_state_relay`, which drops and delays a share of
them. The report is ``report.json`` (everything, with the memory series) and ``summary.md`` in ``out``;
the node logs are in ``out/logs``. ROS environment: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a
ROS_DOMAIN_ID and ROS_LOG_DIR must be set (``streamdp-bringup``'s rule).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamdp.policy.cli import UserError, load_config, opt, run_job
from streamdp.ros_nodes import bringup
from streamdp.ros_nodes.rosenv import ros_env_problems

# A busy core that ends with its parent (a soak killed without cleanup leaves no load behind).
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    sum(range(100_000))\n"
COMMAND_TOPIC = "/joint_trajectory_controller/joint_trajectory"
OWN_NODES = ("sim_bridge", "policy_node", "joint_state_relay", "streamdp_soak_monitor")


@dataclass
class RelayConfig:
    drop_share: float = opt(0.0, "share of the JointStates the relay drops (with delay_share 0: no relay)")
    delay_share: float = opt(0.0, "share of the other JointStates it holds back delay_s")
    delay_s: float = opt(0.5, "how long a delayed JointState is held back (s)")
    seed: int = opt(0, "seed of the relay's draws")

    @property
    def enabled(self) -> bool:
        return self.drop_share > 0 or self.delay_share > 0


@dataclass
class SoakConfig:
    duration_s: float = opt(1200.0, "how long to run, from the policy node's first command (s)")
    load: int = opt(1, "CPU-bound busy-loop processes competing with the nodes")
    checkpoint: str = opt("", "policy checkpoint directory; empty: the bundled arm policy")
    out: str = opt("outputs/soak", "report.json, summary.md and the node logs (logs/) go here")
    restart_every_s: float = opt(0.0, "SIGKILL the policy node this often while it streams, then start it "
                                      "again; 0: never")
    relay: RelayConfig = opt(help="joint states through a lossy relay", factory=RelayConfig)
    sample_every_s: float = opt(10.0, "resident memory sampling period (s)")
    warmup_s: float = opt(60.0, "memory growth is measured from this long after the first command (s)")
    seed: int = opt(0, "seed of the sim's first episode")
    max_episode_steps: int = opt(0, "episode length in ticks; 0: the task's")
    startup_timeout_s: float = opt(300.0, "fail when the policy node has not published within this long (s)")

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise UserError(f"duration_s must be > 0, got {self.duration_s}")
        if self.load < 0:
            raise UserError(f"load must be >= 0 busy processes, got {self.load}")
        if self.restart_every_s < 0:
            raise UserError(f"restart_every_s must be >= 0, got {self.restart_every_s}")
        if not self.sample_every_s > 0:
            raise UserError(f"sample_every_s must be > 0, got {self.sample_every_s}")
        r = self.relay
        if not (0 <= r.drop_share <= 1 and 0 <= r.delay_share <= 1 and r.delay_s >= 0):
            raise UserError(f"relay: drop_share and delay_share must be in [0, 1] and delay_s >= 0, got {asdict(r)}")


def rss_kb(pid: int) -> int | None:
    """Resident memory of process `pid` in kB (VmRSS), None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def relay_description(cfg: RelayConfig, output_topic: str) -> bringup.NodeDescription:
    return bringup.NodeDescription(
        executable="joint_state_relay", name="joint_state_relay", module="streamdp.ros_nodes.joint_state_relay",
        node_class="streamdp.ros_nodes.joint_state_relay:JointStateRelay",
        parameters=({"output_topic": output_topic, "drop_share": float(cfg.drop_share),
                     "delay_share": float(cfg.delay_share), "delay_s": float(cfg.delay_s), "seed": int(cfg.seed)},))


def soak_descriptions(cfg: SoakConfig) -> list[bringup.NodeDescription]:
    """The sim bring-up's nodes for a soak (plus the relay, when one is asked for)."""
    sim: dict[str, Any] = {"seed": int(cfg.seed)}
    if cfg.max_episode_steps:
        sim["max_episode_steps"] = int(cfg.max_episode_steps)
    policy: dict[str, Any] = {"diagnostics_rate_hz": 2.0, "autostart": True}
    if cfg.checkpoint:
        policy["checkpoint"] = str(cfg.checkpoint)
    relayed = "/joint_states_relayed"
    if cfg.relay.enabled:
        policy["joint_states_topic"] = relayed
    descs = bringup.describe("sim", overrides={"sim_bridge": sim, "policy_node": policy})
    if cfg.relay.enabled:
        descs.insert(1, relay_description(cfg.relay, relayed))
    return descs


def _monitor_class() -> type:
    """The soak's watcher node (defined here: importing rclpy waits until an entry point made it loadable)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from lifecycle_msgs.msg import State, TransitionEvent
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from streamdp.ros_nodes.safety_oracle import ChainCheck
    from streamdp.ros_nodes.testing import Monitor

    class SoakMonitor(Monitor):
        """Every command through the oracle chain; activations, joint states, episodes, diagnostics, relay."""

        def __init__(self, bounds: Any, joints: list[str], keep_points: bool = False, **kwargs: Any) -> None:
            super().__init__("streamdp_soak_monitor", **kwargs)
            self.joints = joints
            self.points: list[np.ndarray] | None = [] if keep_points else None  # every command's (tests)
            self.bounds = bounds
            self.chains: dict[str, ChainCheck] = {}  # one oracle chain per publisher (its gid)
            self.publisher_nodes: dict[str, str] = {}  # gid -> node name, from the ROS graph
            self.received = 0
            self.publisher_since = 0  # commands received when the latest publisher (process) sent its first
            self.latest_publisher = ""
            self.foreign_nodes: set[str] = set()
            self.step = np.asarray(bounds.step, dtype=np.float64)
            self.measured: np.ndarray | None = None
            self.joint_states = 0
            self.activations = 0
            self._new_segment = False
            self._last_cmd_source_ns = 0  # publisher-side stamp of the latest command (MessageInfo)
            self.restart_pending = False
            self.starts: list[dict[str, Any]] = []  # per activation: its first command against the arm
            self.episodes: dict[str, int] = {"success": 0, "timeout": 0, "running": 0}
            self.relay: dict[str, str] = {}
            self.diag_history: list[dict[str, str]] = []  # the last /diagnostics of each policy process
            latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(JointState, "/joint_states", self._on_js, QoSProfile(depth=10))
            self.create_subscription(TransitionEvent, "/policy_node/transition_event", self._on_transition,
                                     QoSProfile(depth=10))
            self.create_subscription(DiagnosticStatus, "/task/episode", self._on_episode, latched)
            self.set_relay_params = self.create_client(SetParameters, "/joint_state_relay/set_parameters")
            self._active = State.PRIMARY_STATE_ACTIVE
            self._param_msg = (ParameterMsg, ParameterValue, ParameterType)
            self._diag_cls = DiagnosticArray

        def _on_js(self, m: Any) -> None:
            try:
                idx = [list(m.name).index(j) for j in self.joints]
            except ValueError:
                return
            self.measured = np.array([m.position[i] for i in idx], dtype=np.float64)
            self.joint_states += 1

        def _on_transition(self, m: Any, info: Any) -> None:  # with the message info: when it was sent
            if m.goal_state.id == self._active:
                self.activations += 1
                # A restarted process's endpoints match this monitor one by one: its activation event can
                # arrive after commands it published later. Those were already chained from the measured
                # state at the publisher's first command; re-seeding the oracle now, at a measured state the
                # commands have moved ahead of, would flag a jump the node never made (seen once in CI).
                sent = int(info.get("source_timestamp") or 0)
                if not (sent and sent < self._last_cmd_source_ns):
                    self._new_segment = True

        def _on_episode(self, m: Any) -> None:
            state = m.message
            self.episodes[state] = self.episodes.get(state, 0) + 1

        def _on_cmd(self, m: Any, info: Any) -> None:  # with the message info: who published it
            super()._on_cmd(m)
            gid = bytes((info.get("publisher_gid") or {}).get("data", b"")).hex()
            self._last_cmd_source_ns = int(info.get("source_timestamp") or 0)
            try:
                idx = [list(m.joint_names).index(j) for j in self.joints]
                pts = np.array([[p.positions[i] for i in idx] for p in m.points], dtype=np.float64)
            except (ValueError, IndexError):
                pts = np.full((1, len(self.joints)), np.nan)  # malformed: the oracle counts it unsafe
            chain = self.chains.get(gid)
            if chain is None or self._new_segment:
                if chain is None:
                    chain = self.chains[gid] = ChainCheck(self.bounds)
                    self.publisher_since, self.latest_publisher = self.received, gid
                    self._name_publishers()
                self._new_segment = False
                seed = self.measured if self.measured is not None else pts[0]
                gap = np.abs(pts[0] - seed) if pts.shape[1:] == seed.shape else np.full_like(seed, np.inf)
                self.starts.append({"command": self.received, "publisher": gid, "after_restart": self.restart_pending,
                                    "first_command_gap": float(np.max(gap)),
                                    "within_one_step": bool(np.all(gap <= self.step + 1e-9))})
                self.restart_pending = False
                chain.restart(seed)
            chain.add(pts)
            self.received += 1
            if self.points is not None:
                self.points.append(pts)

        @property
        def unsafe(self) -> int:
            return sum(c.unsafe for c in self.chains.values())

        def _name_publishers(self) -> None:
            for e in self.get_publishers_info_by_topic(COMMAND_TOPIC):
                self.publisher_nodes[bytes(e.endpoint_gid).hex()] = e.node_name

        def check_graph(self) -> None:
            """Note nodes on this ROS domain that are not the soak's (or more than one of one of them)."""
            names = [n for n, _ in self.get_node_names_and_namespaces()]
            for n in set(names):
                if n not in OWN_NODES or names.count(n) > 1:
                    self.foreign_nodes.add(n if n not in OWN_NODES else f"{n} x{names.count(n)}")

        def _on_diag(self, m: Any) -> None:
            for s in m.status:
                if "joint_state_relay" in s.name:
                    self.relay = {kv.key: kv.value for kv in s.values}
                elif "streaming policy" in s.name:
                    new = {kv.key: kv.value for kv in s.values}
                    if self.diag and _num(new, "total_ticks") < _num(self.diag, "total_ticks"):
                        self.diag_history.append(self.diag)  # a new policy process: keep the old one's last
                    self.diag = new
                    self.diag_count += 1

        def relay_request(self, **values: float) -> Any:
            msg, val, typ = self._param_msg
            params = [msg(name=k, value=val(type=typ.PARAMETER_DOUBLE, double_value=float(v)))
                      for k, v in values.items()]
            return self.set_relay_params.call_async(SetParameters.Request(parameters=params))

    return SoakMonitor


def _num(d: dict[str, str], key: str) -> float:
    try:
        return float(d.get(key, "nan"))
    except ValueError:
        return math.nan


class SoakRun:
    """The soak's processes and its watcher (a context manager); the job loop and the tests drive it."""

    def __init__(self, cfg: SoakConfig, log_dir: Path, keep_points: bool = False) -> None:
        problems = ros_env_problems()
        if problems:
            raise UserError("refusing to start ROS nodes: " + "; ".join(problems) + " (e.g. export "
                            "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=42 ROS_LOG_DIR=$PWD/build/ros_log)")
        self.cfg = cfg
        self.log_dir = Path(log_dir)
        self.descs = soak_descriptions(cfg)
        bad = bringup.checkpoint_problem(self.descs)
        if bad:
            raise UserError(bad)
        self.policy_desc = next(d for d in self.descs if d.name == "policy_node")
        self.sim_desc = next(d for d in self.descs if d.name == "sim_bridge")
        from streamdp.policy.checkpoint import read_config
        from streamdp.ros_nodes.safety_oracle import Bounds

        cfg_ckpt, _ = read_config(Path(bringup.effective_parameter(self.policy_desc, "checkpoint")))
        self.joints = list(bringup.effective_parameter(self.policy_desc, "joint_names") or cfg_ckpt.joint_names)
        self.limits = dict(bringup.effective_parameter(self.policy_desc, "limits") or {})
        self.period = 1.0 / float(cfg_ckpt.fps)
        self.bounds = Bounds.from_params(self.limits, len(self.joints), self.period)  # the raw numbers of the YAML
        self.memory: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self._stack = contextlib.ExitStack()
        self._load: list[subprocess.Popen] = []
        self._restart_logs: list[Any] = []
        self._restarting = False
        self._activations_before = 0  # activations seen before the current policy process started
        self._keep_points = keep_points

    # ------------------------------------------------------------------ processes
    def __enter__(self) -> SoakRun:
        from streamdp.ros_nodes.testing import node_processes

        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._load = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True)
                          for _ in range(self.cfg.load)]
            self.mon, self.ex, self.procs = self._stack.enter_context(
                node_processes(self.descs, self.log_dir, _monitor_class(), bounds=self.bounds, joints=self.joints,
                               keep_points=self._keep_points))
        except BaseException:
            self._stop_load()
            raise
        self.t_start = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.close()  # SIGINT to the nodes (the policy node publishes a final hold), then kill
        finally:
            self._stop_load()
            for f in self._restart_logs:
                f.close()

    def _stop_load(self) -> None:
        for p in self._load:
            if p.poll() is None:
                p.kill()
            p.wait()

    def _index(self, name: str) -> int:
        return next(i for i, d in enumerate(self.descs) if d.name == name)

    def pid(self, name: str) -> int:
        return self.procs[self._index(name)].pid

    def kill_policy(self) -> None:
        """SIGKILL the policy node (no final hold, no clean shutdown: a crash) and wait until it is gone."""
        p = self.procs[self._index("policy_node")]
        self._restarting = True
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.restarts.append({"killed_pid": p.pid, "killed_publisher": self.mon.latest_publisher,
                              "after_commands": self.mon.received,
                              "t_s": time.monotonic() - self.t_start})
        self.mon.restart_pending = True

    def start_policy(self) -> None:
        """Start the policy node again (it configures and activates by itself, from the measured state)."""
        from streamdp.ros_nodes.testing import die_with_parent

        i = self._index("policy_node")
        out = open(self.log_dir / f"policy_node.restart{len(self.restarts)}.log", "w")  # noqa: SIM115 - closed at exit
        self._restart_logs.append(out)
        self.procs[i] = subprocess.Popen(bringup.command(self.policy_desc, self.log_dir),
                                         env=bringup.child_env(self.policy_desc), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        self._restarting = False
        self._activations_before = self.mon.activations

    def policy_streaming(self, commands: int = 40) -> bool:
        """The current policy process has activated and published `commands` commands (2 s at 20 Hz), so a
        kill now is one mid-motion, not one right after its activation."""
        m = self.mon
        return m.activations > self._activations_before and m.received - m.publisher_since >= commands

    # ------------------------------------------------------------------ watching
    def spin(self, seconds: float) -> None:
        """Spin the watcher for `seconds`; a node process that exited on its own ends the soak."""
        end = time.monotonic() + seconds
        while True:
            self.check_alive()
            self.ex.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))
            if time.monotonic() >= end:
                return

    def spin_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.log_dir}\n"
                                   + self.log_tail())
            self.check_alive()
            self.ex.spin_once(timeout_sec=0.05)

    def check_alive(self) -> None:
        for d, p in zip(self.descs, self.procs):
            if p.poll() is not None and not (self._restarting and d.name == "policy_node"):
                raise RuntimeError(f"{d.name} exited with code {p.returncode} during the soak; logs in "
                                   f"{self.log_dir}\n" + self.log_tail())

    def log_tail(self) -> str:
        from streamdp.ros_nodes.testing import log_tail

        return log_tail(self.log_dir)

    def sample_memory(self, t: float, tag: str = "") -> dict[str, Any]:
        """Resident memory of both nodes now (and a look at the ROS graph for foreign nodes)."""
        self.mon.check_graph()
        row = {"t_s": round(t, 3), "tag": tag, "policy_node_pid": self.pid("policy_node"),
               "policy_node_rss_kb": rss_kb(self.pid("policy_node")),
               "sim_bridge_rss_kb": rss_kb(self.pid("sim_bridge")), "loadavg_1min": os.getloadavg()[0]}
        self.memory.append(row)
        return row

    def set_relay(self, timeout: float = 10.0, **values: float) -> None:
        """Change the relay's parameters now (drop_share, delay_share, delay_s)."""
        self.spin_until(self.mon.set_relay_params.service_is_ready, timeout, "the relay's parameter service")
        fut = self.mon.relay_request(**values)
        self.spin_until(fut.done, timeout, "the relay's parameter change")
        if not all(r.successful for r in fut.result().results):
            raise RuntimeError(f"the relay refused {values}: {[r.reason for r in fut.result().results]}")

    # ------------------------------------------------------------------ report
    def report(self, t0: float | None = None, warmup_s: float = 0.0) -> dict[str, Any]:
        """Everything measured so far (see the module docstring)."""
        m = self.mon
        diags = [*m.diag_history, m.diag] if m.diag else list(m.diag_history)

        def total(key: str) -> int:
            return int(sum(_num(d, key) for d in diags if math.isfinite(_num(d, key))))

        main = max(diags, key=lambda d: _num(d, "total_ticks"), default={})
        pol = [r for r in self.memory if r["policy_node_pid"] == self.pid("policy_node")
               and r["policy_node_rss_kb"] is not None]
        start = next((r for r in pol if r["t_s"] >= warmup_s), pol[0] if pol else None)
        end = pol[-1] if pol else None
        growth = (100.0 * (end["policy_node_rss_kb"] - start["policy_node_rss_kb"]) / start["policy_node_rss_kb"]
                  if start and end else math.nan)
        sim = [r["sim_bridge_rss_kb"] for r in self.memory if r["sim_bridge_rss_kb"] is not None]
        restarts = [s for s in m.starts if s["after_restart"]]
        ticks = total("total_ticks")
        return {
            "duration_s": round(time.monotonic() - t0, 1) if t0 is not None else math.nan,
            "commands_received": m.received, "points_checked": sum(c.points for c in m.chains.values()),
            "unsafe_commands": m.unsafe,
            "violations": [v for c in m.chains.values() for v in c.violations][:20],
            "publishers": [{"gid": g, "node": m.publisher_nodes.get(g, "?"), "commands": c.commands,
                            "unsafe": c.unsafe} for g, c in m.chains.items()],
            "foreign_nodes": sorted(m.foreign_nodes),
            "ticks": ticks, "commands_published": total("total_commands_published"),
            "deadline_misses": total("total_deadline_misses"), "holds": total("total_holds"),
            "starved_holds": total("total_starved_holds"), "late_actions_dropped": total("total_late_actions_dropped"),
            "hold_share": total("total_holds") / ticks if ticks else math.nan,
            "chunks": total("total_chunks"), "stale_ticks": total("stale_ticks"),
            "out_of_order_drops": total("out_of_order_drops"),
            "safety_clamped": total("safety_clamped"), "safety_catching_up": total("safety_catching_up"),
            "safety_holding": total("safety_holding"), "safety_fault": total("safety_fault"),
            "faults": sorted({d.get("fault", "") for d in diags} - {""}),
            "obs_to_cmd_ms_p50": _num(main, "total_obs_to_cmd_latency_ms_p50"),
            "obs_to_cmd_ms_p99": _num(main, "total_obs_to_cmd_latency_ms_p99"),
            "obs_age_ms_max": max((_num(d, "obs_age_ms_max") for d in diags), default=math.nan),
            "activations": m.activations, "episodes_ended": m.episodes.get("success", 0) + m.episodes.get("timeout", 0),
            "episode_successes": m.episodes.get("success", 0),
            "activation_starts": len(m.starts),
            "activation_first_command_gap_max": max((s["first_command_gap"] for s in m.starts), default=math.nan),
            "activation_starts_within_one_step": sum(s["within_one_step"] for s in m.starts),
            "restarts": len(self.restarts), "restart_starts": restarts,
            "policy_rss_kb_first": pol[0]["policy_node_rss_kb"] if pol else None,
            "policy_rss_kb_start": start["policy_node_rss_kb"] if start else None,
            "policy_rss_kb_end": end["policy_node_rss_kb"] if end else None,
            "policy_rss_kb_max": max((r["policy_node_rss_kb"] for r in pol), default=None),
            "policy_rss_growth_pct": growth, "memory_start_t_s": start["t_s"] if start else None,
            "sim_rss_kb_start": sim[0] if sim else None, "sim_rss_kb_end": sim[-1] if sim else None,
            "relay": m.relay, "step_limit": self.bounds.step.tolist(),
            "policy_processes": [{k: d.get(k) for k in ("total_ticks", "total_deadline_misses", "total_holds",
                                                        "total_obs_to_cmd_latency_ms_p50",
                                                        "total_obs_to_cmd_latency_ms_p99", "activations", "fault")}
                                 for d in diags],
        }


def summary_markdown(cfg: SoakConfig, rep: dict[str, Any]) -> str:
    """The readable summary of a soak report."""
    def f(x: Any, fmt: str = "{:,}") -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)

    pubs = "; ".join(f"{p['node']}: {p['commands']:,}, {p['unsafe']}" for p in rep["publishers"])
    lease = " (after a SIGKILL the dead node stays in the ROS graph until its lease ends)" if rep["restarts"] else ""
    lines = [
        f"# streamdp-soak: {rep['duration_s']:.0f} s, load={cfg.load}, restart_every_s={cfg.restart_every_s:g}, "
        f"relay={'on ' + json.dumps(asdict(cfg.relay)) if cfg.relay.enabled else 'off'}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| control ticks (policy node) | {f(rep['ticks'])} |",
        f"| commands received and checked (points) | {f(rep['commands_received'])} ({f(rep['points_checked'])}) |",
        f"| command publishers (node: commands, unsafe) | {pubs or 'none'} |",
        f"| foreign nodes on the ROS domain | {', '.join(rep['foreign_nodes']) or 'none'}{lease} |",
        f"| **unsafe commands** (safety oracle) | **{f(rep['unsafe_commands'])}** |",
        f"| deadline misses | {f(rep['deadline_misses'])} |",
        f"| holds (starved) | {f(rep['holds'])} ({f(rep['starved_holds'])}), "
        f"{f(100 * rep['hold_share'], '{:.1f}')} % of ticks |",
        f"| obs -> command latency p50 / p99 (ms) | {f(rep['obs_to_cmd_ms_p50'], '{:.0f}')} / "
        f"{f(rep['obs_to_cmd_ms_p99'], '{:.0f}')} |",
        f"| safety: clamped / catching up / holding | {f(rep['safety_clamped'])} / {f(rep['safety_catching_up'])} "
        f"/ {f(rep['safety_holding'])} |",
        f"| latched faults | {len(rep['faults'])} {rep['faults'] if rep['faults'] else ''} |",
        f"| episodes ended (successes) / activations | {f(rep['episodes_ended'])} ({f(rep['episode_successes'])}) / "
        f"{f(rep['activations'])} |",
        f"| activations whose first command is within one step of the arm | {rep['activation_starts_within_one_step']}"
        f" of {rep['activation_starts']} (largest gap {f(rep['activation_first_command_gap_max'], '{:.4f}')} rad) |",
        f"| policy node resident memory at {f(rep['memory_start_t_s'], '{:.0f}')} s / end (kB) | "
        f"{f(rep['policy_rss_kb_start'])} / {f(rep['policy_rss_kb_end'])} "
        f"({f(rep['policy_rss_growth_pct'], '{:+.2f}')} %) |",
        f"| sim bridge resident memory start / end (kB) | {f(rep['sim_rss_kb_start'])} / {f(rep['sim_rss_kb_end'])} |",
        f"| stale ticks / out-of-order joint states dropped | {f(rep['stale_ticks'])} / "
        f"{f(rep['out_of_order_drops'])} |",
        f"| oldest observation acted on (ms) | {f(rep['obs_age_ms_max'], '{:.0f}')} |",
    ]
    if rep["restarts"]:
        gaps = [s["first_command_gap"] for s in rep["restart_starts"]]
        ok = sum(s["within_one_step"] for s in rep["restart_starts"])
        lines.append(f"| SIGKILL restarts / first command within one step | {rep['restarts']} / {ok} of "
                     f"{len(gaps)} (largest gap {f(max(gaps, default=math.nan), '{:.4f}')} rad) |")
    if rep["relay"]:
        r = rep["relay"]
        lines.append(f"| relay: received / passed / dropped / delayed | {r.get('received')} / {r.get('passed')} / "
                     f"{r.get('dropped')} / {r.get('delayed')} |")
    return "\n".join(lines) + "\n"


def run_soak(cfg: SoakConfig) -> int:
    """The job: run for `duration_s` from the first command, sampling memory, restarting if asked; report."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    stop: list[int] = []
    with SoakRun(cfg, out / "logs") as run:
        # After rclpy's own handlers (set up with the watcher): SIGINT/SIGTERM end the run with a report.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda n, _f: stop.append(n))
        print(f"[soak] nodes starting (logs in {run.log_dir}); load: {cfg.load} busy process(es)", flush=True)
        run.spin_until(lambda: run.mon.received > 0 or bool(stop), cfg.startup_timeout_s,
                       "the policy node's first command")
        t0 = time.monotonic()
        run.sample_memory(0.0, "first command")
        next_sample, next_log = t0 + cfg.sample_every_s, t0 + 60.0
        next_kill = t0 + cfg.restart_every_s if cfg.restart_every_s else math.inf
        while (now := time.monotonic()) - t0 < cfg.duration_s and not stop:
            run.spin(0.1)
            if now >= next_sample:
                run.sample_memory(now - t0)
                next_sample += cfg.sample_every_s
            if now >= next_kill and run.policy_streaming():
                run.kill_policy()
                run.start_policy()
                print(f"[soak] {now - t0:.0f} s: policy node killed (SIGKILL) and started again", flush=True)
                next_kill = now + cfg.restart_every_s
            if now >= next_log:
                r = run.report(t0, cfg.warmup_s)
                print(f"[soak] {now - t0:.0f}/{cfg.duration_s:.0f} s: {r['commands_received']} commands, "
                      f"{r['unsafe_commands']} unsafe, {r['holds']} holds, {r['deadline_misses']} deadline misses, "
                      f"{len(r['faults'])} faults", flush=True)
                next_log += 60.0
        run.sample_memory(time.monotonic() - t0, "end")
        run.spin(1.0)  # the last diagnostics
        rep = run.report(t0, cfg.warmup_s)
    if stop:
        print(f"[soak] stopped by signal {stop[0]} after {rep['duration_s']:.0f} s", flush=True)
    rep = {"command": "streamdp-soak " + " ".join(sys.argv[1:]), "started": started, "config": asdict(cfg),
           "stopped_early": bool(stop),
           "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
           **rep, "memory": run.memory}
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    text = summary_markdown(cfg, rep)
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    return 0 if rep["unsafe_commands"] == 0 else 1


def soak_config(argv: list[str]) -> SoakConfig:
    """The validated ``streamdp-soak`` config of these ``key=value`` overrides."""
    return load_config("soak", SoakConfig, argv)


def main(argv: list[str] | None = None) -> int:
    return run_job("streamdp-soak", "soak", SoakConfig, run_soak, argv, doc=__doc__.split("\n\n")[0], groups=())


if __name__ == "__main__":
    from streamdp.ros_nodes.rosenv import ensure_ros_env

    ensure_ros_env()
    sys.exit(main())

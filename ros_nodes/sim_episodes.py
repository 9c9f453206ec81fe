"""Scored closed-loop episodes over ROS 2: ``sim_bridge_node`` and ``policy_node`` as separate processes.

    python -m streamdp.ros_nodes.sim_episodes --checkpoint CKPT --episodes 20 --samplers sdp ddpm ddim:10

What a user would do by hand with ``ros2 lifecycle`` and ``ros2 param``, scripted: for each sampler
it starts both nodes from the ``sim`` bring-up descriptions (the ones ``streamdp-bringup sim`` and
``launch/sim.launch.py`` use) in real-time, then for every episode

1. deactivates the policy node (``/policy_node/change_state``: it holds),
2. resets the sim with ``reset = i + 1`` (``/sim_bridge/set_parameters``; the episode's seed is then
   ``seed + i``, as in ``streamdp-eval``),
3. activates the policy node once the new episode's joint state is out (the buffer is seeded from it; before
   the first episode it was activated once, unscored, to know it hears the robot),
4. waits for the sim's ``/task/episode`` end message (``success`` or ``timeout``), deactivates, and
   reads the policy node's ``/diagnostics`` for that activation: observation -> command latency,
   inference time, network calls per chunk, deadline misses, holds and safety-filter counts.

The physics runs at the task rate whatever the policy does, so a sampler that is too slow for the
control period pays for it in closed loop (it holds while it computes), as on a real arm. Timings
on a shared CPU are noisy: compare samplers within one run. ROS environment:
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS_DOMAIN_ID and ROS_LOG_DIR must be set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState

from streamdp.ros_nodes import bringup
from streamdp.ros_nodes.rosenv import ros_env_problems
from streamdp.ros_nodes.testing import Monitor, log_tail, node_processes

DIAG_KEYS = (  # what each episode keeps of the policy node's /diagnostics
    "obs_to_cmd_latency_ms_p50", "obs_to_cmd_latency_ms_p99", "inference_ms_p50", "inference_ms_p99",
    "nfe_per_chunk_mean", "tick_jitter_ms_p99", "ticks", "chunks", "deadline_misses", "holds",
    "starved_holds", "late_actions_dropped", "actions_sent", "safety_clamped", "safety_holding",
    "safety_fault", "nonfinite_outputs", "stale_ticks",
)


@dataclass
class RosEpisode:
    """One scored episode: what the sim reported and what the policy node measured during it."""

    index: int
    seed: int
    success: bool
    steps: int
    final_distance: float
    distance_trace: list[float] = field(default_factory=list)  # /task/distance per sim tick
    diagnostics: dict[str, float] = field(default_factory=dict)


@dataclass
class RosSamplerRun:
    """All episodes of one sampler on one checkpoint."""

    sampler: str
    num_inference_steps: int
    label: str
    episodes: list[RosEpisode] = field(default_factory=list)
    startup_s: float = math.nan  # process start -> configured (checkpoint load + warm-up)
    wall_s: float = math.nan
    logs: str = ""

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    def pooled(self, key: str, how: Callable[[np.ndarray], float] = np.median) -> float:
        v = np.array([e.diagnostics.get(key, math.nan) for e in self.episodes], dtype=np.float64)
        v = v[np.isfinite(v)]
        return float(how(v)) if v.size else math.nan

    def per_1000_ticks(self, key: str) -> float:
        ticks = sum(e.diagnostics.get("ticks", 0.0) for e in self.episodes)
        n = sum(e.diagnostics.get(key, 0.0) for e in self.episodes)
        return 1000.0 * n / ticks if ticks else math.nan

    def summary(self) -> dict[str, Any]:
        from streamdp.sim.evaluate import wilson_interval

        n = len(self.episodes)
        lo, hi = wilson_interval(self.successes, n)
        return {
            "sampler": self.label, "episodes": n, "successes": self.successes,
            "success_rate": self.successes / n if n else math.nan, "success_ci95": [lo, hi],
            "obs_to_cmd_ms_p50": self.pooled("obs_to_cmd_latency_ms_p50"),
            "obs_to_cmd_ms_p99_max": self.pooled("obs_to_cmd_latency_ms_p99", np.max),
            "inference_ms_p50": self.pooled("inference_ms_p50"),
            "inference_ms_p99_max": self.pooled("inference_ms_p99", np.max),
            "nfe_per_chunk": self.pooled("nfe_per_chunk_mean", np.mean),
            "deadline_misses_per_1000_ticks": self.per_1000_ticks("deadline_misses"),
            "holds_per_1000_ticks": self.per_1000_ticks("holds"),
            "safety_clamps_per_1000_ticks": self.per_1000_ticks("safety_clamped"),
            "mean_final_distance": float(np.mean([e.final_distance for e in self.episodes])) if n else math.nan,
            "startup_s": self.startup_s, "wall_s": self.wall_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_episode": [asdict(e) for e in self.episodes], "logs": self.logs}


class EpisodeDriver(Monitor):
    """The runner's own node: the e2e Monitor's diagnostics / distance listeners, plus lifecycle and parameter
    clients and the sim's episode events."""

    def __init__(self, policy: str = "policy_node", sim: str = "sim_bridge", **kwargs: Any) -> None:
        super().__init__("streamdp_episode_driver", **kwargs)
        self.change_state = self.create_client(ChangeState, f"/{policy}/change_state")
        self.get_state = self.create_client(GetState, f"/{policy}/get_state")
        self.set_params = self.create_client(SetParameters, f"/{sim}/set_parameters")
        latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.events: list[dict[str, str]] = []
        self.joint_states = 0
        self.create_subscription(DiagnosticStatus, "/task/episode", self._on_episode, latched)
        self.create_subscription(JointState, "/joint_states", self._on_js, QoSProfile(depth=10))

    def _on_episode(self, m: DiagnosticStatus) -> None:
        self.events.append({kv.key: kv.value for kv in m.values})

    def _on_js(self, _m: JointState) -> None:
        self.joint_states += 1


class _Session:
    """Spinning helpers around one EpisodeDriver; every wait has a deadline and checks the children."""

    def __init__(self, driver: EpisodeDriver, ex: SingleThreadedExecutor, procs: list[subprocess.Popen],
                 log_dir: Path) -> None:
        self.d, self.ex, self.procs, self.log_dir = driver, ex, procs, log_dir

    def spin_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.log_dir}\n"
                                   + log_tail(self.log_dir))
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a node exited while waiting for {what}; logs in {self.log_dir}\n"
                                   + log_tail(self.log_dir))
            self.ex.spin_once(timeout_sec=0.02)

    def call(self, client: Any, request: Any, timeout: float, what: str) -> Any:
        self.spin_until(lambda: client.service_is_ready(), timeout, f"the {what} service")
        fut = client.call_async(request)
        self.spin_until(fut.done, timeout, what)
        return fut.result()

    def transition(self, tid: int, label: str, timeout: float = 60.0) -> bool:
        req = ChangeState.Request()
        req.transition.id = tid
        return bool(self.call(self.d.change_state, req, timeout, f"policy_node {label}").success)

    def first_activation(self, timeout: float) -> None:
        """Activate once, unscored, retrying while the node has no joint state yet, then deactivate. The node
        subscribes at configure, and DDS may match it with the bridge only after the first episode would start
        (a small checkpoint configures in a moment, before the bridge is up): every scored episode then starts
        on a node that hears the robot."""
        end = time.monotonic() + timeout
        while not self.transition(Transition.TRANSITION_ACTIVATE, "activate"):
            if time.monotonic() > end:
                raise RuntimeError(f"policy_node refused to activate for {timeout:.0f} s; logs in {self.log_dir}\n"
                                   + log_tail(self.log_dir))
            retry = time.monotonic() + 0.5
            self.spin_until(lambda t=retry: time.monotonic() > t, 5.0, "a retry")
        self.transition(Transition.TRANSITION_DEACTIVATE, "deactivate")

    def lifecycle_state(self) -> str:
        return self.call(self.d.get_state, GetState.Request(), 10.0, "policy_node get_state").current_state.label

    def set_sim_param(self, name: str, value: int) -> None:
        p = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))
        res = self.call(self.d.set_params, SetParameters.Request(parameters=[p]), 10.0, "sim_bridge set_parameters")
        if not res.results or not res.results[0].successful:
            raise RuntimeError(f"sim_bridge refused {name}={value}")

    def fresh_diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        n = self.d.diag_count
        self.spin_until(lambda: self.d.diag_count > n, timeout, "/diagnostics")
        return dict(self.d.diag)


def _diag_numbers(diag: dict[str, str]) -> dict[str, float]:
    out = {}
    for k in DIAG_KEYS:
        try:
            out[k] = float(diag.get(k, "nan"))
        except ValueError:
            out[k] = math.nan
    return out


def _event(driver: EpisodeDriver, start: int, seed: int, states: tuple[str, ...]) -> dict[str, str] | None:
    """The first /task/episode event since index `start` of the episode with `seed` in one of `states`."""
    return next((e for e in driver.events[start:] if e.get("state") in states and int(e["seed"]) == seed), None)


def _one_episode(s: _Session, index: int, seed: int, episode_s: float) -> RosEpisode:
    """Reset the sim to `seed`, activate the policy node on the new state, wait for the end, deactivate."""
    d = s.d
    n_events = len(d.events)
    s.set_sim_param("reset", index + 1)
    s.spin_until(lambda: _event(d, n_events, seed, ("running",)) is not None, 10.0, f"episode {index} to start")
    js = d.joint_states
    s.spin_until(lambda: d.joint_states >= js + 2, 5.0, "the new episode's joint states")
    d0 = len(d.distances)
    if not s.transition(Transition.TRANSITION_ACTIVATE, "activate", timeout=30.0):
        raise RuntimeError(f"policy_node refused to activate for episode {index}; logs in {s.log_dir}\n"
                           + log_tail(s.log_dir))
    done = ("success", "timeout")
    s.spin_until(lambda: _event(d, n_events, seed, done) is not None, episode_s + 30.0, f"episode {index} to end")
    s.transition(Transition.TRANSITION_DEACTIVATE, "deactivate", timeout=30.0)
    end = _event(d, n_events, seed, done)
    assert end is not None
    return RosEpisode(index, int(end["seed"]), end["state"] == "success", int(end["steps"]), float(end["distance"]),
                      distance_trace=[x for _, x in d.distances[d0:]],
                      diagnostics=_diag_numbers(s.fresh_diagnostics()))


def run_sampler_episodes(
    checkpoint: str | Path,
    sampler: str = "",
    num_inference_steps: int = 0,
    episodes: int = 10,
    seed: int = 10000,
    task: str | None = None,
    policy_params: dict[str, Any] | None = None,
    log_dir: str | Path | None = None,
    startup_timeout: float = 300.0,
    on_episode: Callable[[RosEpisode], None] | None = None,
    driver: type[EpisodeDriver] = EpisodeDriver,
    params: Sequence[str | Path] | None = None,
) -> RosSamplerRun:
    """Run `episodes` scored episodes of one sampler (see the module docstring); seeds seed, seed+1, ...
    `driver`: the runner's node class (a subclass may watch more topics, e.g. a test checking every command).
    `params`: the bring-up's parameter files (default config/ros/sim.yaml), e.g. config/ros/sim_image.yaml for
    a camera policy; `task` (default: the files' ``sim_bridge.task``, else arm_reach_dynamic) overrides theirs."""
    problems = ros_env_problems()
    if problems:
        raise RuntimeError("ROS environment not safe for a run: " + "; ".join(problems))
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    from streamdp.sim.metrics import sampler_label
    from streamdp.sim.tasks import task_spec

    files = [Path(p) for p in params] if params else [bringup.default_params("sim")]
    task = task or str(bringup.bridge_parameter(files, None, "task", "arm_reach_dynamic"))
    spec = task_spec(task)
    episode_s = spec.max_episode_steps / spec.fps
    overrides = {
        # this runner deactivates / activates the policy node around its resets itself
        "sim_bridge": {"task": task, "seed": int(seed) - 1, "auto_reset": False, "policy_node": ""},
        "policy_node": {"checkpoint": str(checkpoint), "autostart": False, "sampler": sampler,
                        "num_inference_steps": int(num_inference_steps), "diagnostics_rate_hz": 10.0,
                        **(policy_params or {})},
    }
    descs = bringup.describe("sim", params=files, overrides=overrides)
    tag = f"{sampler or 'ckpt'}{num_inference_steps or ''}"
    log_dir = Path(log_dir or os.environ["ROS_LOG_DIR"]) / f"episodes-{tag}-{os.getpid()}-{time.time_ns()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    run = RosSamplerRun(sampler, num_inference_steps, "", logs=str(log_dir))
    t0 = time.monotonic()
    with node_processes(descs, log_dir, driver) as (node, ex, procs):
        s = _Session(node, ex, procs, log_dir)
        if not s.transition(Transition.TRANSITION_CONFIGURE, "configure", timeout=startup_timeout):
            raise RuntimeError(f"policy_node refused to configure; logs in {log_dir}\n" + log_tail(log_dir))
        run.startup_s = time.monotonic() - t0
        s.first_activation(timeout=30.0)
        diag = s.fresh_diagnostics()
        name, k = diag.get("sampler", sampler), int(float(diag.get("num_inference_steps", 0) or 0))
        from streamdp.policy.checkpoint import read_config

        cfg, _ = read_config(Path(checkpoint))
        run.sampler, run.num_inference_steps = name, k
        run.label = sampler_label(name, k, cfg.schedule.num_train_steps)
        t_eps = time.monotonic()
        for i in range(episodes):
            ep = _one_episode(s, i, seed + i, episode_s)
            run.episodes.append(ep)
            if on_episode is not None:
                on_episode(ep)
        run.wall_s = time.monotonic() - t_eps
        if s.lifecycle_state() not in ("inactive", "unconfigured"):
            raise RuntimeError("policy_node did not stay inactive after the last episode")
    return run


def markdown(runs: Sequence[RosSamplerRun]) -> str:
    """One row per sampler: success with its interval, latency, calls, deadline misses, holds."""
    lines = [
        "| sampler (ROS 2, real time) | success (95% CI) | obs->cmd ms p50 / p99 | inference ms p50 "
        "| calls/chunk | deadline misses /1000 ticks | holds /1000 ticks | final dist (m) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r.summary()
        lo, hi = s["success_ci95"]
        lines.append(
            f"| {s['sampler']} | {s['successes']}/{s['episodes']} = {s['success_rate']:.2f} [{lo:.2f}, {hi:.2f}] "
            f"| {s['obs_to_cmd_ms_p50']:.1f} / {s['obs_to_cmd_ms_p99_max']:.1f} | {s['inference_ms_p50']:.1f} "
            f"| {s['nfe_per_chunk']:.1f} | {s['deadline_misses_per_1000_ticks']:.0f} "
            f"| {s['holds_per_1000_ticks']:.0f} | {s['mean_final_distance']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--params", action="append", default=None, metavar="FILE",
                    help="bring-up parameter file (default config/ros/sim.yaml; config/ros/sim_image.yaml: the arm "
                         "with its camera, for an image policy); repeatable, later files win")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--samplers", nargs="+", default=["sdp", "ddpm"], help="sampler[:K] ...")
    ap.add_argument("--seed", type=int, default=10000)
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    for f in a.params or []:
        if not Path(f).is_file():
            print(f"streamdp-sim-episodes: --params {f}: no such file (e.g. config/ros/sim_image.yaml)",
                  file=sys.stderr)
            return 2
    from streamdp.sim.evaluate import SamplerSpec

    runs = []
    for item in a.samplers:
        spec = SamplerSpec.parse(item)
        r = run_sampler_episodes(a.checkpoint, spec.sampler, spec.num_inference_steps or 0, a.episodes, a.seed,
                                 policy_params={"num_threads": a.num_threads}, params=a.params,
                                 on_episode=lambda e: print(f"  episode {e.index} seed {e.seed}: "
                                                            f"{'success' if e.success else 'timeout'} "
                                                            f"in {e.steps} steps", flush=True))
        runs.append(r)
        print(json.dumps(r.summary()), flush=True)
    print(markdown(runs))
    if a.out:
        Path(a.out).write_text(json.dumps([r.to_dict() for r in runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

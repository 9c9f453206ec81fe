"""End-to-end run over DDS: ``sim_bridge_node`` and ``policy_node`` as separate processes, watched from here.

    python -m streamdp.ros_nodes.e2e_bench --checkpoint CKPT --ticks 1000 --samplers sdp ddim:10

For each sampler it starts both nodes from the ``sim`` bring-up descriptions (the same ones
``streamdp-bringup sim`` and ``launch/sim.launch.py`` use), counts the commands a subscriber here
receives for ``--ticks`` control ticks after the first one (the start-up window before it: process
start, checkpoint load, warm-up, activation), and reports

* commands received vs. control ticks elapsed (by command stamps), stamp-gap jitter;
* observation -> command latency p50/p99 measured by the policy node from stamps (joint-state header
  stamp -> publish of the first action it produced) and the DDS delivery latency of the commands;
* deadline misses, holds and NFE per 1,000 ticks, control-tick jitter on the node's monotonic clock;
* the end-effector distance to the target at the start and at the end (the arm should approach it).

ROS environment: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a ROS_DOMAIN_ID and ROS_LOG_DIR must be set
(``streamdp-bringup``'s rule); timings on a shared CPU are noisy: compare samplers within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamdp.ros_nodes import bringup
from streamdp.ros_nodes.rosenv import ensure_ros_env, ros_env_problems


@dataclass
class E2EResult:
    sampler: str
    num_inference_steps: int
    ticks: int  # commands received in the measured window
    expected_ticks: int  # control periods elapsed in that window (by command stamps)
    stamps_not_increasing: int  # commands whose stamp is not after the one before (reordered or repeated)
    stamp_gap_ms_p50: float
    stamp_gap_ms_p99: float
    dds_latency_ms_p50: float
    dds_latency_ms_p99: float
    distance_start: float
    distance_end: float
    distance_min: float
    diagnostics: dict[str, str] = field(default_factory=dict)
    logs: str = ""

    def per_1000(self, key: str) -> float:
        t = float(self.diagnostics.get("ticks", "nan"))
        return 1000.0 * float(self.diagnostics.get(key, "nan")) / t if t else math.nan

    def summary(self) -> dict[str, Any]:
        d = self.diagnostics
        return {
            "sampler": self.sampler, "K": self.num_inference_steps, "ticks": self.ticks,
            "expected_ticks": self.expected_ticks,
            "obs_to_cmd_ms_p50": float(d.get("obs_to_cmd_latency_ms_p50", "nan")),
            "obs_to_cmd_ms_p99": float(d.get("obs_to_cmd_latency_ms_p99", "nan")),
            "inference_ms_p50": float(d.get("inference_ms_p50", "nan")),
            "inference_ms_p99": float(d.get("inference_ms_p99", "nan")),
            "obs_age_ms_p50": float(d.get("obs_age_ms_p50", "nan")),
            "obs_age_ms_p99": float(d.get("obs_age_ms_p99", "nan")),
            "dds_ms_p50": self.dds_latency_ms_p50, "dds_ms_p99": self.dds_latency_ms_p99,
            "tick_jitter_ms_p50": float(d.get("tick_jitter_ms_p50", "nan")),
            "tick_jitter_ms_p99": float(d.get("tick_jitter_ms_p99", "nan")),
            "stamp_gap_ms_p50": self.stamp_gap_ms_p50, "stamp_gap_ms_p99": self.stamp_gap_ms_p99,
            "deadline_misses_per_1000": self.per_1000("deadline_misses"),
            "holds_per_1000": self.per_1000("holds"),
            "ticks_overrun_per_1000": self.per_1000("ticks_overrun"),
            "nfe_per_chunk": float(d.get("nfe_per_chunk_mean", "nan")),
            "distance_start": self.distance_start, "distance_min": self.distance_min,
            "distance_end": self.distance_end,
        }


def run_e2e(
    checkpoint: str | Path,
    ticks: int = 220,
    sampler: str = "",
    num_inference_steps: int = 0,
    sim_seed: int = 3,
    startup_timeout: float = 120.0,
    policy_params: dict[str, Any] | None = None,
    log_dir: str | Path | None = None,
) -> E2EResult:
    """Run both nodes until `ticks` commands arrived after the first one; see the module docstring."""
    problems = ros_env_problems()
    if problems:
        raise RuntimeError("ROS environment not safe for a run: " + "; ".join(problems))
    overrides = {
        "sim_bridge": {"seed": sim_seed, "max_episode_steps": 1_000_000, "auto_reset": False},
        "policy_node": {"checkpoint": str(checkpoint), "autostart": True, "sampler": sampler,
                        "num_inference_steps": num_inference_steps, "diagnostics_rate_hz": 5.0,
                        **(policy_params or {})},
    }
    from streamdp.ros_nodes.testing import Monitor, log_tail, node_processes  # imports rclpy

    descs = bringup.describe("sim", overrides=overrides)
    log_dir = Path(log_dir or os.environ["ROS_LOG_DIR"]) / f"e2e-{sampler or 'ckpt'}-{os.getpid()}-{time.time_ns()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with node_processes(descs, log_dir, Monitor) as (mon, ex, procs):
        t0 = time.monotonic()
        while not mon.commands:
            ex.spin_once(timeout_sec=0.05)
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() - t0 > startup_timeout:
                raise RuntimeError(f"no command within {time.monotonic() - t0:.0f} s (exited: "
                                   f"{[p.args[2] for p in dead]}); logs in {log_dir}\n" + log_tail(log_dir))
        n0 = len(mon.distances)
        while len(mon.commands) < ticks + 1:
            ex.spin_once(timeout_sec=0.05)
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a node exited during the run; logs in {log_dir}\n" + log_tail(log_dir))
        t_end = time.monotonic()
        while mon.diag_count == 0 or time.monotonic() - t_end < 0.3:  # one more diagnostics message
            ex.spin_once(timeout_sec=0.05)
            if time.monotonic() - t_end > 5:
                break
        diag = dict(mon.diag)
    cmds = np.array(mon.commands[1: ticks + 1])
    stamps = cmds[:, 1]
    period = float(np.median(np.diff(stamps)))
    gaps = np.diff(stamps)
    expected = int(round((stamps[-1] - stamps[0]) / period)) + 1
    dds = cmds[:, 0] - cmds[:, 1]
    dist = [d for _, d in mon.distances[max(0, n0 - 1):]]
    return E2EResult(
        sampler=diag.get("sampler", sampler), num_inference_steps=int(diag.get("num_inference_steps", 0) or 0),
        ticks=len(cmds), expected_ticks=expected, stamps_not_increasing=int(np.sum(gaps <= 0)),
        stamp_gap_ms_p50=1e3 * float(np.percentile(gaps, 50)), stamp_gap_ms_p99=1e3 * float(np.percentile(gaps, 99)),
        dds_latency_ms_p50=1e3 * float(np.percentile(dds, 50)), dds_latency_ms_p99=1e3 * float(np.percentile(dds, 99)),
        distance_start=float(dist[0]) if dist else math.nan,
        distance_end=float(np.median(dist[-20:])) if dist else math.nan,
        distance_min=float(np.min(dist)) if dist else math.nan,
        diagnostics=diag, logs=str(log_dir),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m streamdp.ros_nodes.e2e_bench``: one run per sampler, a JSON line each."""
    ensure_ros_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=False, help="checkpoint dir (default: the bundled arm policy)")
    ap.add_argument("--ticks", type=int, default=1000)
    ap.add_argument("--samplers", nargs="+", default=["sdp", "ddim:10"], help="sampler[:K] ...")
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ckpt = a.checkpoint
    if ckpt is None:
        from streamdp.sim import bundled_checkpoint

        ckpt = bundled_checkpoint("arm_reach_dynamic")
        if ckpt is None:
            raise SystemExit("no bundled checkpoint in this install: pass --checkpoint")
    results = []
    for spec in a.samplers:
        name, _, k = spec.partition(":")
        r = run_e2e(ckpt, ticks=a.ticks, sampler=name, num_inference_steps=int(k or 0),
                    policy_params={"num_threads": a.num_threads})
        results.append(r)
        print(json.dumps(r.summary(), indent=None), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps([{**r.summary(), "diagnostics": r.diagnostics} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

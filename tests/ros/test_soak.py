"""The soak machinery over DDS (processes): a SIGKILL and restart of the policy node mid-motion, a lossy
JointState relay, and the ``streamdp-soak`` job in small. Every command on the wire goes through the safety
oracle; the assertions are counts and order, never times."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamdp.ros_nodes.soak import RelayConfig, SoakConfig, SoakRun

pytestmark = pytest.mark.slow

TA, DELAY, RATE, MAX_OBS_AGE = 5, 1, 20.0, 0.25  # the bundled checkpoint and config/ros/sim.yaml
STALE_HOLD_BOUND = math.ceil(MAX_OBS_AGE * RATE) + DELAY + TA + 4  # as in tests/faults


def test_sigkill_mid_motion_then_restart_reseeds_from_the_measured_state(ros_env, tmp_path):
    """Short episodes, so the sim resets while the node is dead (the bridge's deactivation goes unanswered)
    and again after the restart: the restarted node streams and is re-seeded at every reset after it."""
    cfg = SoakConfig(load=0, max_episode_steps=40, seed=10003)
    with SoakRun(cfg, tmp_path, keep_points=True) as run:
        mon = run.mon
        run.spin_until(lambda: mon.received >= 60 and _moves(mon.points[-3:]) == 2, 300.0, "motion")
        run.kill_policy()  # mid-motion: the last commands moved the arm
        ended = mon.episodes["success"] + mon.episodes["timeout"]
        run.spin_until(lambda: mon.episodes["success"] + mon.episodes["timeout"] >= ended + 1, 60.0,
                       "an episode end while the node is dead")
        activations = mon.activations
        run.start_policy()
        run.spin_until(lambda: mon.activations >= activations + 3 and mon.received >= mon.publisher_since + 40
                       and len(mon.starts) == mon.activations, 300.0, "the restarted node, re-seeded by two resets")
        rep = run.report()
    assert rep["unsafe_commands"] == 0, rep["violations"]
    assert rep["restarts"] == 1 and len(rep["restart_starts"]) == 1
    start = rep["restart_starts"][0]
    assert start["publisher"] != run.restarts[0]["killed_publisher"]  # the new process's first command ...
    assert start["within_one_step"], start  # ... opened a new activation within one step of the arm
    assert rep["activation_starts_within_one_step"] == rep["activation_starts"] == rep["activations"]
    assert rep["faults"] == []
    assert [p["commands"] > 0 for p in rep["publishers"]] == [True, True]  # the killed process, the new one


def test_lossy_relay_the_node_holds_rather_than_acting_on_stale_joint_states(ros_env, tmp_path):
    """Phase 1: half the joint states dropped, the rest on time: the node acts. Phase 2: every joint state
    delayed past max_obs_age_s: once the queue of clean actions is spent, every command is a hold at one
    position. Phase 3: back on time: actions again."""
    cfg = SoakConfig(load=0, max_episode_steps=100000, seed=10004,
                     relay=RelayConfig(drop_share=0.5, delay_share=0.0, delay_s=0.6, seed=1))
    with SoakRun(cfg, tmp_path, keep_points=True) as run:
        mon = run.mon
        run.spin_until(lambda: mon.received >= 40, 300.0, "40 commands")
        phase1 = list(mon.points[-30:])
        run.set_relay(delay_share=1.0)
        mark = mon.received
        run.spin_until(lambda: mon.received >= mark + STALE_HOLD_BOUND, 120.0, "the queue to run out")
        d1 = fresh_diagnostics(run)
        run.spin_until(lambda: mon.received >= mark + STALE_HOLD_BOUND + 40, 120.0, "the delayed phase")
        d2 = fresh_diagnostics(run)
        end = mon.received
        run.set_relay(delay_share=0.0)
        resume = mon.received
        run.spin_until(lambda: mon.received >= resume + 60, 120.0, "the recovered phase")
        pos = list(mon.points)
        rep = run.report()
    assert rep["unsafe_commands"] == 0, rep["violations"]
    assert _moves(phase1) > 0  # drops alone leave fresh input: it acts
    held = pos[mark + STALE_HOLD_BOUND:end]
    assert all(p.shape[0] == 1 for p in held)  # single-point trajectories: holds ...
    assert all(np.array_equal(p[0], held[0][0]) for p in held)  # ... at one position, however long
    assert int(d2["stale_ticks"]) > int(d1["stale_ticks"])
    assert int(d2["total_chunks"]) == int(d1["total_chunks"])  # no chunk computed from stale input
    assert float(d2["obs_age_ms_max"]) <= 1e3 * MAX_OBS_AGE  # never an observation older than the bound
    assert _moves(pos[resume:]) > 0  # fresh again: it acts
    r = rep["relay"]
    assert int(r["dropped"]) > 0 and int(r["delayed"]) > 0 and int(r["received"]) == sum(
        int(r[k]) for k in ("passed", "dropped", "delayed"))


def fresh_diagnostics(run) -> dict[str, str]:
    """The policy node's /diagnostics computed after this call (the second message from now)."""
    n = run.mon.diag_count
    run.spin_until(lambda: run.mon.diag_count >= n + 2, 30.0, "diagnostics")
    return dict(run.mon.diag)


def _moves(pos: list[np.ndarray]) -> int:
    return sum(not np.array_equal(a[0], b[0]) for a, b in zip(pos, pos[1:]))


def test_soak_job_in_small_stopped_by_sigint(ros_env, tmp_path):
    """`streamdp-soak` end to end: short episodes (resets coordinated with the policy node), one busy process,
    stopped with SIGINT once the policy node has been re-seeded by two resets: the report and summary are
    written, every command was safe, every activation started at the arm, and no process is left behind."""
    import signal
    import time

    out = tmp_path / "soak"
    proc = subprocess.Popen([sys.executable, "-m", "streamdp.ros_nodes.soak", "duration_s=3600", "load=1",
                             "max_episode_steps=40", "sample_every_s=1", "warmup_s=0", f"out={out}"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "logs" / "policy_node.log"
    try:
        end = time.monotonic() + 600  # the nodes' start-up alone took 5 min on a 2-core machine loaded 5x
        while not (log.is_file() and log.read_text().count("active: seeded") >= 3):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()[0][-3000:] if proc.poll() else ""
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, text[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["stopped_early"] and "stopped by signal" in text
    assert "unsafe commands" in (out / "summary.md").read_text()
    assert rep["unsafe_commands"] == 0 and rep["commands_received"] > 0, rep["violations"]
    assert rep["activations"] >= 3 and rep["activation_starts"] == rep["activations"]  # resets re-seed
    assert rep["activation_starts_within_one_step"] == rep["activation_starts"]
    assert rep["faults"] == [] and rep["foreign_nodes"] == [] and len(rep["publishers"]) == 1
    assert rep["policy_rss_kb_start"] > 0 and rep["policy_rss_kb_end"] > 0 and len(rep["memory"]) >= 2
    pids = {r["policy_node_pid"] for r in rep["memory"]}
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)  # the nodes were stopped


def test_soak_refuses_bad_input_in_one_line(ros_env):
    r = subprocess.run([sys.executable, "-m", "streamdp.ros_nodes.soak", "duration_s=-1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "duration_s must be > 0" in r.stderr, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    r = subprocess.run([sys.executable, "-m", "streamdp.ros_nodes.soak", "duration_s=5"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2 and "ROS_DOMAIN_ID" in r.stderr and r.stderr.count("\n") == 1, r.stderr

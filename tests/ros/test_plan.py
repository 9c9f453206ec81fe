"""policy_node's visible plan over DDS: ~/plan is what the arm is then commanded, ~/noise_levels is the SDP ladder."""

from __future__ import annotations

import numpy as np
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from std_msgs.msg import Float32MultiArray
from trajectory_msgs.msg import JointTrajectory

from streamdp.policy.samplers.rolling_buffer import RollingBuffer, ladder
from streamdp.policy.schedule import NoiseSchedule
from streamdp.ros_nodes.bringup import default_params
from streamdp.ros_nodes.sim_bridge_node import SimBridgeNode
from streamdp.ros_nodes.trajectory import split_seconds

from .helpers import spin_until
from .test_policy_node import SUCCESS, make_policy_node


class PlanProbe(Node):
    def __init__(self, **kw):
        super().__init__("plan_probe", **kw)
        q = QoSProfile(depth=500)
        self.commands: dict[tuple[int, int], JointTrajectory] = {}
        self.plans: dict[tuple[int, int], JointTrajectory] = {}
        self.levels: list[list[float]] = []
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory",
                                 lambda m: self.commands.__setitem__(self.key(m), m), q)
        self.create_subscription(JointTrajectory, "/policy_node/plan",
                                 lambda m: self.plans.__setitem__(self.key(m), m), q)
        self.create_subscription(Float32MultiArray, "/policy_node/noise_levels",
                                 lambda m: self.levels.append(list(m.data)), q)

    @staticmethod
    def key(m):
        return m.header.stamp.sec, m.header.stamp.nanosec


def positions(m: JointTrajectory) -> np.ndarray:
    return np.array([p.positions for p in m.points])


def times(m: JointTrajectory) -> np.ndarray:
    return np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in m.points])


def start_states(config) -> set[tuple[int, ...]]:
    """Every state the SDP buffer can start an observation in: its ladder, then each state after a roll."""
    buf = RollingBuffer(NoiseSchedule(config.schedule), config.horizon, config.n_obs_steps, config.n_action_steps, 1,
                        config.num_inference_steps)
    g, seen = torch.Generator().manual_seed(0), set()
    while (state := tuple(buf.pos.tolist())) not in seen:
        seen.add(state)
        while not buf.chunk0_clean():
            buf.step(torch.zeros(config.horizon, 1), generator=g)
        buf.roll(generator=g)
    return seen


def test_plan_is_what_gets_commanded_and_noise_levels_are_the_ladder(ros_context, bundled_ckpt):
    """The bundled arm policy on the MuJoCo bridge with config/ros/sim.yaml's real limits (safety filter on)."""
    node = make_policy_node(ros_context, bundled_ckpt, params_file=default_params("sim"))
    node.command_log = []
    sim = SimBridgeNode(context=ros_context, parameter_overrides=[Parameter("seed", value=3),
                                                                  Parameter("max_episode_steps", value=100000)])
    probe = PlanProbe(context=ros_context)
    ex = SingleThreadedExecutor(context=ros_context)
    for n in (node, sim, probe):
        ex.add_node(n)
    try:
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert spin_until(ex, lambda: not node.activation_blocker(), 10.0), node.activation_blocker()
        assert node.trigger_activate() == SUCCESS, node.activate_error
        assert spin_until(ex, lambda: len(node.command_log) >= 60, 30.0), node.stats()
        n = len(node.command_log)
        assert spin_until(ex, lambda: len(probe.commands) >= n, 10.0)  # everything published has arrived
        spin_until(ex, lambda: False, 0.3)
        c = node.policy.config
        log = {split_seconds(e["t"]): e for e in node.command_log}
    finally:
        node.trigger_shutdown()
        ex.shutdown()
        sim.finalize()
        for nd in (node, sim, probe):
            nd.destroy_node()

    # ~/plan at a tick starts with that tick's clean action and lists the queued ones, one period apart; the
    # command is that plan through the safety filter: the same points where the filter let them through.
    paired = same = clamped = 0
    keys = sorted(k for k in probe.plans if k in probe.commands and k in log)
    assert len(keys) >= 40, (len(probe.plans), len(probe.commands))
    for k in keys:
        plan, cmd, entry = probe.plans[k], probe.commands[k], log[k]
        if entry["hold"]:
            continue
        paired += 1
        p, q = positions(plan), positions(cmd)
        assert len(plan.points) >= len(cmd.points) and len(plan.points) <= c.n_action_steps + 1
        np.testing.assert_allclose(times(plan)[: len(cmd.points)], times(cmd))
        if entry["status"] == "ok":
            np.testing.assert_array_equal(p[: len(q)], q)  # bit for bit: the plan is what was sent
            same += 1
        else:
            clamped += 1
            assert np.max(np.abs(p[0] - q[0])) > 0  # the filter changed it, so it differs
    assert paired >= 30 and same >= 20
    # The plan's second point is the next tick's command: the queue is not respliced while it holds actions.
    period = 1.0 / c.fps

    def secs(k):
        return k[0] + 1e-9 * k[1]

    # pairs of consecutive ticks only: the plan has a timer of its own, so a tick's plan may not have gone out
    nxt = [(a, b) for a, b in zip(keys, keys[1:]) if len(probe.plans[a].points) > 1 and not log[b]["hold"]
           and log[b]["status"] == "ok" and abs(secs(b) - secs(a) - period) < 0.5 * period]
    assert len(nxt) >= 15
    for a, b in nxt:
        np.testing.assert_array_equal(positions(probe.plans[a])[1], positions(probe.commands[b])[0])

    # ~/noise_levels: first the ladder the buffer is seeded with (README: chunk c at floor(K(c+1)/h) - 1), then
    # after every chunk the state the next observation starts from.
    want = ladder(c.horizon, c.n_obs_steps, c.n_action_steps, c.num_inference_steps)
    assert probe.levels[0] == [float(x) for x in want]
    allowed = start_states(c)
    assert len(probe.levels) >= 5
    assert all(tuple(int(x) for x in lv) in allowed for lv in probe.levels), probe.levels[:3]
    assert len({tuple(lv) for lv in probe.levels}) >= 2  # the ladder moves as the buffer rolls

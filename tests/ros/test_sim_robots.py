"""Every sim task's ROS description (no rclpy): the policy node's adapter and a dataset-trained checkpoint agree."""

from __future__ import annotations

import pytest
import yaml

from streamdp.policy.train.data import joint_names_from
from streamdp.ros_nodes.bringup import default_params
from streamdp.ros_nodes.observation import StateLayout
from streamdp.ros_nodes.params import PARAMETERS, Unset, read_settings
from streamdp.ros_nodes.sim_robots import robot_tasks, sim_robot
from streamdp.sim import task_spec

CASES = [(t, m) for t in ("arm_reach_dynamic", "pusht", "libero") for m in ("state", "image")]


def settings_of(params: dict):
    """policy_node's Settings for these parameters on top of its declared defaults."""
    values = {p.name: (None if isinstance(p.default, Unset) else p.default) for p in PARAMETERS}
    values.update(params, checkpoint="/ckpt")
    return read_settings(values.get)


@pytest.mark.parametrize(("task", "mode"), CASES)
def test_policy_node_parameters_assemble_the_task_state(task, mode):
    spec = task_spec(task, mode)
    robot = sim_robot(spec)
    assert robot.state_names == spec.state_names  # name by name, in the dataset's order
    s = settings_of(robot.policy_params())
    layout = StateLayout(tuple(s.joint_names), tuple(s.state_layout), tuple(s.extras))
    assert layout.dim == spec.state_dim
    assert s.camera_names == spec.camera_names and len(s.camera_topics) == len(spec.camera_names)
    assert len(set(e.topic for e in robot.extras)) == len(robot.extras)
    if robot.position_commands:
        # a checkpoint trained on streamdp-collect's dataset of this task names these joints, one per action
        assert joint_names_from(spec.state_names, spec.action_names) == list(robot.joint_names)
        assert list(robot.command_names) == list(robot.joint_names) and len(robot.joint_names) == spec.action_dim
    else:  # LIBERO: end-effector deltas + gripper, in the dataset's action order
        assert list(robot.command_names) == spec.action_names


@pytest.mark.parametrize("config", ["sim", "sim_pusht", "sim_image"])
def test_sim_yamls_are_the_bridge_robots(config):
    """config/ros/sim*.yaml's observation parameters are the bridge's description of its task, not a second copy."""
    doc = yaml.safe_load(default_params(config).read_text())
    pol, sim = doc["policy_node"]["ros__parameters"], doc["sim_bridge"]["ros__parameters"]
    want = sim_robot(task_spec(sim["task"], sim["obs_mode"])).policy_params()
    for key in ("joint_names", "state_layout", "extra_state_names", "extra_state_topics", "extra_state_fields",
                "camera_names", "camera_topics"):
        assert pol.get(key, []) == want[key], key


def test_tasks_without_a_robot_are_refused_by_name():
    assert robot_tasks() == ["arm_reach_dynamic", "libero", "pusht"]
    with pytest.raises(ValueError, match="task 'arc' has no ROS robot description; sim_bridge_node runs"):
        sim_robot(task_spec("arc"))


def test_extra_fields_match_their_state_names():
    from streamdp.ros_nodes.sim_robots import ExtraTopic

    with pytest.raises(ValueError, match="fields 'xyz' for 2 state names"):
        ExtraTopic("x", "/x", "xyz", ("a", "b"), lambda u: (0, 0))

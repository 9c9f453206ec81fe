"""Simulation: sim_bridge_node (MuJoCo arm_reach_dynamic as a ROS robot) + policy_node.

    ros2 launch streamdp sim.launch.py checkpoint:=/path/to/checkpoint [params_file:=...]

Nodes come from streamdp.ros_nodes.bringup.describe('sim'), the same descriptions that
`streamdp-bringup sim` runs where `ros2 launch` is not installed.
"""

from streamdp.ros_nodes.bringup import launch_description


def generate_launch_description():
    return launch_description("sim", params_help="parameter YAML for sim_bridge and policy_node")

"""Simulation: sim_bridge_node (MuJoCo arm_reach_dynamic as a ROS robot) + policy_node.

    ros2 launch streamdp sim.launch.py checkpoint:=/path/to/checkpoint [params_file:=...]

Nodes come from streamdp.ros_nodes.bringup.describe('sim'), the same descriptions that
`streamdp-bringup sim` runs where `ros2 launch` is not installed.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from streamdp.ros_nodes.bringup import default_params, describe


def _nodes(context, *args, **kwargs):
    params = LaunchConfiguration("params_file").perform(context)
    ckpt = LaunchConfiguration("checkpoint").perform(context)
    overrides = {"policy_node": {"checkpoint": ckpt}} if ckpt else None
    return [
        Node(
            package=d.package,
            executable=d.executable,
            name=d.name,
            parameters=list(d.parameters),
            remappings=list(d.remappings),
            additional_env=dict(d.env),
            arguments=list(d.arguments),
            output="screen",
        )
        for d in describe("sim", [params], overrides)
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        # Fast DDS must not multicast discovery off this machine (DESIGN.md 8).
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        DeclareLaunchArgument("params_file", default_value=str(default_params("sim")),
                              description="parameter YAML for sim_bridge and policy_node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint directory"),
        OpaqueFunction(function=_nodes),
    ])

"""A real arm: policy_node streaming to ros2_control's joint_trajectory_controller.

    ros2 launch streamdp real_arm.launch.py params_file:=/path/to/real_arm.yaml [checkpoint:=...]

The robot driver, controller_manager and controllers (see config/ros/controllers.yaml) are the
robot's own bring-up. policy_node is a lifecycle node: with `autostart: false` (the default in
real_arm.yaml) drive it with `ros2 lifecycle set /policy_node configure|activate|deactivate`.
Nodes come from streamdp.ros_nodes.bringup.describe('real_arm'), as `streamdp-bringup real_arm` runs them.
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
        for d in describe("real_arm", [params], overrides)
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"),
        DeclareLaunchArgument("params_file", default_value=str(default_params("real_arm")),
                              description="policy_node parameter YAML (see config/ros/real_arm.yaml)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="override the checkpoint directory"),
        OpaqueFunction(function=_nodes),
    ])

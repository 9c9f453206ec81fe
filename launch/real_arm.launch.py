"""A real arm: policy_node streaming to ros2_control's joint_trajectory_controller.

    ros2 launch streamdp real_arm.launch.py params_file:=/path/to/real_arm.yaml [checkpoint:=...]

The robot driver, controller_manager and controllers (see config/ros/controllers.yaml) are the
robot's own bring-up. policy_node is a lifecycle node: with `autostart: false` (the default in
real_arm.yaml) drive it with `ros2 lifecycle set /policy_node configure|activate|deactivate`.
Nodes come from streamdp.ros_nodes.bringup.describe('real_arm'), as `streamdp-bringup real_arm` runs them.
"""

from streamdp.ros_nodes.bringup import launch_description


def generate_launch_description():
    return launch_description("real_arm", params_help="policy_node parameter YAML (see config/ros/real_arm.yaml)")

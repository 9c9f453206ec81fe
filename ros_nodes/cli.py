"""Console scripts of the ROS nodes and tools that import rclpy at the top of their module.

Each one makes rclpy loadable first (:func:`~streamdp.ros_nodes.rosenv.ensure_ros_env`, once per
process) and only then imports the module that defines the node, so the pip ROS wheels' libraries are
on the loader path before anything links them. ``ros2 run streamdp policy_node`` and the launch files
run these through the executables setup.py installs under ``lib/streamdp``.
"""

from __future__ import annotations

from streamdp.ros_nodes.rosenv import ensure_ros_env


def policy_node() -> int:
    """``policy_node``: one lifecycle PolicyNode (see :mod:`streamdp.ros_nodes.policy_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.policy_node import main

    return main()


def sim_bridge_node() -> int:
    """``sim_bridge_node``: a streamdp sim task as a ROS robot (see :mod:`streamdp.ros_nodes.sim_bridge_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.sim_bridge_node import main

    return main()


def expert_teleop_node() -> int:
    """``expert_teleop_node``: the sim's expert as a teleoperator (:mod:`streamdp.ros_nodes.teleop_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.teleop_node import main

    return main()


def sim_episodes() -> int:
    """``streamdp-sim-episodes``: scored closed-loop episodes over ROS 2 (:mod:`streamdp.ros_nodes.sim_episodes`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.sim_episodes import main

    return main()

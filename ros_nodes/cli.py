"""Console scripts of the ROS nodes and tools that import rclpy at the top of their module.

Each one makes rclpy loadable first (:func:`~streamdp.ros_nodes.rosenv.ensure_ros_env`, once per
process) and only then imports the module that defines the node, so the pip ROS wheels' libraries are
on the loader path before anything links them. ``ros2 run streamdp policy_node`` and the launch files
run these through the executables setup.py installs under ``lib/streamdp``.
"""

from __future__ import annotations

import sys

from streamdp.ros_nodes.rosenv import ensure_ros_env


def _asked_for_help(name: str, module_name: str) -> bool:
    """``NAME --help`` (before any ``--ros-args``): print the node's docstring and parameter table, start nothing."""
    module = sys.modules[module_name]
    args = sys.argv[1:]
    own = args[: args.index("--ros-args")] if "--ros-args" in args else args
    if not {"-h", "--help"} & set(own):
        return False
    rows = "\n".join(f"  {n} (default {d!r}): {t}" for n, d, t in module.PARAMETERS)
    print(f"usage: {name} [--help] [--ros-args -p NAME:=VALUE ...]\n\n{module.__doc__.strip()}\n\nparameters:\n{rows}")
    return True


def policy_node() -> int:
    """``policy_node``: one lifecycle PolicyNode (see :mod:`streamdp.ros_nodes.policy_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.policy_node import main

    return main()


def sim_bridge_node() -> int:
    """``sim_bridge_node``: a streamdp sim task as a ROS robot (see :mod:`streamdp.ros_nodes.sim_bridge_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.sim_bridge_node import main

    return 0 if _asked_for_help("sim_bridge_node", "streamdp.ros_nodes.sim_bridge_node") else main()


def expert_teleop_node() -> int:
    """``expert_teleop_node``: the sim's expert as a teleoperator (:mod:`streamdp.ros_nodes.teleop_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.teleop_node import main

    return 0 if _asked_for_help("expert_teleop_node", "streamdp.ros_nodes.teleop_node") else main()


def sim_episodes() -> int:
    """``streamdp-sim-episodes``: scored closed-loop episodes over ROS 2 (:mod:`streamdp.ros_nodes.sim_episodes`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.sim_episodes import main

    return main()


def record() -> int:
    """``streamdp-record``: the demonstration recorder node (see :mod:`streamdp.ros_nodes.recorder_node`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.recorder_node import main

    return main()


def episode() -> int:
    """``streamdp-episode start|save|discard``: call a running recorder's services."""
    ensure_ros_env()
    from streamdp.ros_nodes.episode_client import episode_main

    return episode_main()


def soak() -> int:
    """``streamdp-soak``: the sim bring-up for a long run under load, every command judged
    (:mod:`streamdp.ros_nodes.soak`)."""
    ensure_ros_env()
    from streamdp.ros_nodes.soak import main

    return main()

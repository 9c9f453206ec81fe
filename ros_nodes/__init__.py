"""streamdp.ros_nodes: thin rclpy adapters around pure-Python logic.

- ``logic``: observation sync, action streamer timing, trajectory building, statistics, the
  inference worker thread (no rclpy; unit-tested on its own).
- ``policy_node``: the managed (lifecycle) policy node (console script ``policy_node``).
- ``sim_bridge_node``: a streamdp sim task as a ROS robot (console script ``sim_bridge_node``).
- ``bringup``: node descriptions shared by ``launch/*.launch.py`` and ``streamdp-bringup``.
- ``rosenv``: where rclpy comes from (a sourced ROS 2 or the pip ``ros-rclpy`` wheels) and the ROS
  environment rule (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_DOMAIN_ID, ROS_LOG_DIR).
- ``runtime``: spin until SIGINT/SIGTERM, then finalise (final hold) while ROS is still up.
- ``e2e_bench``: both nodes as processes over DDS, with latency / jitter / deadline statistics.

Importing this package does not import rclpy.
"""

"""streamdp.ros_nodes: thin rclpy adapters around pure-Python logic.

Pure logic (no rclpy; unit-tested on its own):

- ``observation``: sensor messages -> the policy's observation per control tick (ObservationSync,
  StateLayout, ExtraState, select_joints, image decode/encode).
- ``streamer``: the time-indexed queue of clean actions read once per tick (ActionStreamer, Command,
  QueuedAction) and the node's timing model.
- ``trajectory``: JointTrajectory points, sampling a trajectory in time, (sec, nanosec) stamps.
- ``inference``: the inference worker thread (InferenceWorker, Frame, Chunk).
- ``stats``: rolling percentiles, lifetime latency histogram, tick jitter, ROS clock jumps (RollingStats,
  LatencyHistogram, TickStats, ClockJumpDetector).
- ``safety`` / ``kinematics``: the safety filter and the URDF chain's forward kinematics.
- ``params``: the policy node's parameter table, the Settings it becomes, the limits -> safety filter step.
- ``commands``: the command pipeline (user filter seam, safety filter, publish-or-hold).
- ``recording``: demonstrations at the control rate (RecordingOptions, EpisodeRecorder: frames through
  ObservationSync, actions from the next joint state's command or position, stale frames trimmed or refused);
  ``episode_writer``: the LeRobot v3 dataset they go into (lerobot, no rclpy).
- ``convert_bag``: ``streamdp-convert-bag``, rosbag2 (MCAP, sqlite3; read with rosbags) through the recorder's
  logic into LeRobot v3 (a job: hydra ``key=value``).
- ``sim_robots``: each sim task as a ROS robot (joints, state topics, cameras, command channels) and the
  policy node parameters that read it back.
- ``teleop``: which expert suggestions the teleop node relays as commands.
- ``episode_follow``: the sim bridge's episode events bracket the recorder's episodes (EpisodeFollower).
- ``safety_oracle``: the independent check of published commands against raw limit numbers (tests, soak).

ROS nodes and tools:

- ``policy_node``: the managed (lifecycle) policy node; ``sim_bridge_node``: a sim task as a ROS robot;
  ``teleop_node``: the sim's scripted expert as a teleoperator publishing commands for the bridge;
  ``reset_handshake``: the bridge's episode resets coordinated with the policy node's lifecycle;
  ``joint_state_relay``: a lossy JointState link (drops and delays a share).
- ``cli``: console scripts ``policy_node``, ``sim_bridge_node``, ``expert_teleop_node``,
  ``streamdp-sim-episodes``, ``streamdp-record``, ``streamdp-episode``, ``streamdp-soak`` (rclpy's libraries
  made loadable first).
- ``recorder_node``: the recorder (``streamdp-record``: topics, std_srvs episode services, control-rate timer);
  ``episode_client``: ``streamdp-episode start|save|discard``, its command-line client.
- ``bringup``: node descriptions shared by ``launch/*.launch.py`` and ``streamdp-bringup``.
- ``rosenv``: where rclpy comes from (a sourced ROS 2 or the pip ``ros-rclpy`` wheels), ``ensure_ros_env``
  for entry points, and the ROS environment rule (LOCALHOST discovery, ROS_DOMAIN_ID, ROS_LOG_DIR).
- ``runtime``: spin until SIGINT/SIGTERM, then finalise (final hold) while ROS is still up.
- ``testing``: the process harness (node processes with logs, a watcher node) of the tools below and the tests.
- ``e2e_bench``, ``sim_episodes``, ``demo``: measurement over DDS, scored episodes, the main job;
  ``soak``: ``streamdp-soak``, a long run under load with every command checked.

Importing this package does not import rclpy, and no module re-executes the process at import.
"""

"""streamdp.ros_nodes."""

"""``streamdp-episode start|save|discard``: the command-line client of a running ``streamdp-record`` (its
``std_srvs/Trigger`` services ``~/start_episode``, ``~/save_episode``, ``~/discard_episode``), for the pip ROS
wheels, which have no ``ros2 service call``. Imports rclpy only, so it answers in a moment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import rclpy
from std_srvs.srv import Trigger

EPISODE_ACTIONS = ("start", "save", "discard")


def call_episode_service(
    node: Any, action: str, recorder: str = "/recorder", timeout: float = 60.0
) -> tuple[bool, str]:
    """Call ``<recorder>/<action>_episode`` from `node` (spun here until the answer) -> (success, message)."""
    if action not in EPISODE_ACTIONS:
        raise ValueError(f"action must be one of {EPISODE_ACTIONS}, got {action!r}")
    name = f"{recorder.rstrip('/')}/{action}_episode"
    client = node.create_client(Trigger, name)
    try:
        if not client.wait_for_service(timeout_sec=min(timeout, 10.0)):
            return False, f"no service {name}: is streamdp-record running (same ROS_DOMAIN_ID)?"
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if not future.done():
            return False, f"{name} did not answer within {timeout:g} s"
        reply = future.result()
        return bool(reply.success), str(reply.message)
    finally:
        node.destroy_client(client)


def episode_main(args: list[str] | None = None) -> int:
    """``streamdp-episode start|save|discard``: call the recorder's service, print its answer; exit code 0 when it
    succeeded, 1 when it was refused (e.g. an episode refused for stale input), 2 for bad usage."""
    parser = argparse.ArgumentParser(prog="streamdp-episode", description="Start, save or discard an episode of a "
                                     "running streamdp-record (its std_srvs/Trigger services).")
    parser.add_argument("action", choices=EPISODE_ACTIONS)
    parser.add_argument("--recorder", default="/recorder", help="the recorder node's name (default /recorder)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (a save "
                        "encodes the episode's videos first)")
    a = parser.parse_args(args)
    rclpy.init()
    node = rclpy.create_node("streamdp_episode")
    try:
        ok, message = call_episode_service(node, a.action, a.recorder, a.timeout)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(episode_main())

"""Spinning nodes until SIGINT/SIGTERM, then finalising them while ROS is still up.

rclpy's default signal handlers shut the context down at once, so a node could not publish a final
hold command on Ctrl-C. Here the signals only set a flag: the executor loop ends, every node's
``finalize()`` runs (the policy node publishes a hold at the last commanded position), then the
nodes are destroyed and the context shut down.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions


def init(args: Sequence[str] | None = None) -> None:
    """rclpy.init without rclpy's signal handlers (see :func:`spin_until_signal`)."""
    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)


def make_node(tool: str, factory: Callable[[], Any]) -> Any | None:
    """``factory()``, or None after a bad parameter (ValueError / KeyError while the node is built): then one
    line ``tool: what is wrong`` on stderr and rclpy shut down; the caller exits with code 2, as every tool."""
    import sys

    try:
        return factory()
    except (ValueError, KeyError) as e:
        print(f"{tool}: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        if rclpy.ok():
            rclpy.shutdown()
        return None


def spin_until_signal(
    nodes: Sequence[Any],
    multi_threaded: bool = False,
    stop: threading.Event | None = None,
    until: Callable[[], bool] | None = None,
) -> None:
    """Spin `nodes` until SIGINT/SIGTERM (or `stop` is set, or `until()` is true), then finalise them."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    executor = MultiThreadedExecutor() if multi_threaded else SingleThreadedExecutor()
    for n in nodes:
        executor.add_node(n)
    try:
        while not stop.is_set() and rclpy.ok() and not (until and until()):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for n in nodes:
            fin = getattr(n, "finalize", None)
            if fin is not None and rclpy.ok():
                try:
                    fin()
                except Exception as e:  # noqa: BLE001 - keep finalising the others
                    n.get_logger().error(f"finalize failed: {e}")
        executor.shutdown()
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for sig, h in previous.items():
            signal.signal(sig, h)

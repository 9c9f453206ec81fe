"""Spinning nodes until SIGINT/SIGTERM, then finalising them while ROS is still up.

rclpy's default signal handlers shut the context down at once, so a node could not publish a final
hold command on Ctrl-C. Here the signals only set a flag: the executor loop ends, every node's
``finalize()`` runs (the policy node publishes a hold at the last commanded position), then the
nodes are destroyed and the context shut down.

Several nodes in one process (``streamdp-bringup --compose``) each get a thread and an executor of their
own (:func:`spin_each_in_a_thread`), so one node's callbacks never wait behind another's and a node's
callbacks all run in the thread that made it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
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
    stop: threading.Event | None = None,
    until: Callable[[], bool] | None = None,
) -> None:
    """Spin `nodes` until SIGINT/SIGTERM (or `stop` is set, or `until()` is true), then finalise them."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
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


def spin_each_in_a_thread(
    makers: Sequence[Callable[[], Any]],
    stop: threading.Event | None = None,
    until: Callable[[list[Any]], bool] | None = None,
) -> list[Any]:
    """Make each node in a thread of its own and spin it there on its own SingleThreadedExecutor until
    SIGINT/SIGTERM (or `stop` is set, or ``until(nodes)`` is true); then each thread finalises and destroys its
    node, and the context is shut down. Returns the nodes made (destroyed by then).

    Why not one MultiThreadedExecutor: its pool runs a node's callback on whichever thread is free, behind
    whatever the other node is doing; the sim bridge's rendering GL context is current only in the thread that
    made it (EGL_BAD_ACCESS from any other), and its 20 Hz timer must not queue behind the policy node's
    configure and warm-up. An exception in one node (its constructor or a callback) stops all of them and is
    raised here."""
    stop = stop or threading.Event()
    nodes: list[Any] = []
    errors: list[BaseException] = []
    made = threading.Barrier(len(makers) + 1)

    def run(make: Callable[[], Any]) -> None:
        node = None
        try:
            node = make()
            nodes.append(node)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            stop.set()
        made.wait()
        if node is None:
            return
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:
            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
        finally:
            fin = getattr(node, "finalize", None)
            if fin is not None and rclpy.ok():
                try:
                    fin()
                except Exception as e:  # noqa: BLE001 - keep finalising the others
                    node.get_logger().error(f"finalize failed: {e}")
            executor.shutdown()
            node.destroy_node()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=run, args=(m,), name=f"streamdp-node-{i}", daemon=True)
               for i, m in enumerate(makers)]
    try:
        for t in threads:
            t.start()
        made.wait()
        while not stop.is_set() and rclpy.ok() and not (until and until(nodes)):
            stop.wait(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        if rclpy.ok():
            rclpy.shutdown()
        for sig, h in previous.items():
            signal.signal(sig, h)
    if errors:
        raise errors[0]
    return nodes

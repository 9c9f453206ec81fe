"""ResetHandshake (the sim bridge's deactivate-reset-activate of the policy node) against a lifecycle node that
is too busy to answer in time, as a policy node still configuring after a restart is."""

from __future__ import annotations

import time

from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node

from streamdp.ros_nodes.reset_handshake import ResetHandshake

from .helpers import spin_until


class BusyLifecycleNode(LifecycleNode):
    """Activates and deactivates at once, but can be made busy: its callback group sleeps `busy_s`."""

    def __init__(self, **kwargs) -> None:
        super().__init__("busy_node", **kwargs)
        self.active = False
        self.transitions: list[str] = []
        self._busy = self.create_timer(0.01, self._sleep)
        self._busy.cancel()
        self.busy_s = 0.0

    def _sleep(self) -> None:
        self._busy.cancel()
        time.sleep(self.busy_s)  # e.g. loading a checkpoint: the lifecycle services wait meanwhile

    def make_busy(self, seconds: float) -> None:
        self.busy_s = seconds
        self._busy.reset()

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.active = True
        self.transitions.append("activate")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        self.transitions.append("deactivate")
        return TransitionCallbackReturn.SUCCESS


def test_a_deactivation_answered_late_is_followed_by_an_activation(ros_context):
    owner = Node("bridge_like", context=ros_context)
    busy = BusyLifecycleNode(context=ros_context)
    ex = MultiThreadedExecutor(num_threads=2, context=ros_context)
    ex.add_node(owner)
    ex.add_node(busy)
    hs = ResetHandshake(owner, "busy_node", timeout_s=0.3)
    try:
        assert busy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert busy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert spin_until(ex, hs._client.service_is_ready, 10.0)

        # An answered handshake: deactivated before the reset, activated after it.
        hs.begin()
        assert spin_until(ex, hs.ready, 10.0) and not busy.active
        hs.reset_done()
        assert spin_until(ex, lambda: (hs.poll(), hs.counts["activated"] == 1)[1], 10.0), hs.counts
        assert busy.active and busy.transitions == ["activate", "deactivate", "activate"]

        # The node is busy past the timeout: the reset goes ahead without it ...
        busy.make_busy(1.5)
        assert spin_until(ex, lambda: busy._busy.is_canceled(), 5.0)  # it is sleeping now
        hs.begin()
        assert spin_until(ex, hs.ready, 10.0) and hs.counts["timeouts"] == 1
        hs.reset_done()  # nothing to activate: it did not say it deactivated
        # ... then it carries the deactivation out; the handshake activates it again instead of leaving it off.
        assert spin_until(ex, lambda: (hs.poll(), hs.counts["activated"] == 2)[1], 10.0), hs.counts
        assert busy.active and hs.counts["late_deactivations"] == 1
        assert busy.transitions[-2:] == ["deactivate", "activate"]
    finally:
        hs.close()
        ex.shutdown()
        busy.destroy_node()
        owner.destroy_node()

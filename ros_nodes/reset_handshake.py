"""Episode resets coordinated with a lifecycle node: deactivate it before the reset, activate it after.

The scored episodes (:mod:`streamdp.ros_nodes.sim_episodes`) re-seed the policy node at every episode
start by deactivating it, resetting the sim and activating it on the new state. :class:`ResetHandshake`
lets ``sim_bridge_node`` do the same by itself at its automatic resets (``streamdp-bringup sim``), so an
episode reset, where the simulated arm jumps to a new start, is never seen by the policy node as a
2-rad step to be clamped:

1. the reset is due: ``/<node>/change_state`` deactivate is sent and the bridge freezes (no physics step,
   no joint state) until the answer, so every joint state stamped after the deactivation belongs to the
   new episode;
2. the answer (or ``timeout_s`` without one: a node that died, or one too busy to answer, e.g. still
   configuring after a restart) lets the reset go ahead. An unanswered deactivation may still be carried
   out later by a busy node: when its answer comes, the node is activated again (seen after a SIGKILL:
   the restarted node was deactivated by a request it answered only after activating, and stayed
   inactive);
3. after the reset, activate is sent when the deactivation succeeded; the policy node waits for a joint
   state measured after its deactivation (``activate_timeout_s``) and seeds from it. A refused activation
   is retried a few times.

No node (service not available): the reset goes ahead at once, as without coordination. Everything here
is polled from the bridge's control timer (no callbacks of its own), so it works on any executor.
"""

from __future__ import annotations

import time
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState


class ResetHandshake:
    """Deactivate ``/<target>`` before a reset and activate it after (see the module docstring)."""

    def __init__(self, node: Any, target: str, timeout_s: float = 2.0, activate_attempts: int = 3) -> None:
        self.node = node
        self.target = target.strip("/")
        self.timeout_s = float(timeout_s)
        self.activate_attempts = int(activate_attempts)
        self._client = self._new_client()
        self._deactivating: Any = None  # the pending deactivation request
        self._sent = 0.0
        self._activating: Any = None
        self._late: Any = None  # a deactivation not answered in time, which a busy node may still carry out
        self._attempts = 0
        self._reactivate = False
        self.counts = {"deactivated": 0, "activated": 0, "uncoordinated": 0, "timeouts": 0, "refused": 0,
                       "late_deactivations": 0}

    def _new_client(self) -> Any:
        return self.node.create_client(ChangeState, f"/{self.target}/change_state")

    def close(self) -> None:
        """Cancel what is still pending (before the node is destroyed)."""
        for f in (self._deactivating, self._activating, self._late):
            if f is not None:
                f.cancel()
        self._deactivating = self._activating = self._late = None

    def _request(self, transition: int) -> Any:
        req = ChangeState.Request()
        req.transition.id = transition
        return self._client.call_async(req)

    def begin(self) -> None:
        """A reset is due: ask the node to deactivate (nothing to wait for when it is not there)."""
        if self._deactivating is not None:
            return
        self.poll()
        if not self._client.service_is_ready():
            self.counts["uncoordinated"] += 1
            return
        self._deactivating = self._request(Transition.TRANSITION_DEACTIVATE)
        self._sent = time.monotonic()

    def ready(self) -> bool:
        """Whether the reset may go ahead now: the node has answered the deactivation, or not in time."""
        f = self._deactivating
        if f is None:
            return True
        if f.done():
            self._deactivating = None
            res = f.result()
            self._reactivate = bool(res is not None and res.success)
            self.counts["deactivated" if self._reactivate else "uncoordinated"] += 1
            return True
        if time.monotonic() - self._sent > self.timeout_s:
            if self._late is not None:
                self._late.cancel()
            self._late, self._deactivating, self._reactivate = f, None, False
            self.counts["timeouts"] += 1
            self.node.get_logger().warning(f"/{self.target} did not answer the deactivation within "
                                           f"{self.timeout_s:g} s: resetting without it")
            return True
        return False

    def reset_done(self) -> None:
        """After the reset: activate the node again when it was deactivated for it."""
        if self._reactivate:
            self._reactivate = False
            if self._activating is not None:  # an older request never answered (the node died): drop it
                self._client.remove_pending_request(self._activating)
            self._attempts = 1
            self._activating = self._request(Transition.TRANSITION_ACTIVATE)

    def poll(self) -> None:
        """Check on a pending activation (call every tick): count it, or retry a refused one; and on a late
        deactivation: once carried out, activate the node again (it seeds from the state after it)."""
        late = self._late
        if late is not None and late.done():
            self._late = None
            res = late.result()
            if res is not None and res.success and self._activating is None and self._deactivating is None:
                self.counts["late_deactivations"] += 1
                self._reactivate = True
                self.reset_done()
        f = self._activating
        if f is None or not f.done():
            return
        self._activating = None
        res = f.result()
        if res is not None and res.success:
            self.counts["activated"] += 1
            return
        self.counts["refused"] += 1
        if self._attempts < self.activate_attempts:
            self._attempts += 1
            self._activating = self._request(Transition.TRANSITION_ACTIVATE)
        else:
            self.node.get_logger().error(f"/{self.target} refused to activate after the reset "
                                         f"{self._attempts} times: it stays inactive")

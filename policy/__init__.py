"""streamdp.policy: pure-PyTorch streaming diffusion policy (no ROS)."""

from streamdp.policy.checkpoint import CheckpointError, CheckpointMismatchError
from streamdp.policy.config import ConfigError, PolicyConfig, UnknownTaskError
from streamdp.policy.policy import NonFiniteError, Policy
from streamdp.policy.samplers.rolling_buffer import ladder

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "NonFiniteError",
    "Policy",
    "PolicyConfig",
    "UnknownTaskError",
    "ladder",
]

"""``python -m streamdp.policy.train`` (and ``torchrun ... -m streamdp.policy.train``): the streamdp-train CLI."""

from streamdp.policy.train.cli import main

main()

"""streamdp.kernels."""

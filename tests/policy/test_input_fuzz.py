"""Fuzz the observation adapter: malformed input is refused with a clear error and changes nothing."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamdp.policy import NonFiniteError

from .helpers import tiny_policy

POLICY = tiny_policy(camera_names=["front"], image_shape=(3, 8, 8), denoiser="transformer", num_inference_steps=16)

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)
dtypes = st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.float16])


@st.composite
def arrays(draw):
    dt = draw(dtypes)
    elements = None
    if np.issubdtype(dt, np.floating):
        elements = st.floats(allow_nan=True, allow_infinity=True, width=16 if dt == np.float16 else 32)
    return draw(hnp.arrays(dt, draw(shapes), elements=elements))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=arrays(), image=arrays(), drop=st.sampled_from([None, "observation.state", "observation.images.front"]))
def test_malformed_observations_rejected_cleanly(state, image, drop):
    obs = {"observation.state": state, "observation.images.front": image}
    if drop:
        obs.pop(drop)
    POLICY.reset()
    valid_state = state.size == 2 and np.isfinite(state.astype(np.float64)).all()
    valid_image = image.shape in ((8, 8, 3), (3, 8, 8)) and np.isfinite(image.astype(np.float64)).all()
    try:
        accepted = POLICY.observe(obs)
    except (KeyError, ValueError, NonFiniteError) as e:  # NonFiniteError is a ValueError
        assert str(e)  # a message that says what is wrong
        assert not (valid_state and valid_image and drop is None), e
        assert POLICY.denoise() == 0  # nothing to denoise from a rejected input
        assert POLICY.num_ready == 0
        return
    assert accepted and valid_state and valid_image and drop is None

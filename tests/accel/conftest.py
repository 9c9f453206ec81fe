"""tests/accel: tiny models gain nothing from a second thread, and on a shared 2-core machine two threads
per process make them an order of magnitude slower; run each test single-threaded, then restore."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

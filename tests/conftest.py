"""Shared test setup: one torch thread, the gpu marker skip, no leaked grad mode."""

import pytest
import torch

# The test models are tiny: one intra-op thread is fastest, and it keeps the suite
# from stalling when another process shares a 2-core machine (two OpenMP threads
# made forwards 10-70x slower under such load here).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_global_state_leaks():
    """A test (or library code it calls) must not leave autograd switched off."""
    yield
    leaked = not torch.is_grad_enabled()
    torch.set_grad_enabled(True)
    assert not leaked, "grad mode was left disabled (use `with torch.no_grad():`)"

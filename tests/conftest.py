import os

import pytest
import torch

from worldcache.dit import DiT
from worldcache.tiny import tiny_inputs, tiny_transformer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dit():
    return DiT(tiny_transformer(seed=0))


@pytest.fixture
def inputs():
    return tiny_inputs(batch=1)


@pytest.fixture(scope="session")
def device():
    """Where the device-aware tests run: WORLDCACHE_TEST_DEVICE (e.g. cuda, set by scripts/gpu_check.sh), else cpu."""
    name = os.environ.get("WORLDCACHE_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"WORLDCACHE_TEST_DEVICE={name} but CUDA is not available")
    return torch.device(name)

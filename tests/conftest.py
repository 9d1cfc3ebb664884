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

"""WorldCache: training-free caching for action-conditioned video world models."""

__version__ = "0.1.0"  # keep in sync with pyproject.toml

from . import envs  # noqa: E402,F401  registers WorldCache-Cosmos-v0 with gymnasium

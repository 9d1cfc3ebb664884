"""WorldCache: training-free caching for action-conditioned video world models."""
from importlib.metadata import version

__version__ = version("worldcache")  # pyproject.toml is the one place the version is written

from . import envs  # noqa: E402,F401  registers WorldCache-Cosmos-v0 with gymnasium

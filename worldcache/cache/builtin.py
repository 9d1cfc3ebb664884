"""Imports every built-in policy module so that each registers itself."""
from . import dicache, worldcache  # noqa: F401,E401
from . import fora, teacache, easycache  # noqa: F401,E401
from . import diffusers_hooks  # noqa: F401

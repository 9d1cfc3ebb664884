"""Imports every built-in policy module so that each registers itself."""
from . import worldcache  # noqa: F401

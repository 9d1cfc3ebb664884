"""WorldCache: training-free caching for action-conditioned video world models."""
import os
import sys
from importlib.metadata import version
from importlib.util import find_spec

__version__ = version("worldcache")  # pyproject.toml is the one place the version is written

# Under MUJOCO_GL=osmesa, importing MuJoCo loads libOSMesa with its LLVM symbols into the process, and triton (which
# diffusers imports) then segfaults on them. Imported first, triton is unaffected (mujoco_data does the same when it
# sets MUJOCO_GL itself); after MuJoCo, a named error instead of the crash.
if os.environ.get("MUJOCO_GL") == "osmesa" and "triton" not in sys.modules and find_spec("triton") is not None:
    if "mujoco" in sys.modules:
        raise ImportError("MuJoCo was imported before worldcache under MUJOCO_GL=osmesa: loading the world model "
                          "would then crash (libOSMesa's LLVM symbols break triton's). Import worldcache first.")
    import triton  # noqa: F401

from . import fork_guard  # noqa: E402,F401  sees every fork from here on
from . import envs  # noqa: E402,F401  registers WorldCache-Cosmos-v0 with gymnasium

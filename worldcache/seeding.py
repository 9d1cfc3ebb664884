"""Seeds derived from a base seed and keys (an episode index, an env seed, a window), hashed so that nearby keys
draw unrelated streams: a chunk's noise seed `s + c` of one key never lands on another key's."""
from __future__ import annotations

import numpy as np


def derived_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed from (seed, *keys) by numpy's SeedSequence: reproducible, and independent across keys."""
    if any(not 0 <= int(k) < 2**32 for k in (seed, *keys)):  # SeedSequence splits larger ints into 32-bit words,
        raise ValueError(f"seeds and keys must be in [0, 2**32), got {(seed, *keys)}")  # so (0, 2**32) == (0, 0, 1)
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


__all__ = ["derived_seed"]

"""Derived seeds: numpy's SeedSequence of (seed, *keys), pinned, and the formula the rollouts' episodes use."""
import numpy as np
import pytest

from worldcache.mujoco_data import episode_seed as data_episode_seed
from worldcache.rollouts.config import episode_seed
from worldcache.seeding import derived_seed


def test_derived_seed_is_seedsequence_of_seed_and_keys():
    assert derived_seed(0, 10_001) == int(np.random.SeedSequence([0, 10_001]).generate_state(1)[0])
    assert derived_seed(3, 7) == 2580024465  # pinned: a change here changes every generated episode
    assert episode_seed(3, 7) == data_episode_seed(3, 7) == derived_seed(3, 7)
    # neighbouring keys land far apart, so chunk seeds s + c of one key never reach another's
    seeds = np.array(sorted(derived_seed(0, e) for e in range(10_000, 10_200)))
    assert np.diff(seeds).min() > 100
    for bad in ((-1, 3), (0, 2**32), (2**32, 0)):  # SeedSequence would take (0, 2**32) for (0, 0, 1)
        with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\)"):
            derived_seed(*bad)
    assert derived_seed(0, 2**32 - 1) >= 0

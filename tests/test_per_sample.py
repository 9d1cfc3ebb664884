"""Per-sample cache decisions: in a batched call every sample keeps its own cache state and decides on its own
drift, so a sample's decisions and result do not depend on the other samples of the batch."""
import pytest
import torch

from worldcache.cache import make_policy
from worldcache.cache.base import CallRecord, ModelCall, rel_l1
from worldcache.sampler import default_scheduler, denoise
from worldcache.tiny import tiny_inputs

STEPS = 12
# moderate settings: some calls skip, some compute
POLICIES = {"worldcache": dict(threshold=0.05, ret_ratio=0.1), "dicache": dict(threshold=0.02, ret_ratio=0.1),
            "fora": dict(interval=3), "teacache": dict(threshold=0.05), "easycache": dict(threshold=0.005)}


def inputs(seeds, scales):
    """A batch whose samples move differently: sample i's noise scaled by scales[i]."""
    parts = [tiny_inputs(batch=1, seed=s) for s in seeds]
    noise = torch.cat([p[0] * k for p, k in zip(parts, scales)])
    return noise, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def run(dit, name, noise, cond, emb):
    return denoise(dit, default_scheduler(), noise, emb, num_steps=STEPS, policy=make_policy(name, **POLICIES[name]),
                   cond_latents=cond, num_cond_frames=1)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_batch_equals_single_samples(tiny_dit, name):
    seeds, scales = (0, 1, 2), (1.0, 0.3, 3.0)
    noise, cond, emb = inputs(seeds, scales)
    batch = run(tiny_dit, name, noise, cond, emb)
    assert len(batch.records) == 3 * STEPS and [r.sample for r in batch.records[:3]] == [0, 1, 2]
    assert 0 < batch.computed_fraction < 1, name  # some calls skipped: the per-sample paths really ran
    for i in range(3):
        single = run(tiny_dit, name, noise[i:i + 1], cond[i:i + 1], emb[i:i + 1])
        mine = batch.sample_records(i)
        assert [r.computed for r in mine] == [r.computed for r in single.records], (name, i)
        assert [r.blocks_run for r in mine] == [r.blocks_run for r in single.records], (name, i)
        torch.testing.assert_close(batch.latents[i:i + 1], single.latents, rtol=1e-4, atol=1e-4)
    if name != "fora":  # data-driven (all but FORA's fixed schedule): the samples really decided differently
        pattern = {tuple(r.computed for r in batch.sample_records(i)) for i in range(3)}
        assert len(pattern) > 1, name


def test_rel_l1_is_per_sample():
    a = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert rel_l1(a, b).tolist() == [0.0, 1.0]


def test_model_call_fields():
    call = ModelCall.new(2, step=3, num_steps=10, branch="cond", sigma=0.5)
    assert call.step == 3 and call.branch == "cond" and len(call) == 2 and call[1].sample == 1
    call.threshold = 0.25  # a whole-batch value
    call[0].computed = False
    assert [r.threshold for r in call] == [0.25, 0.25] and [r.computed for r in call] == [False, True]
    with pytest.raises(AttributeError, match="per-sample"):
        call.computed
    with pytest.raises(AttributeError):
        call.step = 4
    assert isinstance(call[0], CallRecord)

"""The speed paths give the plain results: the DiT's compiled blocks (`WorldModel.compile_dit`) and the VAE's CPU
kernels (`vae_kernels`)."""
import numpy as np
import pytest
import torch

from worldcache import vae_kernels
from worldcache.cache import make_policy
from worldcache.world_model import WorldModel, WorldModelSpec

SPEC = WorldModelSpec(height=32, width=40, chunk=4, action_dim=3, action_low=[-1.0] * 3, action_high=[1.0] * 3)


def tiny(seed=1) -> WorldModel:
    model = WorldModel.build(SPEC, hidden_heads=2, head_dim=16, num_layers=3, vae_base_dim=8, seed=seed)
    with torch.no_grad():  # the action embedder starts as a no-op; give it weight so actions matter
        for p in model.dit.cond_embedder.parameters():
            p.normal_(0, 0.2)
    return model


def inputs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (batch, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    return frame, rng.uniform(-1, 1, (batch, SPEC.chunk, SPEC.action_dim)).astype(np.float32)


class Counted:
    """Wraps a block callable and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def pair():
    eager, compiled = tiny(), tiny()
    keys = compiled.state_dict().keys()
    assert compiled.compile_dit() is compiled
    blocks = compiled.dit.compiled_blocks
    compiled.compile_dit()  # idempotent: the same compiled blocks
    assert compiled.dit.compiled_blocks is blocks and len(blocks) == 3
    assert all(isinstance(b, torch._dynamo.eval_frame.OptimizedModule) for b in blocks)
    assert compiled.state_dict().keys() == keys  # the compiled blocks are not submodules: checkpoints unchanged
    compiled.dit.compiled_blocks = [Counted(b) for b in blocks]
    return eager, compiled


@pytest.mark.parametrize("policy", ["none", "worldcache"])
def test_compiled_blocks_give_the_eager_predictions(pair, policy):
    eager, compiled = pair
    counted = compiled.dit.compiled_blocks
    before = sum(b.calls for b in counted)
    frame, actions = inputs()
    kw = dict(num_steps=8, seed=3)
    cfg = {"threshold": 0.3} if policy == "worldcache" else {}
    a, out_a = eager.predict(frame, actions, policy=make_policy(policy, **cfg), **kw)
    b, out_b = compiled.predict(frame, actions, policy=make_policy(policy, **cfg), **kw)
    torch.testing.assert_close(out_b.latents, out_a.latents, rtol=0, atol=1e-4)
    assert (a.int() - b.int()).abs().max() <= 1
    assert [(r.computed, r.blocks_run) for r in out_b.records] == [(r.computed, r.blocks_run) for r in out_a.records]
    runs = sum(r.blocks_run for r in out_b.records) // 2  # a batch of 2: each block forward counts per sample
    assert sum(b.calls for b in counted) - before == runs > 0  # every block forward went through a compiled block
    if policy == "worldcache":
        assert not all(r.computed for r in out_b.records)  # the threshold skips: partial stacks ran compiled too


def test_hook_policies_keep_the_eager_blocks(pair):
    """diffusers' caches work in hooks inside the blocks: a compiled block would trace them, so they run the
    modules, with the same bookkeeping as on the eager model."""
    eager, compiled = pair
    counted = compiled.dit.compiled_blocks
    before = sum(b.calls for b in counted)
    frame, actions = inputs(batch=1)
    _, out_a = eager.predict(frame, actions, policy=make_policy("fbcache", threshold=0.2), num_steps=8)
    _, out_b = compiled.predict(frame, actions, policy=make_policy("fbcache", threshold=0.2), num_steps=8)
    assert sum(b.calls for b in counted) == before
    assert [r.blocks_run for r in out_b.records] == [r.blocks_run for r in out_a.records]
    assert 0 < sum(r.blocks_run for r in out_b.records) < 3 * 8


def plain(vae):
    """diffusers' own VAE path: drop the instance attributes `use_fast_kernels` set."""
    for m in vae.modules():
        for name in ("_conv_forward", "forward"):
            m.__dict__.pop(name, None)


def test_vae_kernels_give_diffusers_results_and_leave_training_alone(monkeypatch):
    calls, normalize_calls = [], []
    mkldnn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or mkldnn(*a))
    # diffusers' WanRMS_norm normalises with F.normalize; the fast kernel does not: counted, the fast RMS norm shows
    normalize = torch.nn.functional.normalize
    monkeypatch.setattr(torch.nn.functional, "normalize",
                        lambda *a, **k: normalize_calls.append(1) or normalize(*a, **k))
    fast = tiny(seed=2)
    slow = tiny(seed=2)
    plain(slow.vae)
    frames = torch.as_tensor(inputs(batch=2, seed=5)[0])[:, None].expand(-1, 5, -1, -1, -1)
    with torch.no_grad():
        z_fast = fast.encode(frames)
        assert not normalize_calls  # every RMS norm of the encoder took the fast kernel
        z_slow = slow.encode(frames)
        assert normalize_calls  # diffusers' own path (so the count above can see a norm that slipped through)
        n = len(calls)
        assert n > 0  # the causal convolutions went through oneDNN
        torch.testing.assert_close(z_fast, z_slow, rtol=0, atol=1e-5)
        x_fast, x_slow = (m.vae.decode(z_slow).sample for m in (fast, slow))
        torch.testing.assert_close(x_fast, x_slow, rtol=0, atol=1e-5)
        assert len(calls) > n
        # uint8 frames: float sums within 1e-5 may round across a grey level (seen on AMD EPYC's oneDNN paths)
        u_fast, u_slow = fast.decode(z_slow).int(), slow.decode(z_slow).int()
        assert (u_fast - u_slow).abs().max() <= 1 and (u_fast != u_slow).float().mean() < 1e-3
    # with autograd (VAE training): diffusers' own kernels, the same loss, and gradients
    n = len(calls)
    x = torch.randn(1, 3, 5, SPEC.height, SPEC.width)
    losses = []
    for m in (fast, slow):
        m.vae.zero_grad()
        loss = m.vae(x).sample.square().mean()
        loss.backward()
        losses.append(loss)
    assert len(calls) == n
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert fast.vae.decoder.conv_out.weight.grad.abs().sum() > 0


def test_rms_norm_formula():
    """The channel-first RMS norm: x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma + bias."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    norm = WanRMS_norm(4, images=False)
    vae_kernels.use_fast_kernels(torch.nn.Sequential(norm))
    assert norm.forward.func is vae_kernels._rms_norm  # installed (diffusers' forward gives the same values)
    with torch.no_grad():
        norm.gamma.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]).view(4, 1, 1, 1))
        norm.bias = torch.tensor(0.25)
        x = torch.zeros(1, 4, 1, 1, 2)
        x[0, :, 0, 0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5; scale sqrt(4) = 2
        out = norm(x)
    assert out[0, :, 0, 0, 0].tolist() == pytest.approx([3 / 5 * 2 * 1 + 0.25, 4 / 5 * 2 * 2 + 0.25, 0.25, 0.25])
    assert out[0, :, 0, 0, 1].tolist() == [0.25] * 4  # all-zero channels: eps keeps it finite

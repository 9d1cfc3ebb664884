"""`worldcache convert` on synthetic official checkpoints: NVIDIA's key names with tiny shapes, in bf16.

The shapes follow the formulas of ../shared/REAL_MODEL.md §3 (written out here, not taken from the converter):
D = heads x head_dim; patch input (z + 2) x 1 x 2 x 2; final_layer.linear [4z, D]; t_embedder.1.linear_2 [3D, D];
adaln_modulation_*.1 [R, D], .2 [3D, R]; final_layer.adaln_modulation.2 [2D, R]; cross_attn.{k,v}_proj [D, C];
crossattn_proj.0 [C, C_in]; mlp.layer1 [4D, D]; action fc1 [H, 4A] (2.5) or [H, kA] (2), B_D.fc2 [D, H], B_3D.fc2
[3D, H]. Nothing is downloaded.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, CosmosTransformer3DModel
from safetensors.torch import load_file, save_file

from worldcache.cache import POLICIES, _load_builtin, make_policy
from worldcache.cli import main
from worldcache.convert import convert, load_torch, load_vae, make_plan, official_key, strip_net
from worldcache.world_model import CheckpointError, WorldModel

HEADS, HEAD_DIM, LAYERS, Z, R, C_TEXT, C_IN, A, K, H_A = 2, 16, 2, 16, 8, 24, 40, 7, 12, 48
D = HEADS * HEAD_DIM


def official_shapes(variant: str, heads=HEADS, head_dim=HEAD_DIM, layers=LAYERS, z=Z, r=R, c_text=C_TEXT,
                    c_in=C_IN, hidden_a=H_A) -> dict:
    d = heads * head_dim
    s = {"x_embedder.proj.1.weight": (d, (z + 2) * 4), "t_embedder.1.linear_1.weight": (d, d),
         "t_embedder.1.linear_2.weight": (3 * d, d), "t_embedding_norm.weight": (d,),
         "final_layer.linear.weight": (4 * z, d), "final_layer.adaln_modulation.1.weight": (r, d),
         "final_layer.adaln_modulation.2.weight": (2 * d, r)}
    if variant == "2.5":  # Reason1's text projection; Predict2's T5 text needs none (its net has no crossattn_proj)
        s.update({"crossattn_proj.0.weight": (c_text, c_in), "crossattn_proj.0.bias": (c_text,)})
    for i in range(layers):
        b = f"blocks.{i}."
        for p in "qkv":
            s[b + f"self_attn.{p}_proj.weight"] = (d, d)
        s[b + "self_attn.output_proj.weight"] = (d, d)
        s[b + "cross_attn.q_proj.weight"] = (d, d)
        s[b + "cross_attn.k_proj.weight"] = s[b + "cross_attn.v_proj.weight"] = (d, c_text)
        s[b + "cross_attn.output_proj.weight"] = (d, d)
        for att in ("self_attn", "cross_attn"):
            s[b + f"{att}.q_norm.weight"] = s[b + f"{att}.k_norm.weight"] = (head_dim,)
        s[b + "mlp.layer1.weight"], s[b + "mlp.layer2.weight"] = (4 * d, d), (d, 4 * d)
        for m in ("self_attn", "cross_attn", "mlp"):
            s[b + f"adaln_modulation_{m}.1.weight"], s[b + f"adaln_modulation_{m}.2.weight"] = (r, d), (3 * d, r)
    a_in = 4 * A if variant == "2.5" else K * A
    for name, out in (("action_embedder_B_D", d), ("action_embedder_B_3D", 3 * d)):
        s.update({f"{name}.fc1.weight": (hidden_a, a_in), f"{name}.fc1.bias": (hidden_a,),
                  f"{name}.fc2.weight": (out, hidden_a), f"{name}.fc2.bias": (out,)})
    return s


def diffusers_names(layers=LAYERS) -> dict:
    """REAL_MODEL.md §3's table, official key -> diffusers key, written out by hand (not from the converter's
    renames), so a converter that swapped two keys of one shape (norm1/norm2, norm_q/norm_k) fails."""
    names = {"x_embedder.proj.1.weight": "patch_embed.proj.weight",
             "t_embedder.1.linear_1.weight": "time_embed.t_embedder.linear_1.weight",
             "t_embedder.1.linear_2.weight": "time_embed.t_embedder.linear_2.weight",
             "t_embedding_norm.weight": "time_embed.norm.weight",
             "final_layer.linear.weight": "proj_out.weight",
             "final_layer.adaln_modulation.1.weight": "norm_out.linear_1.weight",
             "final_layer.adaln_modulation.2.weight": "norm_out.linear_2.weight"}
    for i in range(layers):
        b, t = f"blocks.{i}.", f"transformer_blocks.{i}."
        for official, ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            names.update({b + f"{official}.q_proj.weight": t + f"{ours}.to_q.weight",
                          b + f"{official}.k_proj.weight": t + f"{ours}.to_k.weight",
                          b + f"{official}.v_proj.weight": t + f"{ours}.to_v.weight",
                          b + f"{official}.output_proj.weight": t + f"{ours}.to_out.0.weight",
                          b + f"{official}.q_norm.weight": t + f"{ours}.norm_q.weight",
                          b + f"{official}.k_norm.weight": t + f"{ours}.norm_k.weight"})
        names.update({b + "mlp.layer1.weight": t + "ff.net.0.proj.weight", b + "mlp.layer2.weight": t + "ff.net.2.weight"})
        for official, ours in (("self_attn", "norm1"), ("cross_attn", "norm2"), ("mlp", "norm3")):
            names.update({b + f"adaln_modulation_{official}.1.weight": t + f"{ours}.linear_1.weight",
                          b + f"adaln_modulation_{official}.2.weight": t + f"{ours}.linear_2.weight"})
    return names


def official_state(variant: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {f"net.{k}": (torch.randn(shape, generator=g) * (0.3 if len(shape) == 1 else 1 / math.sqrt(shape[-1]))
                          + (1.0 if k.endswith("norm.weight") else 0.0)).to(torch.bfloat16)
             for k, shape in official_shapes(variant).items()}
    # Not weights: RoPE buffers, training counters, TransformerEngine state (all dropped by the converter).
    state["net.pos_embedder.seq"] = torch.arange(128, dtype=torch.float32)
    state["net.pos_embedder.dim_spatial_range"] = torch.arange(21, dtype=torch.float32)
    state["net.pos_embedder.dim_temporal_range"] = torch.arange(22, dtype=torch.float32)
    for c in ("accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration"):
        state[f"net.{c}"] = torch.tensor(1234)
    state["net.accum_train_in_hours"] = torch.tensor(5.5)
    state["net.blocks.0.self_attn.output_proj._extra_state"] = torch.zeros(0, dtype=torch.uint8)
    return state


def tiny_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=Z)  # Wan 2.1's structure (8x space, 4x time), tiny widths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    vae = tiny_vae()
    vae.save_pretrained(root / "vae")
    g = torch.Generator().manual_seed(1)
    prompts = {"prompt": torch.randn(1, 6, C_IN, generator=g).to(torch.bfloat16),
               "negative": torch.randn(1, 6, C_IN, generator=g).to(torch.bfloat16)}
    save_file(prompts, str(root / "embeds.safetensors"))
    out = {"root": root, "vae": root / "vae", "embeds": root / "embeds.safetensors", "prompts": prompts}
    for variant in ("2.5", "2"):
        state = official_state(variant, seed=2 if variant == "2" else 3)
        src = root / f"transformer_{variant}.pt"
        torch.save({"model": state} if variant == "2.5" else state, src)  # one wrapped, one plain
        conv = root / f"out_{variant}"
        embeds = root / "embeds.safetensors" if variant == "2.5" else None  # Predict2: NVIDIA's zero T5 text
        summary = convert(src, root / "vae", embeds, conv, height=32, width=48)
        out[variant] = {"state": state, "src": src, "out": conv, "summary": summary}
    return out


@pytest.mark.parametrize("variant", ["2.5", "2"])
def test_every_tensor_lands_bit_equal(files, variant):
    f = files[variant]
    assert f["summary"].variant == variant
    model = WorldModel.from_pretrained(f["out"], dtype="bf16")
    tsd, asd = model.dit.transformer.state_dict(), model.dit.cond_embedder.state_dict()
    assert make_plan(strip_net(f["state"]), variant).transformer == diffusers_names()
    names = diffusers_names()
    checked = 0
    for key, value in strip_net(f["state"]).items():
        if key.startswith("action_embedder_"):
            assert torch.equal(asd[key], value), key
        elif key in names:  # time_embed is kept in fp32 (official): the bf16 values upcast exactly
            assert torch.equal(tsd[names[key]].to(torch.bfloat16), value), key
        else:
            continue
        checked += 1
    proj = ["crossattn_proj.0.weight", "crossattn_proj.0.bias"] if variant == "2.5" else []
    assert checked == len(official_shapes(variant)) - len(proj)  # all but crossattn_proj (applied to the prompts)
    assert len(tsd) == checked - 8 and "crossattn_proj.0.weight" not in tsd
    assert sorted(f["summary"].dropped) == sorted(
        ["pos_embedder.seq", "pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range",
         "accum_video_sample_counter", "accum_image_sample_counter", "accum_iteration", "accum_train_in_hours",
         "blocks.0.self_attn.output_proj._extra_state", *proj])
    stored = load_file(str(f["out"] / "prompt_embeds.safetensors"))
    if variant == "2.5":  # The prompts went through crossattn_proj once (fp32).
        w, b = (f["state"][f"net.crossattn_proj.0.{n}"].float() for n in ("weight", "bias"))
        for k in ("prompt", "negative"):
            want = F.gelu(files["prompts"][k].float() @ w.T + b)  # crossattn_proj: Linear -> GELU
            torch.testing.assert_close(stored[k], want, rtol=1e-6, atol=1e-6)
    else:  # NVIDIA's zero T5 embeddings
        assert all(stored[k].shape == (1, 512, C_TEXT) and not stored[k].any() for k in ("prompt", "negative"))
    s = model.spec
    # each variant sampled as NVIDIA samples it: 2.5 UniPC, the conditioning frame at the noisy frames' timestep,
    # quantised; Predict2 its RectifiedFlowAB2 (35 steps + the clean pass), the conditioning frame at sigma 1e-4
    assert (s.num_steps, s.cond_frame_timestep, s.cosmos_sigmas, s.quantise_timestep, s.fp32_time_embedding) == (
        (35, None, True, True, True) if variant == "2.5" else (36, 1e-4 / 1.0001, False, False, False))
    assert s.truncate_pixels  # decoded frames as NVIDIA's scripts make them, for both variants
    assert type(model.scheduler).__name__ == (
        "UniPCMultistepScheduler" if variant == "2.5" else "RectifiedFlowAB2Scheduler")
    assert ("RectifiedFlowAB2" in f["summary"].sampling) == (variant == "2")
    assert s.action_per_frame == (variant == "2.5") and s.chunk == K and s.spatial_compression == 8
    # 2.5 keeps the timestep embedding in fp32; Predict2 runs it in the weights' dtype, on the timestep cast to it
    assert model.dit.transformer.time_embed.norm.weight.dtype == (torch.float32 if variant == "2.5" else torch.bfloat16)
    t = torch.tensor([[0.9431, 0.9431]])
    with torch.no_grad():
        exact, rounded = (model.dit.embed_timestep(x)[0] for x in (t, t.to(torch.bfloat16).float()))
    assert torch.equal(exact, rounded) == (variant == "2")


def test_sharded_transformer_loads_bit_equal(files, tmp_path):
    """The real 2B transformer (~4 GB in bf16) is always written in 2 GiB shards plus an index; the tiny models fit
    in one file. Small shards here run that branch: diffusers must load every tensor from the shard the index
    names, and the index must say the exact total size."""
    import json
    import shutil

    from worldcache.convert import write_safetensors_sharded

    f = files["2.5"]
    folder = tmp_path / "sharded"
    shutil.copytree(f["out"], folder)
    single = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(single))
    single.unlink()
    nbytes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    limit = sum(nbytes.values()) // 5
    assert max(nbytes.values()) < limit  # every tensor fits a shard: the packing below is greedy, in order
    write_safetensors_sharded(tensors, folder / "transformer", shard_bytes=limit)
    names = sorted(p.name for p in (folder / "transformer").glob("*.safetensors"))
    n = len(names)
    assert n >= 5 and names == [f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    shards = [list(load_file(str(folder / "transformer" / name))) for name in names]
    # greedy packing, in the tensors' order: each shard within the limit, and full (its next tensor would not fit)
    assert [k for shard in shards for k in shard] == list(tensors)
    sizes = [sum(nbytes[k] for k in shard) for shard in shards]
    assert all(s <= limit for s in sizes)
    assert all(sizes[i] + nbytes[shards[i + 1][0]] > limit for i in range(n - 1))
    index = json.loads((folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(nbytes.values())
    assert index["weight_map"] == {k: name for name, shard in zip(names, shards) for k in shard}
    model = WorldModel.from_pretrained(folder, dtype="bf16")  # diffusers reads the index
    tsd = model.dit.transformer.state_dict()
    assert tsd.keys() == tensors.keys()
    for k, v in tensors.items():  # time_embed is kept in fp32: the bf16 values upcast exactly
        assert torch.equal(tsd[k].to(torch.bfloat16), v), k


def reference_embedding(state: dict, timestep: torch.Tensor, actions: torch.Tensor, variant: str):
    """NVIDIA's formulas written out: sinusoid (cos first), RMSNorm(sin + aD) and t_embedder(sin) + a3D; the
    conditioning latent frame gets zero actions (2.5); the 2 variant embeds the flattened chunk once."""
    w = {k.removeprefix("net."): v.float() for k, v in state.items()}
    half = D // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    arg = timestep[..., None].float() * freqs
    sin = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)  # (B, T, D)

    def mlp(name, x):
        h = F.gelu(x @ w[f"{name}.fc1.weight"].T + w[f"{name}.fc1.bias"], approximate="tanh")
        return h @ w[f"{name}.fc2.weight"].T + w[f"{name}.fc2.bias"]

    b, t = timestep.shape
    if variant == "2.5":
        x = actions.reshape(b, -1, 4 * A)
        a_d, a_3d = (torch.cat([torch.zeros(b, 1, n), mlp(name, x)], dim=1)
                     for name, n in (("action_embedder_B_D", D), ("action_embedder_B_3D", 3 * D)))
    else:
        x = actions.reshape(b, 1, K * A)
        a_d, a_3d = mlp("action_embedder_B_D", x).expand(b, t, -1), mlp("action_embedder_B_3D", x).expand(b, t, -1)
    u = sin + a_d
    emb = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6) * w["t_embedding_norm.weight"]
    temb = F.silu(sin @ w["t_embedder.1.linear_1.weight"].T) @ w["t_embedder.1.linear_2.weight"].T + a_3d
    return temb, emb, a_d


@pytest.mark.parametrize("variant", ["2.5", "2"])
def test_embedding_stage_equals_official_formulas(files, variant):
    f = files[variant]
    model = WorldModel.from_pretrained(f["out"])  # fp32 weights (the bf16 values, upcast)
    g = torch.Generator().manual_seed(5)
    actions = torch.randn(2, K, A, generator=g)
    t = model.spec.latent_frames
    timestep = torch.rand(2, t, generator=g)
    with torch.no_grad():
        temb, emb = model.dit.embed_timestep(timestep, actions)
    ref_temb, ref_emb, a_d = reference_embedding(f["state"], timestep, actions, variant)
    torch.testing.assert_close(temb, ref_temb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb, ref_emb, rtol=1e-5, atol=1e-5)
    if variant == "2.5":  # the conditioning frame's action term is exactly zero (fc2's bias does not leak in)
        assert torch.equal(a_d[:, 0], torch.zeros_like(a_d[:, 0]))
        with torch.no_grad():
            a3d, ad = model.dit.cond_embedder(actions, t)
        assert (ad[:, 0] == 0).all() and (a3d[:, 0] == 0).all() and (ad[:, 1:].abs() > 0).any()


@pytest.mark.parametrize("variant", ["2.5", "2"])
def test_converted_model_predicts_under_every_cache_policy(files, variant):
    """"none" is the plain loop bit for bit; every other policy skips (thresholds raised to 0.5 where a policy has
    one, so skipping does not hang on this tiny model's drift) and stays near the plain prediction."""
    import dataclasses

    model = WorldModel.from_pretrained(files[variant]["out"])
    s = model.spec
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, s.height, s.width, 3), dtype=np.uint8)
    actions = rng.uniform(s.action_low, s.action_high, (1, s.chunk, s.action_dim)).astype(np.float32)
    _, plain = model.predict(frame, actions, num_steps=6, seed=0)  # no policy
    ref = plain.latents[:, :, 1:]
    peak = ref.max() - ref.min()
    _load_builtin()
    names = sorted(POLICIES) if variant == "2.5" else ["none", "worldcache"]
    for name in names:
        has_threshold = "threshold" in {f.name for f in dataclasses.fields(POLICIES[name].config_cls)}
        policy = make_policy(name, **({"threshold": 0.5} if has_threshold else {}))
        try:
            frames, out = model.predict(frame, actions, policy=policy, num_steps=6, seed=0)
            if name == "magcache":  # its first prediction calibrates (nothing skipped); the next one uses the ratios
                assert out.computed_fraction == 1.0
                frames, out = model.predict(frame, actions, policy=policy, num_steps=6, seed=0)
        finally:
            policy.detach()  # diffusers-hook policies stay on the model otherwise
        assert frames.shape == (1, s.chunk, s.height, s.width, 3) and frames.dtype == torch.uint8, name
        assert out.latents.dtype == torch.float32 and len(out.records) == 6, name
        assert torch.equal(out.latents[:, :, :1], plain.latents[:, :, :1]), name  # the conditioning frame, clean
        if name == "none":
            assert torch.equal(out.latents, plain.latents) and out.computed_fraction == 1.0
            continue
        psnr = 10 * torch.log10(peak ** 2 / (out.latents[:, :, 1:] - ref).pow(2).mean())
        assert out.computed_fraction < 1.0 and psnr > 30, (name, out.computed_fraction, psnr)


@pytest.mark.parametrize("variant", ["2.5", "2"])
def test_converted_model_samples_as_nvidia_does(files, variant, monkeypatch):
    """What `predict` hands the denoising loop, per variant (REAL_MODEL.md §5): 2.5 NVIDIA's sigmas
    linspace(0.999, 0, N + 1)[:-1], the quantised timestep, the conditioning frame at the noisy frames' timestep;
    Predict2 the scheduler's own sigmas, unquantised, the conditioning frame at sigma 1e-4."""
    import worldcache.world_model as wm

    seen = {}
    real = wm.denoise

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(wm, "denoise", spy)
    model = WorldModel.from_pretrained(files[variant]["out"])
    s = model.spec
    frame = np.zeros((1, s.height, s.width, 3), np.uint8)
    model.predict(frame, np.zeros((1, s.chunk, s.action_dim), np.float32), num_steps=5, seed=0)
    assert seen["guidance_scale"] == 0.0 and seen["num_steps"] == 5
    if variant == "2.5":
        np.testing.assert_allclose(seen["sigmas"], [0.999, 0.7992, 0.5994, 0.3996, 0.1998], rtol=0, atol=1e-15)
        assert seen["quantise_timestep"] is True and seen["cond_frame_timestep"] is None
    else:
        assert seen["sigmas"] is None and seen["quantise_timestep"] is False
        assert seen["cond_frame_timestep"] == 1e-4 / (1 + 1e-4)


def test_errors_name_the_key_and_expected_shape(files, tmp_path, capsys):
    base = official_state("2.5")
    bad = dict(base)
    bad["net.blocks.1.cross_attn.k_proj.weight"] = torch.zeros(D, C_TEXT + 1, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=rf"net\.blocks\.1\.cross_attn\.k_proj\.weight: expected shape "
                                              rf"\[{D}, {C_TEXT}\], got \[{D}, {C_TEXT + 1}\]"):
        make_plan(strip_net(bad))
    bad = dict(base)
    bad["net.action_embedder_B_3D.fc2.weight"] = torch.zeros(D, H_A, dtype=torch.bfloat16)  # D instead of 3D
    with pytest.raises(CheckpointError, match=rf"net\.action_embedder_B_3D\.fc2\.weight: expected shape "
                                              rf"\[{3 * D}, {H_A}\]"):
        make_plan(strip_net(bad))
    bad = {k: v for k, v in base.items() if k != "net.blocks.0.mlp.layer2.weight"}
    with pytest.raises(CheckpointError, match=rf"missing key net\.blocks\.0\.mlp\.layer2\.weight .*\[{D}, {4 * D}\]"):
        make_plan(strip_net(bad))
    bad = {k: v for k, v in base.items() if k != "net.action_embedder_B_3D.fc2.bias"}
    with pytest.raises(CheckpointError, match=rf"missing key net\.action_embedder_B_3D\.fc2\.bias \(the action "
                                              rf"embedder, expected shape \[{3 * D}\]\)"):
        make_plan(strip_net(bad))
    bad = dict(base, **{"net.blocks.0.self_attn.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected key net\.blocks\.0\.self_attn\.extra\.weight"):
        make_plan(strip_net(bad))
    ints = dict(base, **{"net.blocks.0.mlp.layer1.weight": torch.zeros(4 * D, D, dtype=torch.int64)})
    with pytest.raises(CheckpointError, match=r"net\.blocks\.0\.mlp\.layer1\.weight: expected floating-point "
                                              r"weights, got torch\.int64"):
        make_plan(strip_net(ints))
    # a block missing in the middle: named as such (not as an unexpected key of the next block)
    three = {k: torch.zeros(v) for k, v in official_shapes("2.5", layers=3).items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"blocks \[1\] missing"):
        make_plan(three)
    # Through the CLI: exit code 2 and one error line naming the file and the key, no traceback
    torch.save(bad, tmp_path / "bad.pt")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "bad.pt"), "--vae", str(files["vae"]), "--prompt-embeds",
                 str(files["embeds"]), "--out", str(tmp_path / "o")]) == 2
    printed = capsys.readouterr()
    assert printed.out.startswith(f"loading {tmp_path / 'bad.pt'} (")
    assert len(printed.err.splitlines()) == 1 and "Traceback" not in printed.err
    assert printed.err.startswith(f"worldcache convert: error: {tmp_path / 'bad.pt'}: unexpected key "
                                  f"net.blocks.0.self_attn.extra.weight ")
    assert not (tmp_path / "o").exists()


def test_bounds_of_another_width_and_a_projection_the_blocks_cannot_read_are_refused(files, tmp_path):
    """--action-dim other than Bridge's 7 needs its own bounds (refused before the file is read: the path does not
    exist); a crossattn_proj whose output the cross-attention cannot take is named (it failed at load, as a prompt
    width)."""
    for kw, flag in ((dict(action_dim=6), "--action-low"), (dict(action_dim=6, action_low=[-1.0] * 6), "--action-high"),
                     (dict(action_low=[-1.0] * 6), "--action-low")):
        with pytest.raises(CheckpointError, match=rf"^{flag}: (7|6) values .* for --action-dim (6|7): give (6|7)$"):
            convert(tmp_path / "absent.pt", files["vae"], None, tmp_path / "o", **kw)
    with pytest.raises(CheckpointError, match=r"^--height 264: must be a multiple of 16"):  # it failed at predict
        convert(tmp_path / "absent.pt", files["vae"], None, tmp_path / "o", height=264)
    bad = dict(official_state("2.5"))
    bad["net.crossattn_proj.0.weight"] = torch.zeros(C_TEXT + 1, C_IN, dtype=torch.bfloat16)
    bad["net.crossattn_proj.0.bias"] = torch.zeros(C_TEXT + 1, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=rf"crossattn_proj\.0\.weight: projects the text to {C_TEXT + 1} "
                                              rf"channels, but blocks\.0\.cross_attn\.k_proj takes {C_TEXT}"):
        make_plan(strip_net(bad))


def test_cli_converts_a_state_dict_wrapped_file_with_pickled_code_and_an_explicit_variant(files, tmp_path, capsys):
    """`{"state_dict": ...}` (REAL_MODEL.md §1), a TransformerEngine entry only --unsafe-pickle loads, and chunk 4,
    where the per-latent-frame and whole-chunk action widths are both 28 so only --variant decides."""
    state = official_state("2.5")
    state["net.blocks.0.self_attn.output_proj._extra_state"] = Opaque()
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    args = ["convert", str(tmp_path / "wrapped.pt"), "--vae", str(files["vae"]), "--prompt-embeds",
            str(files["embeds"]), "--out", str(tmp_path / "o"), "--chunk", "4"]
    assert main(args) == 2 and "--unsafe-pickle loads it" in capsys.readouterr().err
    assert main(args + ["--unsafe-pickle"]) == 2 and "are both 28: pass --variant" in capsys.readouterr().err
    assert main(args + ["--unsafe-pickle", "--variant", "2.5", "--height", "32", "--width", "48"]) == 0
    assert "converted Cosmos action-conditioned model (variant 2.5)" in capsys.readouterr().out
    model = WorldModel.from_pretrained(tmp_path / "o", dtype="bf16")
    assert model.spec.chunk == 4 and model.spec.action_per_frame and model.spec.name == "cosmos-action-2.5"
    assert (model.spec.height, model.spec.width) == (32, 48)
    tsd = model.dit.transformer.state_dict()
    for key, target in diffusers_names().items():
        assert torch.equal(tsd[target].to(torch.bfloat16), state[f"net.{key}"]), key
    asd = model.dit.cond_embedder.state_dict()
    assert all(torch.equal(asd[k], state[f"net.{k}"]) for k in asd) and len(asd) == 8


def test_non_finite_weights_are_refused_before_anything_is_written(files, tmp_path):
    state = official_state("2.5")
    state["net.blocks.1.mlp.layer2.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.1\.ff\.net\.2\.weight: NaN or inf"):
        convert(tmp_path / "nan.pt", files["vae"], files["embeds"], tmp_path / "o", height=32, width=48)
    assert not (tmp_path / "o").exists()


class Opaque:  # a pickled object weights_only refuses
    pass


def test_unpickling_code_needs_the_explicit_flag(files, tmp_path):
    state = official_state("2.5")
    state["net.blocks.0.self_attn.output_proj._extra_state"] = Opaque()
    torch.save(state, tmp_path / "te.pt")
    with pytest.raises(CheckpointError, match="--unsafe-pickle"):
        convert(tmp_path / "te.pt", files["vae"], files["embeds"], tmp_path / "o")
    s = convert(tmp_path / "te.pt", files["vae"], files["embeds"], tmp_path / "o", unsafe_pickle=True,
                height=32, width=48)
    assert "blocks.0.self_attn.output_proj._extra_state" in s.dropped


def test_2b_plan_matches_the_2b_model_on_meta():
    """The converter's key/shape plan for a full-size 2B state dict equals CosmosTransformer3DModel's, no memory."""
    config = dict(  # REAL_MODEL.md §2, written out
        in_channels=17, out_channels=16, num_attention_heads=16, attention_head_dim=128, num_layers=28,
        mlp_ratio=4.0, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True, extra_pos_embed_type=None,
        use_crossattn_projection=True, crossattn_proj_in_channels=100352, encoder_hidden_states_channels=1024)
    shapes = official_shapes("2.5", heads=16, head_dim=128, layers=28, z=16, r=256, c_text=1024, c_in=100352,
                             hidden_a=8192)
    assert shapes["action_embedder_B_D.fc1.weight"] == (8192, 28) and shapes["x_embedder.proj.1.weight"] == (2048, 72)
    state = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in shapes.items()}
    state["_extra_state"] = torch.empty(0, device="meta")
    plan = make_plan(state, "auto")
    assert plan.variant == "2.5" and plan.config == config
    with torch.device("meta"):
        model = CosmosTransformer3DModel(**config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert plan.transformer == diffusers_names(28)
    # the names in "missing key" messages: every diffusers key of the model back to the official one diffusers'
    # converter renames to it
    assert {official_key(t): t for t in want if t not in plan.crossattn_proj} == {
        k: t for k, t in plan.transformer.items()}
    got = {plan.transformer[k]: shapes[k] for k in plan.transformer}
    got.update({k: shapes[k] for k in plan.crossattn_proj})  # same name in diffusers
    assert got == want
    assert sum(math.prod(s) for s in want.values()) > 1.9e9  # it is the 2B network
    # a 2B file cut short loses whole blocks; it must not plan as a shallower model
    cut = {k: v for k, v in state.items() if not k.startswith("blocks.27.")}
    with pytest.raises(CheckpointError, match="27 blocks at the 2B width 2048: the 2B model has 28"):
        make_plan(cut, "auto")


RES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
       "conv_shortcut": "shortcut"}


def wan_original_key(key: str) -> str:
    """diffusers AutoencoderKLWan key -> the original Wan2.1_VAE.pth key (Wan's wan/modules/vae.py names)."""
    import re

    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    if key.split(".")[0] in top:
        return top[key.split(".")[0]] + key[key.index("."):]
    side, rest = key.split(".", 1)
    rest = re.sub(r"^conv_in", "conv1", rest)
    rest = re.sub(r"^norm_out", "head.0", rest)
    rest = re.sub(r"^conv_out", "head.2", rest)
    if m := re.match(r"mid_block\.resnets\.(\d)\.(\w+)\.(.*)", rest):
        rest = f"middle.{2 * int(m[1])}.{RES[m[2]]}.{m[3]}"
    rest = rest.replace("mid_block.attentions.0.", "middle.1.")
    if m := re.match(r"down_blocks\.(\d+)\.(norm1|conv1|norm2|conv2|conv_shortcut)\.(.*)", rest):
        rest = f"downsamples.{m[1]}.{RES[m[2]]}.{m[3]}"
    rest = re.sub(r"^down_blocks\.", "downsamples.", rest)
    if m := re.match(r"up_blocks\.(\d)\.resnets\.(\d)\.(\w+)\.(.*)", rest):
        rest = f"upsamples.{4 * int(m[1]) + int(m[2])}.{RES[m[3]]}.{m[4]}"
    if m := re.match(r"up_blocks\.(\d)\.upsamplers\.0\.(.*)", rest):
        rest = f"upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    return f"{side}.{rest}"


def test_wan_vae_in_the_original_layout_maps_and_decodes_equal(tmp_path):
    from worldcache.convert import load_vae

    vae = tiny_vae()
    with torch.no_grad():  # non-trivial values everywhere (diffusers zero-initialises some convs)
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    original = {wan_original_key(k): v.clone() for k, v in vae.state_dict().items()}
    assert len(original) == len(vae.state_dict()) and "decoder.upsamples.4.shortcut.weight" in original
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    mapped = load_vae(tmp_path / "Wan2.1_VAE.pth")
    for k, v in vae.state_dict().items():
        assert torch.equal(mapped.state_dict()[k], v), k
    z = torch.randn(1, Z, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(mapped.decode(z).sample, vae.decode(z).sample)
    broken = dict(original)
    broken["decoder.head.2.weight"] = broken["decoder.head.2.weight"][:, :4]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.weight: expected shape"):
        load_vae(tmp_path / "broken.pth")


def test_variant_2_without_prompts_gets_nvidias_zero_text_and_2_5_is_refused(files, tmp_path):
    # NVIDIA's Predict2 action pipeline feeds zeros [B, 512, 1024] (T5's width) to the cross-attention, unprojected
    summary = convert(files["2"]["src"], files["vae"], None, tmp_path / "zeros", height=32, width=48)
    stored = load_file(str(tmp_path / "zeros" / "prompt_embeds.safetensors"))
    for k in ("prompt", "negative"):
        assert stored[k].shape == (1, 512, C_TEXT) and not stored[k].any()
    assert summary.prompts == f"zeros [1, 512, {C_TEXT}] (NVIDIA's Predict2 action pipeline)"
    model = WorldModel.from_pretrained(tmp_path / "zeros")
    assert not model.dit.transformer.config.use_crossattn_projection
    s = model.spec
    frame = np.zeros((1, s.height, s.width, 3), np.uint8)
    frames, _ = model.predict(frame, np.zeros((1, s.chunk, s.action_dim), np.float32), num_steps=2, seed=0)
    assert frames.shape == (1, s.chunk, s.height, s.width, 3)
    with pytest.raises(CheckpointError, match="2.5 needs --prompt-embeds"):
        convert(files["2.5"]["src"], files["vae"], None, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_unclear_files_are_refused_with_what_they_are(files, tmp_path):
    # a whole-chunk action MLP beside crossattn_proj: not Predict2 (no projection there) but a 2.5-family net,
    # whose conventions Predict2's would silently replace
    state = official_state("2")
    state.update({k: v for k, v in official_state("2.5").items() if k.startswith("net.crossattn_proj")})
    for variant in ("auto", "2"):
        with pytest.raises(CheckpointError, match="has crossattn_proj, which Cosmos-Predict2 has not"):
            make_plan(strip_net(state), variant)
    # a training checkpoint with both the raw and the EMA weights: which is meant is not guessed
    both = {**official_state("2.5"), **{k.replace("net.", "net_ema.", 1): v for k, v in official_state("2.5").items()}}
    with pytest.raises(CheckpointError, match=r"both net\.\* and net_ema\.\* weights"):
        strip_net(both)
    ema = {k.replace("net.", "net_ema.", 1): v for k, v in official_state("2.5").items()}
    assert strip_net(ema).keys() == strip_net(official_state("2.5")).keys()
    # a base (text/video) checkpoint has no action path
    base = {k: v for k, v in official_state("2.5").items() if "action_embedder" not in k}
    with pytest.raises(CheckpointError, match="not an action-conditioned Cosmos checkpoint"):
        make_plan(strip_net(base))
    # chunk 4: per-latent-frame and whole-chunk widths coincide
    with pytest.raises(CheckpointError, match="are both 28: pass --variant"):
        make_plan(strip_net(official_state("2.5")), chunk=4)
    # the transformer given as the VAE; a DCP folder given as the transformer
    with pytest.raises(CheckpointError, match="not a Wan 2.1 VAE"):
        load_vae(files["2.5"]["src"])
    with pytest.raises(CheckpointError, match="a folder, not a checkpoint file"):
        load_torch(tmp_path)


def test_a_folder_that_keeps_the_projection_takes_the_raw_embeddings(files, tmp_path):
    """Loading accepts either form: the converter's (projection applied to the prompts) or one that keeps
    `crossattn_proj` with the text encoder's raw embeddings; both predict the same."""
    import json
    import shutil

    f = files["2.5"]
    keep = tmp_path / "keep"
    shutil.copytree(f["out"], keep)
    cfg_file = keep / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(use_crossattn_projection=True, crossattn_proj_in_channels=C_IN, encoder_hidden_states_channels=C_TEXT)
    cfg_file.write_text(json.dumps(cfg))
    weights = keep / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    sd.update({f"crossattn_proj.0.{n}": f["state"][f"net.crossattn_proj.0.{n}"] for n in ("weight", "bias")})
    save_file(sd, str(weights))
    save_file(files["prompts"], str(keep / "prompt_embeds.safetensors"))  # raw, C_IN-d
    folded, kept = WorldModel.from_pretrained(f["out"]), WorldModel.from_pretrained(keep)
    assert kept.prompt_embeds.shape[-1] == C_IN and folded.prompt_embeds.shape[-1] == C_TEXT
    rng = np.random.default_rng(1)
    s = folded.spec
    frame = rng.integers(0, 256, (1, s.height, s.width, 3), dtype=np.uint8)
    actions = rng.uniform(s.action_low, s.action_high, (1, s.chunk, s.action_dim)).astype(np.float32)
    _, a = folded.predict(frame, actions, num_steps=3, seed=0)
    _, b = kept.predict(frame, actions, num_steps=3, seed=0)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-4, atol=1e-4)


def test_out_is_a_new_folder_and_a_stopped_run_leaves_none(files, tmp_path, monkeypatch):
    """Converting into a model folder mixed the two models (Pusher's start frames and decoder beside Cosmos' weights;
    a stopped re-conversion kept the old prompt embeddings and loaded); a stop mid-write left half a folder."""
    import worldcache.convert as conv

    f = files["2.5"]
    for taken in (f["out"], f["src"]):  # a model folder; a file
        with pytest.raises(CheckpointError, match=f"{taken}: is (not empty|a file): convert writes a whole model "
                                                  "folder.*give a new --out"):
            convert(f["src"], files["vae"], files["embeds"], taken, height=32, width=48)
    (tmp_path / "empty").mkdir()  # an empty folder is fine (made beforehand, a mount point), `.` too
    monkeypatch.chdir(tmp_path / "empty")
    convert(f["src"], files["vae"], files["embeds"], ".", height=32, width=48)
    assert WorldModel.from_pretrained(tmp_path / "empty").spec.name == "cosmos-action-2.5"
    assert not [p for p in (tmp_path / "empty").iterdir() if p.name.startswith(".")]  # no partial folder left

    def stop(*a, **k):
        raise KeyboardInterrupt

    (tmp_path / "kept").mkdir()  # an empty folder given stays, empty
    for owner, name in ((conv, "write_safetensors_sharded"), (AutoencoderKLWan, "save_pretrained")):  # first; last
        with monkeypatch.context() as m:
            m.setattr(owner, name, stop)
            for out in (tmp_path / "sub" / "o", tmp_path / "kept"):
                with pytest.raises(KeyboardInterrupt):
                    convert(f["src"], files["vae"], files["embeds"], out, height=32, width=48)
        assert list((tmp_path / "sub").iterdir()) == [], name  # no `o`, no partial folder beside it
        assert list((tmp_path / "kept").iterdir()) == [], name


def test_unreadable_files_say_what_they_are(files, tmp_path):
    import io

    data = files["2.5"]["src"].read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(1000))  # weights_only: "Unsupported operand"
    for name in ("trunc.pt", "empty.pt", "noise.pt"):  # unpickling would not help: no --unsafe-pickle hint
        with pytest.raises(CheckpointError, match=rf"{name}: not a readable torch checkpoint \(\d+ bytes; truncated "
                                                  r"or corrupt\?\): \w+: .") as e:
            load_torch(tmp_path / name)
        assert "unsafe-pickle" not in str(e.value) and "\n" not in str(e.value)
    # TransformerEngine's _extra_state as a BytesIO: what was refused, in one line, without torch's advice
    state = official_state("2.5")
    state["net.blocks.0.self_attn.output_proj._extra_state"] = io.BytesIO(b"te")
    torch.save(state, tmp_path / "te.pt")
    with pytest.raises(CheckpointError) as e:
        load_torch(tmp_path / "te.pt")
    assert str(e.value) == (f"{tmp_path / 'te.pt'}: holds objects other than tensors, which weights_only refuses "
                            f"(Unsupported global: GLOBAL _io.BytesIO was not an allowed global by default.). If you "
                            f"trust the file, --unsafe-pickle loads it with weights_only=False, which runs code stored "
                            f"in it.")
    assert "blocks.0.self_attn.output_proj._extra_state" in make_plan(
        strip_net(load_torch(tmp_path / "te.pt", unsafe_pickle=True))).dropped
    # a wrapper's prefix flattened into the keys
    with pytest.raises(CheckpointError, match=r"keys start with 'model\.' before NVIDIA's 'net\.' \(e\.g\. model\.net\."):
        strip_net({f"model.{k}": v for k, v in official_state("2.5").items()})
    diffusers_keys = {"transformer_blocks.0.ff.net.0.proj.weight": torch.zeros(1)}  # no prefix, only a ".net."
    assert strip_net(diffusers_keys) == diffusers_keys
    # the official file given where a converted folder goes
    with pytest.raises(CheckpointError, match="a file, not a model folder .*`worldcache convert` makes a folder"):
        WorldModel.from_pretrained(files["2.5"]["src"])


def test_a_forced_variant_says_which_the_file_is():
    per_frame = strip_net(official_state("2.5"))  # fc1 takes 4 x 7 = 28
    with pytest.raises(CheckpointError, match=r"^--variant 2: action_embedder_B_D\.fc1 would take 84 inputs \(12 x 7, "
                                              r"the whole chunk\), the file's takes 28: the file's fits variant 2.5 "
                                              r"\(4 x 7 per latent frame\)$"):
        make_plan(per_frame, "2")
    with pytest.raises(CheckpointError, match=r"^--variant 2.5: .* the file's takes 84: the file's fits variant 2 "):
        make_plan(strip_net(official_state("2")), "2.5")
    with pytest.raises(CheckpointError, match=r"the file's takes 28; --action-dim or --chunk\?$"):
        make_plan(per_frame, "2.5", action_dim=6)

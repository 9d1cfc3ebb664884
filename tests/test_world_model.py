"""WorldModel: checkpoint round trip and errors, the trainer on a small store, action conditioning."""
import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from worldcache.cache import make_policy
from worldcache.rollouts.store import EpisodeStore
from worldcache.world_model import CheckpointError, WorldModel, WorldModelSpec

SPEC = WorldModelSpec(height=32, width=40, chunk=4, action_dim=7, action_low=[-2.0] * 7, action_high=[2.0] * 7)
ARCH = dict(hidden_heads=2, head_dim=16, num_layers=2, vae_base_dim=8)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    model = WorldModel.build(SPEC, **ARCH, seed=1)
    with torch.no_grad():  # the action embedder starts as a no-op; give it weight so actions matter
        for p in model.dit.cond_embedder.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(path)
    return path


def inputs(batch=1, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (batch, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    return frame, rng.uniform(-2, 2, (batch, SPEC.chunk, SPEC.action_dim)).astype(np.float32)


def test_save_load_round_trip_identical_predictions(tiny_ckpt, tmp_path):
    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs()
    frames, out = model.predict(frame, actions, num_steps=4, seed=3)
    assert frames.shape == (1, SPEC.chunk, SPEC.height, SPEC.width, 3) and frames.dtype == torch.uint8
    assert len(out.records) == 4
    # the new frames: the window's decode without its first frame (the conditioning latent frame's one); no_grad
    # as in predict (the VAE's fast kernels round a few values otherwise)
    with torch.no_grad():
        window = model.decode(out.latents)
    assert window.shape[1] == 1 + SPEC.chunk and torch.equal(frames, window[:, 1:])
    model.save_pretrained(tmp_path / "again")
    again, _ = WorldModel.from_pretrained(tmp_path / "again").predict(frame, actions, num_steps=4, seed=3)
    assert torch.equal(frames, again)


def test_predictions_depend_on_actions_and_seed(tiny_ckpt):
    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs()
    a, _ = model.predict(frame, actions, num_steps=4, seed=0)
    b, _ = model.predict(frame, -actions, num_steps=4, seed=0)
    c, _ = model.predict(frame, actions, num_steps=4, seed=1)
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_cache_policy_applies_to_predictions(tiny_ckpt):
    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs(batch=2)
    frames, out = model.predict(frame, actions, num_steps=10, policy=make_policy("worldcache", threshold=5.0))
    assert frames.shape[0] == 2 and out.computed_fraction < 1.0


def test_seeds_that_do_not_fit_are_clear_errors(tiny_ckpt, tmp_path):
    from worldcache.train import TrainConfig, Trainer

    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs()
    two = (np.repeat(frame, 2, 0), np.repeat(actions, 2, 0))
    with pytest.raises(ValueError, match="1 seeds for a batch of 2"):
        model.predict(*two, num_steps=2, seed=[0])
    with pytest.raises(ValueError, match="rollout seed must be an int"):
        model.rollout(frame, actions, num_steps=2, seed=None)
    with pytest.raises(ValueError, match="rollout seed must be an int"):
        model.rollout(*two, num_steps=2, seed=[0, 1.5])
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        model.rollout(*two, num_steps=2, seed=[0, 1, 2])
    # episodes shorter than a chunk: said before training, not inside numpy's sampling
    store = EpisodeStore.create(tmp_path / "short.zarr")
    t = SPEC.chunk - 1
    store.write_episode("ep0", np.zeros((t + 1, 32, 40, 3), np.uint8), np.zeros((t, 7), np.float32),
                        np.zeros(t, np.float32), np.zeros(t, bool), np.zeros(t, bool))
    with pytest.raises(ValueError, match="no training episode has 4 steps"):
        Trainer(TrainConfig(data=str(tmp_path / "short.zarr"), out=str(tmp_path / "r"), holdout=0.0,
                            stages=("vae", "dit")), model=WorldModel.build(SPEC, **ARCH))
    # the decoder stage (in the default stages) reads states: a store without them is refused before the VAE and
    # DiT stages have run, not after
    with pytest.raises(ValueError, match="1 of 1 episodes have no 'state' extra"):
        Trainer(TrainConfig(data=str(tmp_path / "short.zarr"), out=str(tmp_path / "r"), holdout=0.0),
                model=WorldModel.build(SPEC, **ARCH))


def test_rollout_chains_chunks(tiny_ckpt):
    """Chunk c of a rollout is exactly one prediction from the last frame of chunk c-1 (the start frame for c=0)
    with that chunk's actions and noise seed `seed + c`: bit for bit the same frames."""
    model = WorldModel.from_pretrained(tiny_ckpt)
    k = SPEC.chunk
    frame, _ = inputs()
    actions = np.random.default_rng(1).uniform(-2, 2, (1, 3 * k, SPEC.action_dim)).astype(np.float32)
    frames, outs = model.rollout(frame, actions, num_steps=3, seed=7)
    assert frames.shape == (1, 3 * k, SPEC.height, SPEC.width, 3) and frames.dtype == torch.uint8
    assert len(outs) == 3 and all(len(o.records) == 3 for o in outs)
    prev = frame
    for c in range(3):
        chunk, out = model.predict(prev, actions[:, c * k:(c + 1) * k], num_steps=3, seed=7 + c)
        assert torch.equal(frames[:, c * k:(c + 1) * k], chunk), c
        assert torch.equal(outs[c].latents, out.latents), c
        prev = frames[:, (c + 1) * k - 1].numpy()
    assert not torch.equal(frames[:, :k], frames[:, k:2 * k])  # the chunks differ: the comparison has teeth
    # one seed per sample: each sample is the rollout with its own seed, whatever the batch holds beside it
    two = np.repeat(frame, 2, 0), np.repeat(actions[:, :2 * k], 2, 0)
    both, _ = model.rollout(*two, num_steps=3, seed=[7, 40])
    alone = torch.cat([frames[:, :2 * k], model.rollout(frame, actions[:, :2 * k], num_steps=3, seed=40)[0]])
    gap = lambda x, y: (x.int() - y.int()).abs()  # noqa: E731
    assert gap(both, alone).max() <= 1  # up to rounding: a batch of 2 sums in another order than a batch of 1
    assert gap(both[0], both[1]).float().mean() > 20 * gap(both, alone).float().mean()  # same inputs, other noise
    # the default seed is 0: chunk 0 with seed 0, chunk 1 with seed 1
    frames0, _ = model.rollout(frame, actions[:, :2 * k], num_steps=3)
    assert torch.equal(frames0[:, :k], model.predict(frame, actions[:, :k], num_steps=3, seed=0)[0])
    assert torch.equal(frames0[:, k:], model.predict(frames0[:, k - 1].numpy(), actions[:, k:2 * k], num_steps=3,
                                                     seed=1)[0])


def test_action_embedder_maps_each_group_of_four_actions_to_its_latent_frame():
    """REAL_MODEL.md §4: actions (B, k, A) -> (B, k/4, 4A), 4 consecutive actions per generated latent frame,
    row-major; each MLP is fc1 -> GELU(tanh) -> fc2; zero rows for the conditioning latent frame(s), put in after
    the MLPs (no bias leaks there). With chunk 8 there are two groups, so their order and layout show."""
    import torch.nn.functional as F

    from worldcache.world_model import ActionEmbedder

    a_dim, hidden, d = 3, 10, 6
    torch.manual_seed(0)
    emb = ActionEmbedder(4 * a_dim, hidden, d)
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_(0, 0.5)
    actions = torch.randn(2, 8, a_dim, generator=torch.Generator().manual_seed(1))

    def mlp(m, x):  # written out, not the module's forward
        return F.gelu(x @ m.fc1.weight.T + m.fc1.bias, approximate="tanh") @ m.fc2.weight.T + m.fc2.bias

    with torch.no_grad():
        for n_cond in (1, 2):
            a3d, ad = emb(actions, n_cond + 2)
            assert a3d.shape == (2, n_cond + 2, 3 * d) and ad.shape == (2, n_cond + 2, d)
            for out, m in ((a3d, emb.action_embedder_B_3D), (ad, emb.action_embedder_B_D)):
                assert torch.equal(out[:, :n_cond], torch.zeros_like(out[:, :n_cond]))
                for g in range(2):  # group g = actions 4g..4g+3, flattened action by action
                    want = mlp(m, actions[:, 4 * g:4 * g + 4].flatten(1))
                    torch.testing.assert_close(out[:, n_cond + g], want, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="2 action groups for 1 latent frames"):
            emb(actions, 1)


def test_decoded_frames_are_rounded_or_truncated_as_nvidias_scripts_make_them(tiny_ckpt):
    """A converted checkpoint (`truncate_pixels`) decodes as NVIDIA's action inference does,
    (clamp((x + 1) / 2, 0, 1) * 255).to(uint8): truncated, half a grey level darker on average; ours round."""
    model = WorldModel.from_pretrained(tiny_ckpt)
    latents = torch.randn(1, 16, 2, SPEC.height // 4, SPEC.width // 4, generator=torch.Generator().manual_seed(0))
    x = model.vae.decode((latents * model.latents_std + model.latents_mean)).sample.float().permute(0, 2, 3, 4, 1)
    rounded = model.decode(latents)
    model.spec = dataclasses.replace(model.spec, truncate_pixels=True)
    truncated = model.decode(latents)
    assert torch.equal(rounded, ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    assert torch.equal(truncated, (((x + 1) / 2).clamp(0, 1) * 255).floor().to(torch.uint8))
    diff = rounded.int() - truncated.int()
    assert set(diff.unique().tolist()) == {0, 1} and 0.4 < diff.float().mean() < 0.6


@pytest.mark.parametrize("bad_frame, bad_actions, match", [
    (np.zeros((1, 32, 40, 3), np.float32), None, "uint8"),
    (None, np.zeros((1, 3, 7), np.float32), r"\(batch, 4, 7\)"),
    (None, np.full((1, 4, 7), np.nan, np.float32), "NaN"),
])
def test_predict_rejects_bad_input(tiny_ckpt, bad_frame, bad_actions, match):
    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs()
    with pytest.raises(ValueError, match=match):
        model.predict(frame if bad_frame is None else bad_frame, actions if bad_actions is None else bad_actions)


def test_inputs_are_checked_and_taken_from_any_tensor(tiny_ckpt):
    model = WorldModel.from_pretrained(tiny_ckpt)
    frame, actions = inputs(batch=2)
    ref, _ = model.predict(frame, actions, num_steps=2, seed=[1, 2])
    bf16, _ = model.predict(torch.from_numpy(frame), torch.from_numpy(actions).bfloat16(), num_steps=2, seed=[1, 2])
    near = torch.from_numpy(actions).bfloat16().float().numpy()  # what bf16 actions hold
    np.testing.assert_array_equal(bf16, model.predict(frame, near, num_steps=2, seed=[1, 2])[0])
    with pytest.raises(ValueError, match="num_steps must be >= 1"):  # not the default 35 in silence
        model.predict(frame, actions, num_steps=0)
    with pytest.raises(ValueError, match="frames must be uint8"):  # floats in [0, 1] read as near-black
        model.encode(torch.from_numpy(frame[:, None]).float() / 255)
    with pytest.raises(ValueError, match="actions must be"):
        model.rollout(frame, actions[:, :0], num_steps=2)
    a, _ = model.rollout(frame, actions, num_steps=2, seed=np.array([1, 2]))  # numpy seeds, one per sample
    np.testing.assert_array_equal(a, ref)


def test_specs_the_network_cannot_run_are_refused(tiny_ckpt, tmp_path):
    for bad, match in [(dict(fps=0.0), "fps"), (dict(chunk=0), "chunk"),
                       (dict(action_low=[3.0] * 7), "must not exceed")]:
        with pytest.raises(CheckpointError, match=match):
            dataclasses.replace(SPEC, **bad).check()
    with pytest.raises(CheckpointError, match="must be divisible by 8"):  # 4x VAE, then 2x2 patches
        WorldModel.build(dataclasses.replace(SPEC, height=36), **ARCH)
    for edit in (dict(chunk=16), dict(height=64, width=80)):  # more latent frames / tokens than the transformer's
        folder = tmp_path / f"edit{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_ckpt, folder)
        spec = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**spec, **edit}))
        with pytest.raises(CheckpointError, match="model.json: its latent grid .* max_size"):
            WorldModel.from_pretrained(folder)


def test_checkpoint_errors_name_the_file(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        WorldModel.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "missing"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "action_embedder.safetensors").unlink()
    with pytest.raises(CheckpointError, match="action_embedder.safetensors"):
        WorldModel.from_pretrained(broken)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, corrupt)
    (corrupt / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="transformer"):
        WorldModel.from_pretrained(corrupt)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_ckpt, mismatch)
    spec = json.loads((mismatch / "model.json").read_text())
    spec.update(action_dim=6, action_low=[-1.0] * 6, action_high=[1.0] * 6)
    (mismatch / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="action_embedder.safetensors.*action_dim 6"):
        WorldModel.from_pretrained(mismatch)
    scale = tmp_path / "scale"
    shutil.copytree(tiny_ckpt, scale)
    spec = json.loads((scale / "model.json").read_text())
    spec.update(spatial_compression=8)
    (scale / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="vae/config.json.*compresses"):
        WorldModel.from_pretrained(scale)
    # a weight missing from, or one too many in, a safetensors file: diffusers only logs it and, for a missing one,
    # leaves the parameter on the meta device, which failed later in `.to(device)` without naming the file
    for sub, edit, why in (("transformer", lambda t: t.pop(next(iter(t))), "missing keys"),
                           ("vae", lambda t: t.update(extra=torch.zeros(1)), "unexpected keys")):
        bad = tmp_path / f"weights_{sub}"
        shutil.copytree(tiny_ckpt, bad)
        file = bad / sub / "diffusion_pytorch_model.safetensors"
        tensors = load_file(str(file))
        edit(tensors)
        save_file(tensors, str(file))
        with pytest.raises(CheckpointError, match=f"{sub}: weights do not fit its config.json: {why}"):
            WorldModel.from_pretrained(bad)
    badjson = tmp_path / "badjson"
    shutil.copytree(tiny_ckpt, badjson)
    (badjson / "model.json").write_text('{"height": 32, "colour": 1}')
    with pytest.raises(CheckpointError, match="colour"):
        WorldModel.from_pretrained(badjson)


def test_guidance_scale_up_to_one_warns_on_load_and_guides(tiny_ckpt, tmp_path):
    # before 2026-12-06 a model.json's 1.0 meant no guidance (diffusers' gate); now any g != 0 guides, as NVIDIA's
    old = tmp_path / "old"
    shutil.copytree(tiny_ckpt, old)
    spec = json.loads((old / "model.json").read_text())
    assert spec["guidance_scale"] == 0.0  # the default: none
    (old / "model.json").write_text(json.dumps({**spec, "guidance_scale": 1.0}))
    with pytest.warns(UserWarning, match="guidance_scale 1.0 now guides"):
        model = WorldModel.from_pretrained(old)
    frame, actions = inputs()
    _, out = model.predict(frame, actions, num_steps=2, seed=3)
    assert [r.branch for r in out.records] == ["cond", "uncond"] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, out = WorldModel.from_pretrained(tiny_ckpt).predict(frame, actions, num_steps=2, seed=3)
    assert [r.branch for r in out.records] == ["cond"] * 2


def write_training_store(path):
    store = EpisodeStore.create(path, attrs={"fps": 20.0})
    rng = np.random.default_rng(0)
    for i in range(3):
        t = 12
        store.write_episode(f"ep{i}", rng.integers(0, 256, (t + 1, 32, 40, 3), dtype=np.uint8),
                            rng.uniform(-2, 2, (t, 7)).astype(np.float32), np.zeros(t, np.float32),
                            np.zeros(t, bool), np.zeros(t, bool),
                            extras={"state": rng.normal(size=(t + 1, 23)).astype(np.float32)})


def test_trainer_runs_resumes_and_exports(tmp_path, capsys):
    from worldcache.train import TrainConfig, Trainer, slow_bf16

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), vae_steps=3, dit_steps=3,
                      decoder_steps=3, vae_batch=2, dit_batch=2, save_every=2, holdout=0.34)
    model = WorldModel.build(SPEC, **ARCH)
    trainer = Trainer(cfg, model=model)
    assert len(trainer.train_eps) == 2 and len(trainer.held_eps) == 1
    out = trainer.run()
    record = json.loads((out / "training.json").read_text())
    assert record["vae"]["steps"] == 3 and record["dit"]["steps"] == 3 and np.isfinite(record["dit"]["final_loss"])
    assert record["decoder"]["steps"] == 3 and np.isfinite(record["decoder"]["heldout_errors_cm"]["object"]["mean_cm"])
    fixed = record["dit"]["fixed_sigma_loss"]  # every window (fewer than eval_windows): 2 x 9 training, 1 x 9 held out
    assert (fixed["train_windows"], fixed["heldout_windows"]) == (18, 9)
    assert np.isfinite([fixed["train"], fixed["heldout"]]).all()
    assert np.load(out / "start_frames.npy").shape == (3, 32, 40, 3)  # the episodes' reset frames
    first_state = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert first_state["step"] == 3 and len(first_state["losses"]) == 3
    # final_loss: the mean of the last 50 step losses (here all 3)
    assert record["dit"]["final_loss"] == pytest.approx(sum(first_state["losses"]) / 3, rel=1e-12)
    assert torch.load(tmp_path / "run" / "state_decoder.pt", weights_only=False)["step"] == 3  # resumable too
    # resume: a longer schedule continues from the saved step instead of starting over
    cfg.dit_steps, cfg.stages, cfg.bf16 = 5, ("dit",), True  # also exercises the bf16 autocast path
    assert json.loads((out / "training.json").read_text())["vae"]["steps"] == 3  # earlier stages' record kept
    capsys.readouterr()
    Trainer(cfg, model=WorldModel.build(SPEC, **ARCH), command="worldcache train --stages dit").run()
    commands = json.loads((out / "training.json").read_text())["commands"]  # both commands, in order
    assert [c["stages"] for c in commands] == [["vae", "dit", "decoder"], ["dit"]]
    assert commands[1]["command"] == "worldcache train --stages dit"
    err = capsys.readouterr().err
    assert f"train dit: resuming at step 3 ({tmp_path / 'run' / 'state_dit.pt'})" in err  # said, not only the bar
    warned = "warning: --bf16 on a CPU without AVX512-BF16 or AMX" in err
    assert warned == (slow_bf16(torch.device("cpu")) is not None)  # this machine's CPU decides which
    losses = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)["losses"]
    assert len(losses) == 5 and np.isfinite(losses).all() and losses[:3] == first_state["losses"]
    resumed = json.loads((out / "training.json").read_text())["dit"]
    assert resumed["final_loss"] == pytest.approx(sum(losses) / 5, rel=1e-12)  # the resumed steps' losses too
    # a starting checkpoint whose action embedder and state decoder are far from what a fresh start gives: its
    # action weights N(0, 0.2) (a reused one would not stay below 0.1), its decoder's weights moved by N(0, 0.5)
    from worldcache.state_decoder import StateDecoder

    far = tmp_path / "far"
    shutil.copytree(out, far)
    g = torch.Generator().manual_seed(3)
    emb = load_file(str(far / "action_embedder.safetensors"))
    save_file({k: (torch.randn(v.shape, generator=g) * 0.2).to(v.dtype) for k, v in emb.items()},
              str(far / "action_embedder.safetensors"))
    far_dec = StateDecoder.load(far)
    with torch.no_grad():
        for p in far_dec.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    far_dec.save(far)
    WorldModel.from_pretrained(out).predict(*inputs(), num_steps=2)
    # --init-from: the DiT stage starts from that checkpoint's transformer + VAE with a fresh action embedder.
    init = TrainConfig(data=cfg.data, out=str(tmp_path / "init"), stages=("dit",), dit_steps=2, dit_batch=2,
                       holdout=0.34, init_from=str(far))
    src = WorldModel.from_pretrained(out)
    moved = Trainer(init).run()
    new = WorldModel.from_pretrained(moved)
    assert torch.equal(new.vae.encoder.conv_in.weight, src.vae.encoder.conv_in.weight)  # VAE kept
    assert not torch.equal(new.dit.transformer.proj_out.weight, src.dit.transformer.proj_out.weight)  # trained
    fc2 = new.dit.cond_embedder.action_embedder_B_D.fc2.weight
    assert 0 < fc2.abs().max() < 0.1  # started at zero (a no-op), then trained: not the source's weights
    assert (moved / "state_decoder.safetensors").read_bytes() == (far / "state_decoder.safetensors").read_bytes()
    # --continue-from: every weight of that checkpoint, its state decoder too
    cont = TrainConfig(data=cfg.data, out=str(tmp_path / "cont"), stages=("dit",), dit_steps=2, dit_batch=2,
                       holdout=0.34, continue_from=str(out))
    went_on = WorldModel.from_pretrained(Trainer(cont).run())
    assert torch.equal(went_on.vae.encoder.conv_in.weight, src.vae.encoder.conv_in.weight)
    assert not torch.equal(went_on.dit.transformer.proj_out.weight, src.dit.transformer.proj_out.weight)
    assert (tmp_path / "cont/model/state_decoder.safetensors").read_bytes() == \
        (out / "state_decoder.safetensors").read_bytes()
    # one writer per folder: a run into an --out another run holds is refused
    import fcntl

    with open(tmp_path / "run" / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)  # as a holder writes who it is
        held.write("pid 1 on elsewhere")
        held.flush()
        with pytest.raises(ValueError, match=r"another training run is writing into it \(pid 1 on elsewhere\)"):
            Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    # the decoder stage after --continue-from continues that checkpoint's decoder (one step: still near it, where a
    # fresh start would be ~0.5 away)
    dec = TrainConfig(data=cfg.data, out=str(tmp_path / "dec"), stages=("decoder",), decoder_steps=1,
                      holdout=0.34, continue_from=str(far))
    went_on = Trainer(dec).run()
    assert json.loads((went_on / "training.json").read_text())["decoder"]["started_from"] == str(far)
    a, b = StateDecoder.load(far).state_dict(), StateDecoder.load(went_on).state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=0.05) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # and trained
    # each record holds the record of the checkpoint it started from: the whole lineage
    first = json.loads((out / "training.json").read_text())
    assert json.loads((moved / "training.json").read_text())["started_from"] == {"checkpoint": str(far),
                                                                                  "record": first}
    went = json.loads((tmp_path / "cont/model/training.json").read_text())
    assert went["started_from"] == {"checkpoint": str(out), "record": first} and went["dit"]["steps"] == 2
    assert "started_from" not in first
    with pytest.raises(ValueError, match="give one"):  # two starting checkpoints: which one's weights is unclear
        Trainer(dataclasses.replace(cont, init_from=str(out)))
    # make-data's store: the export records its scene, whatever the starting checkpoint's (this one's: none)
    assert src.spec.scene is None
    scene = {"camera": {"distance": 2.25, "lookat": [0.3, -0.25, -0.3]}, "controller": {"kp": 60.0},
             "supersample": 2}
    EpisodeStore(cfg.data, mode="a").attrs["generator"] = {**scene, "fps": 20.0, "explore": "bounded"}
    capsys.readouterr()
    v2 = Trainer(dataclasses.replace(cont, out=str(tmp_path / "v2"), dit_steps=1)).run()
    assert WorldModel.from_pretrained(v2).spec.scene == scene
    # and the starting checkpoint's decoder, of v1's view, is left out (the env would refuse the export), saying so
    assert StateDecoder.exists(out) and not StateDecoder.exists(v2) and not (v2 / "state_decoder.json").exists()
    err = capsys.readouterr().err
    assert f"warning: {out}'s state decoder learned another scene than the model's" in err
    assert "'camera': (" in err and "'controller': (" in err and "train one with --stages decoder" in err


def _timed_run(budget, seconds_per_step) -> tuple[dict, int, float]:
    """Drive a StepBudget as Trainer._run does, on a simulated clock: (counts set at steps, last step, time)."""
    counts, total, step, now = {}, 10**9, 0, 0.0
    while step < total:
        step += 1
        now += seconds_per_step(step)
        if (count := budget.update(step, now)) is not None:
            counts[step] = total = count
    return counts, step, now


def test_step_budget_sets_the_count_again_from_the_recent_rate():
    from worldcache.train import StepBudget

    # 20 slow steps (another job shares the cores), then 1 s a step: first 20 + 500 s x 19/95 steps/s = 120, then,
    # every 5 % of the 600 s (30 s), from the rate since: 50 + 470 x 1 = 520, so the run ends at its budget
    counts, step, now = _timed_run(StepBudget(10, 0.0, 0), lambda s: 5.0 if s <= 20 else 1.0)
    assert list(counts.items())[:3] == [(20, 120), (50, 520), (80, 520)] and (step, now) == (520, 600.0)
    # fast steps: a count every 50 steps (before 30 s pass): 20 + 590 x 2 = 1200, 70 + 565 x 2 = 1200, ...
    counts, step, now = _timed_run(StepBudget(10, 0.0, 0), lambda s: 0.5)
    assert list(counts.items())[:3] == [(20, 1200), (70, 1200), (120, 1200)] and (step, now) == (1200, 600.0)
    # the machine slows 100x after the first count (600): each step past 30 s counts again, 21 + 480 x 0.01 = 25,
    # and the run stops at 25 steps (520 s) instead of running 600 steps of 100 s
    counts, step, now = _timed_run(StepBudget(10, 0.0, 0), lambda s: 1.0 if s <= 20 else 100.0)
    assert counts == {20: 600, 21: 25, 22: 25, 23: 25, 24: 25, 25: 25} and (step, now) == (25, 520.0)
    # a budget begun 300 s before the first step (the DiT's preparation): 300 s left at 1 step/s
    counts, step, now = _timed_run(StepBudget(10, -300.0, 0), lambda s: 1.0)
    assert counts[20] == 20 + 280 and step == 300


def test_slow_bf16_names_cpus_that_emulate_bf16(monkeypatch):
    from worldcache.train import slow_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    why = slow_bf16(torch.device("cpu"))
    assert why.startswith("--bf16 on a CPU without AVX512-BF16 or AMX (") and why.endswith("drop --bf16")
    assert slow_bf16(torch.device("cuda")) is None  # GPUs have bf16 matmuls (a device object needs no GPU)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert slow_bf16(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert slow_bf16(torch.device("cpu")) is None


def test_vae_decoder_only_trains_the_decoder_and_keeps_the_latents_a_trained_dit_reads(tmp_path, tiny_ckpt):
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("vae",), vae_steps=2,
                      vae_batch=2, holdout=0.34, continue_from=str(tiny_ckpt), vae_decoder_only=True)
    src, new = WorldModel.from_pretrained(tiny_ckpt), WorldModel.from_pretrained(Trainer(cfg).run())
    before, after = src.state_dict(), new.state_dict()
    kept = [k for k in before if not k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    for k in kept:  # the encoder, the latent statistics, the DiT: as they were
        assert torch.equal(before[k], after[k]), k
    assert any(k.startswith("vae.encoder.") for k in kept) and any("latents_" in k for k in kept)
    assert not torch.equal(before["vae.decoder.conv_out.weight"], after["vae.decoder.conv_out.weight"])
    frames = torch.from_numpy(inputs(2)[0])[:, None]
    torch.testing.assert_close(new.encode(frames), src.encode(frames), rtol=0, atol=0)
    assert json.loads((tmp_path / "run" / "model" / "training.json").read_text())["vae"]["decoder_only"] is True
    with pytest.raises(ValueError, match="start from a trained VAE"):  # a random encoder kept would be useless
        Trainer(dataclasses.replace(cfg, continue_from=None))


def test_the_export_after_the_vae_stage_holds_the_start_frames(tmp_path, tiny_ckpt, monkeypatch):
    # a run killed in its DiT stage leaves OUT/model as the VAE stage wrote it: an env of it needs its reset frames
    from worldcache.envs.cosmos_env import START_FRAMES
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_dit", killed)
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("vae", "dit"),
                      vae_steps=1, vae_batch=2, holdout=0.34, continue_from=str(tiny_ckpt))
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).run()
    store = EpisodeStore(tmp_path / "data.zarr", mode="r")
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "model" / START_FRAMES),
                                  np.stack([store[e]["obs"][0] for e in store.episode_ids()]))


def test_handover_loss_is_the_squared_conditioning_error_and_trains_only_the_decoder(tmp_path, tiny_ckpt):
    from worldcache.quality import conditioning_error
    from worldcache.train import TrainConfig, Trainer, handover_loss

    m = WorldModel.from_pretrained(tiny_ckpt)
    k, rng = m.spec.chunk, np.random.default_rng(3)
    real = rng.integers(0, 256, (2, k + 1, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    own = real.copy()
    own[:, -1] = rng.integers(0, 256, own[:, -1].shape, dtype=np.uint8)  # only the hand-over frame differs
    px = lambda f: torch.from_numpy(f).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # noqa: E731
    with torch.no_grad():
        got = handover_loss(m, px(own), px(real))
        # the same units as the rollout's conditioning error (its square) at the one hand-over of 2 predicted chunks
        want = conditioning_error(m, np.concatenate([own[:, 1:]] * 2, 1), np.concatenate([real[:, 1:]] * 2, 1))
    assert len(want) == 1 and float(got) == pytest.approx(want[0] ** 2, rel=1e-5)
    assert float(got) > 1e-4 and float(handover_loss(m, px(real), px(real)).detach()) < 1e-12
    rec = px(own).requires_grad_()
    handover_loss(m, rec, px(real)).backward()
    assert rec.grad[:, :, :-1].abs().sum() == 0 and rec.grad[:, :, -1].abs().sum() > 0  # the last frame alone

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("vae",), vae_steps=2,
                      vae_batch=2, holdout=0.34, continue_from=str(tiny_ckpt), vae_decoder_only=True,
                      vae_handover=1.0)
    new = WorldModel.from_pretrained(Trainer(cfg).run())
    for key, v in m.state_dict().items():  # the encoder the loss backpropagates through stays as it was
        if not key.startswith(("vae.decoder.", "vae.post_quant_conv.")):
            assert torch.equal(v, new.state_dict()[key]), key
    assert json.loads((tmp_path / "run" / "model" / "training.json").read_text())["vae"]["handover"] == 1.0
    with pytest.raises(ValueError, match=r"give vae_decoder_only \(--vae-decoder-only\) too"):
        Trainer(dataclasses.replace(cfg, vae_decoder_only=False))
    with pytest.raises(ValueError, match="vae_handover must be >= 0"):
        Trainer(dataclasses.replace(cfg, vae_handover=-1.0))


def test_a_stage_resumed_keeps_the_other_stages_weights_and_wrong_starts_are_refused(tmp_path, tiny_ckpt, capsys):
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    data = str(tmp_path / "data.zarr")
    cfg = TrainConfig(data=data, out=str(tmp_path / "run"), stages=("vae", "dit"), vae_steps=2, dit_steps=2,
                      vae_batch=2, dit_batch=2, holdout=0.34, eval_windows=0)
    out = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    dit = WorldModel.from_pretrained(out).dit.state_dict()
    # the VAE stage again, finished: its resume state must not bring back the DiT it was saved beside (untrained)
    cfg.stages = ("vae",)
    capsys.readouterr()
    Trainer(cfg).run()
    after = WorldModel.from_pretrained(out).dit.state_dict()
    assert all(torch.equal(dit[k], after[k]) for k in dit)
    assert "warning" not in capsys.readouterr().err  # nothing trained: the DiT still reads its VAE's latents
    # more VAE steps after the DiT (in a copy of the folder): the export's DiT learned the old latents, which is said
    shutil.copytree(tmp_path / "run", tmp_path / "more")
    Trainer(dataclasses.replace(cfg, out=str(tmp_path / "more"), vae_steps=3)).run()
    assert "DiT learned the latents of the VAE before this run's VAE steps: train it again" in capsys.readouterr().err
    # the advice works: the DiT state of the old latents is named with its remedy, and once removed the stage trains
    more = dataclasses.replace(cfg, out=str(tmp_path / "more"), stages=("dit",))
    with pytest.raises(ValueError, match=r"state_dit\.pt: its DiT learned the latents of the VAE before this --out's "
                                         r"last VAE steps; to train it on this VAE's, remove"):
        Trainer(more).run()
    (tmp_path / "more" / "state_dit.pt").unlink()
    Trainer(more).run()
    # a VAE stage alone into a new --out: the exported DiT is untrained, which is said
    Trainer(dataclasses.replace(cfg, out=str(tmp_path / "vae_only"))).run()
    assert "DiT is untrained (no DiT stage has run into this --out)" in capsys.readouterr().err
    # a state saved the old way (the whole model): the stage's part of it is resumed
    path = tmp_path / "run" / "state_dit.pt"
    st = torch.load(path, weights_only=False)
    whole = {f"dit.{k}": v for k, v in st.pop("module").items()}
    torch.save({**st, "model": {**whole, "vae.bogus": torch.zeros(1)}}, path)
    cfg.stages, cfg.dit_steps = ("dit",), 3
    Trainer(cfg).run()
    assert torch.load(path, weights_only=False)["step"] == 3
    # a DiT stage with no trained VAE anywhere: refused, not exported as trained
    with pytest.raises(ValueError, match="start from a trained model: .* holds none"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "fresh"), stages=("dit",)))
    with pytest.raises(ValueError, match="start from a trained model"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "fresh"), stages=("decoder",)))
    # OUT/model trained from nothing, this command from another checkpoint: refused, not silently mixed
    with pytest.raises(ValueError, match="was trained from no checkpoint, and this command starts from"):
        Trainer(TrainConfig(data=data, out=cfg.out, stages=("dit",), continue_from=str(tiny_ckpt)))
    # data the starting model cannot take
    small = tmp_path / "small.zarr"
    store = EpisodeStore.create(small)
    store.write_episode("e", np.zeros((13, 16, 16, 3), np.uint8), np.zeros((12, 7), np.float32),
                        np.zeros(12, np.float32), np.zeros(12, bool), np.zeros(12, bool))
    with pytest.raises(ValueError, match="16x16 frames and 7-d actions, but the model starting this run takes 32x40"):
        Trainer(TrainConfig(data=str(small), out=str(tmp_path / "s"), stages=("dit",), continue_from=str(tiny_ckpt)))


def test_a_stage_resumes_under_the_other_stages_changed_settings_and_a_refusal_comes_before_encoding(tmp_path,
                                                                                                     capsys):
    """A stage's state is compared with the settings that shape it: the VAE's takes a changed DiT learning rate or
    conditioning noise (it was refused, and 'train into another --out' threw the trained VAE away), the DiT's a
    changed VAE learning rate (its latents are checked by the VAE's fingerprint). A DiT state refused is refused
    before its windows are encoded (minutes on a CPU), and so is --dit-minutes on a step-count state, which
    finished silently without training."""
    import dataclasses

    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("vae", "dit"),
                      vae_steps=2, dit_steps=2, vae_batch=2, dit_batch=2, holdout=0.34, eval_windows=0)
    Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    run = tmp_path / "run"
    Trainer(dataclasses.replace(cfg, stages=("vae",), dit_lr=1e-4, cond_noise=0.3)).run()
    with pytest.raises(ValueError, match=r"was built with other --layers/--heads/--head-dim \(there, now: "
                                         r"\{'num_layers': \(12, 6\)\}\)"):  # else ignored: OUT/model's DiT continues
        Trainer(dataclasses.replace(cfg, stages=("vae",), num_layers=6))
    Trainer(dataclasses.replace(cfg, stages=("dit",), vae_lr=1e-4)).run()
    (run / "dit_windows.pt").unlink()
    for change, match in ((dict(dit_lr=1e-4), r"dit_lr: 0\.0003 there, 0\.0001 now"),
                          (dict(dit_minutes=0.5), r"a run of 2 steps \(--dit-steps\), not a timed one: --dit-minutes "
                                                   r"cannot continue it; give --dit-steps \(more than 2 trains on\)")):
        with pytest.raises(ValueError, match=match):
            Trainer(dataclasses.replace(cfg, stages=("dit",), **change)).run()
        assert not (run / "dit_windows.pt").exists()  # refused before the windows were encoded
    capsys.readouterr()
    Trainer(dataclasses.replace(cfg, stages=("dit",), dit_steps=1)).run()
    assert "the state has 2 steps, more than the 1 asked for: nothing to train" in capsys.readouterr().err


def test_train_refuses_an_out_that_is_a_file_or_a_store_frames_a_new_model_cannot_take_and_leaves_no_folder(
        tmp_path, tiny_ckpt):
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    data = str(tmp_path / "data.zarr")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"--out .*file\.txt: is a file; give a folder"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "file.txt")))
    with pytest.raises(ValueError, match=r"--out .*data\.zarr: is a Zarr store, not a training folder"):
        Trainer(TrainConfig(data=data, out=data))  # its own --data, by a slip
    odd = tmp_path / "odd.zarr"
    store = EpisodeStore.create(odd)
    store.write_episode("e", np.zeros((13, 60, 88, 3), np.uint8), np.zeros((12, 7), np.float32),
                        np.zeros(12, np.float32), np.zeros(12, bool), np.zeros(12, bool))
    with pytest.raises(ValueError, match=r"odd\.zarr: 60x88 frames; a new model takes sizes divisible by 8 .*"
                                         r"make-data --height/--width"):
        Trainer(TrainConfig(data=str(odd), out=str(tmp_path / "o1"), stages=("vae", "dit")))
    # a train run's folder given as a checkpoint: its model/ is named; the refused run made no --out
    Trainer(TrainConfig(data=data, out=str(tmp_path / "run"), stages=("dit",), dit_steps=1, dit_batch=2,
                        eval_windows=0, holdout=0.34, continue_from=str(tiny_ckpt))).run()
    with pytest.raises(CheckpointError, match=r"missing .*; the model of a train run is in its model/ folder: "
                                              r".*run/model$"):
        Trainer(TrainConfig(data=data, out=str(tmp_path / "o2"), stages=("dit",), continue_from=str(tmp_path / "run")))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_resume_refuses_changed_data_or_starting_weights_at_the_same_path(tmp_path, tiny_ckpt):
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    start = tmp_path / "start"
    shutil.copytree(tiny_ckpt, start)
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=2,
                      dit_batch=2, holdout=0.34, eval_windows=0, continue_from=str(start))
    Trainer(cfg).run()
    # a new model's architecture flags mean nothing to a run from a checkpoint: resuming need not repeat them
    Trainer(dataclasses.replace(cfg, num_layers=5, heads=3, head_dim=8)).run()
    cfg.dit_steps = 3
    # other weights at the same path: its state is another start's
    WorldModel.build(SPEC, **ARCH, seed=9).save_pretrained(start)
    with pytest.raises(ValueError, match="start_sha256"):  # the DiT stage: its start (a VAE stage: source_sha256)
        Trainer(cfg).run()
    shutil.rmtree(start)
    shutil.copytree(tiny_ckpt, start)
    EpisodeStore(tmp_path / "data.zarr", mode="a").write_episode(  # one more episode in the same store
        "ep9", np.zeros((13, 32, 40, 3), np.uint8), np.ones((12, 7), np.float32), np.zeros(12, np.float32),
        np.zeros(12, bool), np.zeros(12, bool), extras={"state": np.zeros((13, 23), np.float32)})
    with pytest.raises(ValueError, match=r"was trained on other data than .*data.zarr \(by contents\)"):
        Trainer(cfg).run()


def test_vae_from_is_known_by_the_files_the_model_loads(tmp_path, tiny_ckpt):
    """--vae-from's identity (which a resume compares) is that of its vae/ files as `checkpoint_files` reads them:
    a hidden file (.DS_Store) is not the model's and refuses no resume; another weight file does."""
    from worldcache.rollouts.identity import checkpoint_files, model_sha256
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    start = tmp_path / "start"
    shutil.copytree(tiny_ckpt, start)
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), holdout=0.34,
                      vae_from=str(start))
    vae = {k[len("vae/"):]: v for k, v in checkpoint_files(start).items() if k.startswith("vae/")}
    assert Trainer(cfg).resume["source_sha256"] == [None, model_sha256(vae)]
    (start / "vae" / ".DS_Store").write_bytes(b"finder")
    assert Trainer(cfg).resume["source_sha256"] == [None, model_sha256(vae)]
    (start / "vae" / "extra.json").write_text("{}")
    assert Trainer(cfg).resume["source_sha256"][1] != model_sha256(vae)


def test_commands_into_one_out_never_undo_or_relabel_each_others_work(tmp_path, tiny_ckpt):
    """Stages run in separate commands into one --out: a later command must not replace what an earlier one
    trained (the VAE by --vae-from, the decoder by --continue-from's), resume a DiT over a VAE trained on since, or
    train on other data (the same actions, other frames) under the earlier record."""
    from worldcache.state_decoder import StateDecoder
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    base = dict(data=str(tmp_path / "data.zarr"), holdout=0.34, eval_windows=0, vae_batch=2, dit_batch=2,
                decoder_steps=2)
    # --vae-from starts the VAE stage; a later DiT-only command with it continues the trained VAE
    vae = TrainConfig(**base, out=str(tmp_path / "a"), stages=("vae",), vae_steps=2, vae_from=str(tiny_ckpt))
    trained = WorldModel.from_pretrained(Trainer(vae).run()).vae.state_dict()
    out = Trainer(dataclasses.replace(vae, stages=("dit",), dit_steps=1)).run()
    got = WorldModel.from_pretrained(out).vae.state_dict()
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    # a DiT state over a VAE that trained on since: refused (latents of another encoder)
    with pytest.raises(ValueError, match="its DiT learned the latents of the VAE before this --out.s last VAE steps"):
        Trainer(dataclasses.replace(vae, stages=("vae", "dit"), vae_steps=3, dit_steps=2)).run()
    # the decoder an earlier command trained stays when a later --continue-from command leaves the decoder out
    from worldcache.state_decoder import StateDecoderConfig

    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    StateDecoder(StateDecoderConfig(height=32, width=40, channels=8, keypoints=4, hidden=16)).save(src)
    dec = TrainConfig(**base, out=str(tmp_path / "b"), stages=("decoder",), continue_from=str(src))
    mine = StateDecoder.load(Trainer(dec).run()).state_dict()
    assert any(not torch.equal(StateDecoder.load(src).state_dict()[k], v) for k, v in mine.items())
    out = Trainer(dataclasses.replace(dec, stages=("dit",), dit_steps=1)).run()
    assert all(torch.equal(StateDecoder.load(out).state_dict()[k], v) for k, v in mine.items())
    # the same actions with other frames (another scene's store of one seed) are other data
    store = EpisodeStore(tmp_path / "data.zarr")
    eps = {i: store.load_episode(i) for i in store.episode_ids()}
    other = EpisodeStore.create(tmp_path / "other.zarr", attrs={"fps": 20.0})
    for i, ep in eps.items():
        other.write_episode(i, 255 - ep["obs"], ep["actions"], ep["rewards"], ep["terminated"], ep["truncated"],
                            extras={"state": ep["state"]})
    moved = dataclasses.replace(dec, data=str(tmp_path / "other.zarr"))
    with pytest.raises(ValueError, match="was trained on other data than .*other.zarr"):
        Trainer(moved)
    (tmp_path / "b" / "model" / "training.json").unlink()  # no record (a killed run): the stage's state says it
    with pytest.raises(ValueError, match="other settings or data \\(data\\)"):
        Trainer(dataclasses.replace(moved, decoder_steps=2)).run()


def test_a_run_killed_in_its_dit_stage_continues_with_the_dit_stage_alone(tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("vae", "dit"),
                      vae_steps=1, dit_steps=3, vae_batch=2, dit_batch=2, save_every=1, holdout=0.34, eval_windows=0)
    steps = [0]

    def die_in_the_dit_stage(opt, args, kwargs):
        steps[0] += 1
        if steps[0] == 3:  # the VAE's one step, the DiT's first, then this
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(die_in_the_dit_stage)
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    finally:
        handle.remove()
    record = json.loads((tmp_path / "run" / "model" / "training.json").read_text())  # written after the VAE stage
    assert record["vae"]["steps"] == 1 and "dit" not in record
    out = Trainer(dataclasses.replace(cfg, stages=("dit",))).run()  # was: "holds none", the trained VAE unseen
    assert torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)["step"] == 3
    assert json.loads((out / "training.json").read_text())["dit"]["steps"] == 3


def test_timed_training_sets_its_step_count_from_the_rate_and_keeps_it_on_resume(tmp_path, tiny_ckpt):
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=3,
                      dit_batch=2, save_every=100, holdout=0.34, dit_minutes=1e-6, vae_from=str(tiny_ckpt))
    model = WorldModel.build(SPEC, **ARCH, seed=5)
    trainer = Trainer(cfg, model=model)
    src = WorldModel.from_pretrained(tiny_ckpt)
    assert torch.equal(model.vae.encoder.conv_in.weight, src.vae.encoder.conv_in.weight)  # --vae-from: its VAE
    assert not torch.equal(model.dit.transformer.proj_out.weight, src.dit.transformer.proj_out.weight)  # not its DiT
    trainer.run()
    # ~0 minutes: the 20 steps that measure the rate, however few `dit_steps` asks for
    st = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert (st["step"], st["total"], st["pending"], len(st["losses"])) == (20, 20, False, 20)
    Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()  # resumed, same budget: the count set stands
    assert torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)["step"] == 20
    # a longer budget continues: its extra minutes are timed as a run of their own (~0 here: 20 more steps), at a
    # rate above 0 while they are timed (the old schedule's end gave its measuring steps 0)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    rates = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    cfg.dit_minutes = 2e-6
    try:
        Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    finally:
        handle.remove()
    st = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert (st["step"], st["total"], st["pending"], st["minutes"]) == (40, 40, False, 2e-6)
    assert len(rates) == 20 and min(rates[:-1]) > 0
    # an interrupted run (its count 50, at step 40) given a longer budget first ends at its count: timing the
    # extra minutes from now would end it at 40 + 20 (or, on a real budget, cut it short of its count)
    torch.save({**st, "total": 50}, tmp_path / "run" / "state_dit.pt")
    cfg.dit_minutes = 3e-6
    Trainer(cfg, model=WorldModel.build(SPEC, **ARCH)).run()
    st = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert (st["step"], st["total"], st["minutes"]) == (50, 50, 3e-6)


def test_timed_dit_training_counts_its_preparation_within_the_budget(tmp_path, tiny_ckpt, monkeypatch):
    import time

    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    skew, real = [0.0], time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + skew[0])
    encode = Trainer._encode_windows

    def slow_encode(self, episodes, pick=None):  # a preparation that takes the whole 30-second budget, on the clock
        skew[0] += 30.0
        return encode(self, episodes, pick)

    monkeypatch.setattr(Trainer, "_encode_windows", slow_encode)
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=3,
                      dit_batch=2, save_every=100, holdout=0.34, dit_minutes=0.5, vae_from=str(tiny_ckpt))
    Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=5)).run()
    # nothing of the budget is left after the preparation: only the 20 steps that measure the rate
    st = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert (st["step"], st["total"]) == (20, 20)


@pytest.mark.slow
def test_compiled_training_exports_the_same_keys_and_loads(tmp_path, tiny_ckpt, monkeypatch):
    from worldcache.train import TrainConfig, Trainer

    # torch.compile's wrapping of the blocks is what this is about, not inductor's code (test_fast_paths): aot_eager
    # traces forward and backward as inductor would, without its ~45 s of code generation on 2 cores
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{"backend": "aot_eager", **kw}))
    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=2,
                      dit_batch=2, holdout=0.34, init_from=str(tiny_ckpt), compile=True)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    out = trainer.run()
    assert trainer.model.dit.compiled_blocks is not None
    st = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)
    assert st["step"] == 2 and len(st["losses"]) == 2 and all(np.isfinite(st["losses"]))
    back = WorldModel.from_pretrained(out)
    assert back.state_dict().keys() == before.keys()  # the compiled blocks add no `_orig_mod.` keys
    assert not torch.equal(back.dit.transformer.proj_out.weight, before["dit.transformer.proj_out.weight"])


def test_a_starting_decoder_that_does_not_load_is_left_out_and_the_run_kept(tmp_path, tiny_ckpt, capsys):
    from worldcache.state_decoder import StateDecoder, StateDecoderConfig
    from worldcache.train import TrainConfig, Trainer

    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    StateDecoder(StateDecoderConfig(height=32, width=40)).save(src)
    (src / "state_decoder.json").write_text("{not json")
    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=1,
                      dit_batch=2, holdout=0.34, init_from=str(src), eval_windows=0)
    out = Trainer(cfg).run()
    assert json.loads((out / "training.json").read_text())["dit"]["steps"] == 1  # the record written after it
    assert not (out / "state_decoder.json").exists() and not StateDecoder.exists(out)
    assert f"warning: {src}'s state decoder does not load ({src}: cannot load" in capsys.readouterr().err
    # its JSON missing (a FileNotFoundError, not a ValueError); a copy an earlier command left in this OUT goes too
    (src / "state_decoder.json").unlink()
    StateDecoder(StateDecoderConfig(height=32, width=40)).save(tmp_path / "run2" / "model")
    out = Trainer(dataclasses.replace(cfg, out=str(tmp_path / "run2"))).run()
    assert json.loads((out / "training.json").read_text())["dit"]["steps"] == 1
    assert not (out / "state_decoder.json").exists() and not StateDecoder.exists(out)
    assert "state_decoder.json: missing" in capsys.readouterr().err


def one_dit_step(tmp_path, tiny_ckpt, **options):
    """One DiT step on the tiny training store with `options`: its config, its trainer, and the latents the DiT
    was called on (every call's `hidden_states`)."""
    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=1,
                      holdout=0.34, vae_from=str(tiny_ckpt), eval_windows=0, **options)
    trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=5))
    seen = []
    trainer.model.dit.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["hidden_states"].clone()),
                                                with_kwargs=True)
    trainer.run()
    return cfg, trainer, seen


def test_cond_noise_perturbs_only_the_conditioning_latents_by_a_drawn_std(tmp_path, tiny_ckpt):
    from worldcache.train import Trainer

    cfg, _, seen = one_dit_step(tmp_path, tiny_ckpt, dit_batch=2, cond_noise=0.5)
    latents, _ = torch.load(tmp_path / "run" / "dit_windows.pt")
    rng = np.random.default_rng([0, 1])  # the DiT stage's draws, in its order: windows, sigmas, conditioning stds
    idx, u, sc = rng.choice(len(latents), 2), rng.random(2), rng.random(2) * 0.5
    x0 = latents[torch.from_numpy(idx)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.from_numpy(5 * u / (1 + 4 * u)).float().view(2, 1, 1, 1, 1)
    xt = seen[0]
    torch.testing.assert_close(xt[:, :, :1], x0[:, :, :1] + torch.tensor(sc).float().view(2, 1, 1, 1, 1)
                               * noise[:, :, :1])
    torch.testing.assert_close(xt[:, :, 1:], (1 - sigma) * x0[:, :, 1:] + sigma * noise[:, :, 1:])
    assert len(seen) == 1  # eval_windows=0: no scoring after training
    assert "fixed_sigma_loss" not in json.loads((tmp_path / "run" / "model" / "training.json").read_text())["dit"]
    with pytest.raises(ValueError, match="cond_noise"):
        Trainer(dataclasses.replace(cfg, cond_noise=-0.1), model=WorldModel.build(SPEC, **ARCH))


def test_fixed_sigma_loss_scores_each_window_at_fixed_noise_levels(tmp_path, monkeypatch):
    from worldcache.train import EVAL_U, TrainConfig, Trainer

    np.testing.assert_allclose(EVAL_U, [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_batch=3,
                      holdout=0.34)
    trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH))
    # a DiT whose velocity is its input x_t gives the loss a closed form that depends on sigma
    monkeypatch.setattr(trainer.model.dit, "forward", lambda policy, call, hidden_states, **kw: hidden_states)
    x0, a = torch.randn(5, 4, 3, 2, 2, generator=torch.Generator().manual_seed(1)), torch.zeros(5, SPEC.chunk, 7)
    g, expected = torch.Generator().manual_seed(7), 0.0
    for u in EVAL_U:  # the noise drawn level by level, for all windows at once
        noise, s = torch.randn(x0.shape, generator=g), 5 * u / (1 + 4 * u)  # flow_shift 5
        err = ((1 - s) * x0 + s * noise - (noise - x0))[:, :, 1:]  # on the generated latent frames
        expected += float((err ** 2).mean(dim=(1, 2, 3, 4)).sum())
    expected /= 5 * len(EVAL_U)
    assert trainer.fixed_sigma_loss(x0, a, seed=7) == pytest.approx(expected, rel=1e-6)  # in batches of 3 and 2
    trainer.cfg.dit_batch = 2  # batches of 2, 2 and 1: the same noise per window, the same loss
    assert trainer.fixed_sigma_loss(x0, a, seed=7) == pytest.approx(expected, rel=1e-6)
    assert trainer.fixed_sigma_loss(x0, a, seed=8) != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="eval_windows"):
        Trainer(dataclasses.replace(cfg, eval_windows=-1), model=WorldModel.build(SPEC, **ARCH))


def test_cond_blur_conditions_each_window_on_its_frame_blurred_by_a_drawn_sigma(tmp_path, tiny_ckpt):
    import cv2

    from worldcache.train import Trainer, load_episodes, split

    cfg, trainer, seen = one_dit_step(tmp_path, tiny_ckpt, dit_batch=4, cond_blur=2.0)
    # the windows (e, t) of 4 actions from 2 training episodes of 12 actions: t = 0..8, conditioned on frame t
    train_eps, _ = split(load_episodes(cfg.data)[0], 0.34)
    sigmas = np.random.default_rng([0, 4]).random(18) * 2.0
    frames = np.stack([cv2.GaussianBlur(train_eps[e]["obs"][t], (0, 0), sigmas[e * 9 + t])[None]
                       for e in range(2) for t in range(9)])
    want = trainer.model.encode(torch.from_numpy(frames))
    blurred = torch.load(tmp_path / "run" / "blurred_conditioning_2.0.pt")
    torch.testing.assert_close(blurred, want)
    latents, _ = torch.load(tmp_path / "run" / "dit_windows.pt")
    sharp = (blurred - latents[:, :, :1]).flatten(1).abs().amax(1)
    assert (sharp[torch.from_numpy(sigmas > 0.5)] > 1e-3).all()  # blurred frames encode to other latents
    rng = np.random.default_rng([0, 1])  # the step's draws, in order: windows, sigmas
    idx, u = rng.choice(len(latents), 4), rng.random(4)
    x0 = latents[torch.from_numpy(idx)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.from_numpy(5 * u / (1 + 4 * u)).float().view(4, 1, 1, 1, 1)
    torch.testing.assert_close(seen[0][:, :, :1], blurred[torch.from_numpy(idx)])  # every sample: its blurred frame
    torch.testing.assert_close(seen[0][:, :, 1:], (1 - sigma) * x0[:, :, 1:] + sigma * noise[:, :, 1:])
    with pytest.raises(ValueError, match="cond_blur"):
        Trainer(dataclasses.replace(cfg, cond_blur=-0.5), model=WorldModel.build(SPEC, **ARCH))


def test_self_cond_conditions_a_fraction_of_the_batch_on_the_models_own_prediction(tmp_path, tiny_ckpt):
    from worldcache.train import SELF_COND_STEPS, TrainConfig, Trainer, load_episodes, split

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=1,
                      dit_batch=4, holdout=0.34, vae_from=str(tiny_ckpt), self_cond=0.5, self_cond_windows=3,
                      eval_windows=0)  # the training step's DiT call is the last
    trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=5))
    m, k = trainer.model, SPEC.chunk
    # the windows (e, t) of 4 actions from 2 training episodes of 12 actions: t = 0..8; own conditioning for t >= 4
    rng = np.random.default_rng([0, 2])
    pick = np.sort(rng.choice([e * 9 + t for e in range(2) for t in range(4, 9)], 3, replace=False))
    seeds = rng.integers(0, 2**31, 3)
    train_eps, _ = split(load_episodes(cfg.data)[0], 0.34)
    want = []
    for i, seed in zip(pick, seeds):  # from the real frame t - k and the real actions t-k .. t-1: frame t
        e, t = divmod(int(i), 9)
        new, _ = m.predict(train_eps[e]["obs"][t - k][None], train_eps[e]["actions"][t - k:t][None],
                           num_steps=SELF_COND_STEPS, seed=int(seed))
        want.append(m.encode(new[:, -1:]))
    seen = []
    m.dit.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["hidden_states"].clone()), with_kwargs=True)
    trainer.run()
    own_idx, own = torch.load(tmp_path / "run" / "own_conditioning_3.pt")
    assert own_idx.tolist() == pick.tolist()
    torch.testing.assert_close(own, torch.cat(want), atol=1e-4, rtol=1e-4)
    latents, _ = torch.load(tmp_path / "run" / "dit_windows.pt")
    rng = np.random.default_rng([0, 1])  # the step's draws, in order: windows, own windows, sigmas
    idx, j, u = rng.choice(len(latents), 4), rng.choice(3, 2), rng.random(4)
    idx[:2] = pick[j]
    x0 = latents[torch.from_numpy(idx)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.from_numpy(5 * u / (1 + 4 * u)).float().view(4, 1, 1, 1, 1)
    xt = seen[-1]  # the training step's call (the predictions before it called the DiT too)
    torch.testing.assert_close(xt[:2, :, :1], own[torch.from_numpy(j)])  # half the batch: its own conditioning
    torch.testing.assert_close(xt[2:, :, :1], x0[2:, :, :1])  # the rest: the real frame
    torch.testing.assert_close(xt[:, :, 1:], (1 - sigma) * x0[:, :, 1:] + sigma * noise[:, :, 1:])
    # predicted in batches of the training batch (a GPU is launch-bound at small ones); each window's own seed
    # makes the latents independent of it: batches of 2 and 1 give the same as one of 3 and three of 1
    small = Trainer(dataclasses.replace(cfg, dit_batch=2, out=str(tmp_path / "run2")),
                    model=WorldModel.build(SPEC, **ARCH, seed=5))
    sizes, predict = [], small.model.predict
    small.model.predict = lambda hist, *a, **kw: sizes.append(len(hist)) or predict(hist, *a, **kw)
    idx2, own2 = small._own_conditioning()
    assert sizes == [2, 1] and idx2.tolist() == pick.tolist()
    torch.testing.assert_close(own2, torch.cat(want), atol=1e-4, rtol=1e-4)
    for bad in (dict(self_cond=1.5), dict(self_cond=-0.1), dict(self_cond_windows=0)):
        with pytest.raises(ValueError, match="self_cond"):
            Trainer(dataclasses.replace(cfg, **bad), model=WorldModel.build(SPEC, **ARCH))


def test_self_cond_source_vae_conditions_on_the_real_chunk_before_through_the_vae(tmp_path, tiny_ckpt):
    from worldcache.train import Trainer, load_episodes, split

    cfg, trainer, seen = one_dit_step(tmp_path, tiny_ckpt, dit_batch=4, self_cond=0.5, self_cond_windows=3,
                                      self_cond_source="vae")
    m, k = trainer.model, SPEC.chunk  # the VAE is frozen in the DiT stage: as it was when the file was made
    # the windows (e, t) of 4 actions from 2 training episodes of 12 actions: t = 0..8; a chunk before for t >= 4
    pick = np.sort(np.random.default_rng([0, 2]).choice([e * 9 + t for e in range(2) for t in range(4, 9)], 3,
                                                         replace=False))
    train_eps, _ = split(load_episodes(cfg.data)[0], 0.34)
    want = []
    for i in pick:  # frames t-k .. t encoded and decoded, as a rollout decodes a chunk; its last frame encoded
        e, t = divmod(int(i), 9)
        decoded = m.decode(m.encode(torch.from_numpy(train_eps[e]["obs"][t - k:t + 1])[None]))
        want.append(m.encode(decoded[:, -1:]))
    own_idx, own = torch.load(tmp_path / "run" / "vae_conditioning_3.pt")
    assert own_idx.tolist() == pick.tolist()
    # batched and single encodes differ in float rounding by CPU (6e-5 seen on AMD EPYC); the round trip itself
    # moves the latents by more than 1e-3 (checked below)
    torch.testing.assert_close(own, torch.cat(want), rtol=0, atol=5e-4)
    latents, _ = torch.load(tmp_path / "run" / "dit_windows.pt")
    assert (own - latents[torch.from_numpy(pick), :, :1]).flatten(1).abs().amax(1).min() > 1e-3  # not the real one
    rng = np.random.default_rng([0, 1])  # the step's draws, in order: windows, the round-tripped windows
    idx, j = rng.choice(len(latents), 4), rng.choice(3, 2)
    assert len(seen) == 1  # no prediction before the step: the frames come from the VAE alone
    torch.testing.assert_close(seen[0][:2, :, :1], own[torch.from_numpy(j)])  # half the batch: round-tripped
    torch.testing.assert_close(seen[0][2:, :, :1], latents[torch.from_numpy(idx[2:]), :, :1])  # the rest: real
    with pytest.raises(ValueError, match="self_cond_source"):
        Trainer(dataclasses.replace(cfg, self_cond_source="simulator"), model=WorldModel.build(SPEC, **ARCH))


def test_two_conditioning_latent_frames_take_the_last_five_frames():
    spec = dataclasses.replace(SPEC, cond_latent_frames=2, cond_frame_timestep=None)
    model = WorldModel.build(spec, **ARCH, seed=2)
    with torch.no_grad():
        for p in model.dit.cond_embedder.parameters():
            p.normal_(0, 0.2)
    assert (spec.cond_frames, spec.latent_frames) == (5, 3)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 7, 32, 40, 3), dtype=np.uint8)
    actions = rng.uniform(-2, 2, (1, 4, 7)).astype(np.float32)
    a, out = model.predict(frames, actions, num_steps=3)
    b, _ = model.predict(frames[:, -5:], actions, num_steps=3)
    c, _ = model.predict(frames[:, -4:], actions, num_steps=3)  # padded by repeating the oldest frame
    d, _ = model.predict(np.concatenate([frames[:, -4:-3], frames[:, -4:]], axis=1), actions, num_steps=3)
    assert a.shape == (1, 4, 32, 40, 3) and out.latents.shape[2] == 3
    assert torch.equal(a, b) and torch.equal(c, d) and not torch.equal(a, c)
    with torch.no_grad():  # 5 conditioning frames (2 latent frames), then the 4 new ones
        window = model.decode(out.latents)
    assert window.shape[1] == 9 and torch.equal(a, window[:, 5:])
    with torch.no_grad():  # both conditioning latent frames get exactly zero action terms
        a3d, ad = model.dit.cond_embedder(torch.as_tensor(actions), 3)
    assert (a3d[:, :2] == 0).all() and (ad[:, :2] == 0).all() and (ad[:, 2] != 0).any()
    zeros = np.zeros((1, 4, 7), np.float32)
    frames8, outs = model.rollout(frames[:, -1], np.concatenate([zeros, zeros], 1), num_steps=2)
    assert frames8.shape == (1, 8, 32, 40, 3) and len(outs) == 2
    # chunk 0 from the start frame alone (padded to five); chunk 1 from the last five frames seen: the start frame
    # and chunk 0's four, with seed 0 + 1
    assert torch.equal(frames8[:, :4], model.predict(frames[:, -1], zeros, num_steps=2, seed=0)[0])
    history = np.concatenate([frames[:, -1:], frames8[:, :4].numpy()], 1)
    assert torch.equal(frames8[:, 4:], model.predict(history, zeros, num_steps=2, seed=1)[0])


def test_run_folder_files_are_made_again_only_when_their_inputs_change(tmp_path, tiny_ckpt, capsys):
    from worldcache.train import TrainConfig, Trainer, fingerprint

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=1,
                      dit_batch=2, holdout=0.34, vae_from=str(tiny_ckpt), eval_windows=0)  # encodes for training only
    made, own_made = [], []

    def run(cfg, seed=5):  # as a run killed before its export resumes: from the model it was given
        shutil.rmtree(tmp_path / "run" / "model", ignore_errors=True)
        (tmp_path / "run" / "state_dit.pt").unlink(missing_ok=True)  # the cached inputs are kept, the state not
        # (a state of other settings is refused; these runs differ in data split and self-conditioning)
        trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=seed))
        encode, own = trainer._encode_windows, trainer._own_conditioning
        trainer._encode_windows = lambda eps: made.append(len(eps)) or encode(eps)
        trainer._own_conditioning = lambda: own_made.append(seed) or own()
        trainer.run()

    run(cfg)
    assert made == [2]
    run(cfg, seed=6)  # another DiT, the same VAE (vae_from) and data: the encoded windows are read back
    assert made == [2] and "making it again" not in capsys.readouterr().err
    run(dataclasses.replace(cfg, holdout=0.67))  # other training episodes: made again, and said
    assert made == [2, 1]
    assert "dit_windows.pt: made from other data, weights or settings; making it again" in capsys.readouterr().err
    (tmp_path / "run" / "dit_windows.pt.inputs").unlink()  # no record of its inputs (an older run): made again
    run(dataclasses.replace(cfg, holdout=0.67))
    assert made == [2, 1, 1]
    own = dataclasses.replace(cfg, holdout=0.67, self_cond=0.5, self_cond_windows=2)
    run(own)
    run(own)  # the model's own predictions, read back
    run(own, seed=6)  # another DiT predicts them otherwise: made again (the windows are not)
    assert own_made == [5, 6] and made == [2, 1, 1]
    x = np.arange(6, dtype=np.float32)
    t = torch.from_numpy(x)
    assert fingerprint(x, 1, "a") == fingerprint(x.copy(), 1, "a") and fingerprint(t) == fingerprint(t.clone())
    # values, dtype, shape and every part count; a bf16 tensor (no numpy dtype) by its bytes
    assert len({fingerprint(x), fingerprint(x.astype(np.float64)), fingerprint(x.reshape(2, 3)), fingerprint(x + 1),
                fingerprint(x, 1), fingerprint(t), fingerprint(t.bfloat16()), fingerprint(t.bfloat16() + 1)}) == 8


def test_decoder_on_own_frames_script_writes_the_models_predictions_and_fine_tunes(tmp_path, tiny_ckpt):
    import importlib.util

    from worldcache.rollouts.store import EpisodeStore
    from worldcache.state_decoder import StateDecoder, StateDecoderConfig
    from worldcache.train import load_episodes, split

    spec = importlib.util.spec_from_file_location("own", Path(__file__).parents[1] / "scripts/decoder_on_own_frames.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    v2_view = {"camera": {"distance": 2.25, "lookat": [0.3, -0.25, -0.3]}}
    StateDecoder(StateDecoderConfig(height=32, width=40, scene=v2_view)).save(ckpt)  # started from another view's
    write_training_store(tmp_path / "data.zarr")
    args = ["--checkpoint", str(ckpt), "--data", str(tmp_path / "data.zarr"), "--store", str(tmp_path / "own.zarr"),
            "--out", str(tmp_path / "dec"), "--episodes", "5", "--chunks", "2", "--denoise-steps", "2",
            "--holdout", "0.34", "--steps", "2", "--batch", "4"]
    assert script.main(args) == 0
    train, _ = split(load_episodes(tmp_path / "data.zarr")[0], 0.34)  # 2 training episodes of 12 actions
    store = EpisodeStore(tmp_path / "own.zarr", mode="r")
    assert sorted(store.episode_ids()) == ["a0000", "a0001", "b0000_00", "b0000_04", "b0001_00", "b0001_04"]
    starts = np.stack([train[e]["obs"][t] for e, t in ((0, 0), (0, 4), (1, 0), (1, 4))])
    acts = np.stack([train[e]["actions"][t:t + 8] for e, t in ((0, 0), (0, 4), (1, 0), (1, 4))])
    from worldcache.seeding import derived_seed
    wins = ((0, 0), (0, 4), (1, 0), (1, 4))  # window (e, t) draws derived_seed(e, t), whatever its batch
    frames, _ = WorldModel.from_pretrained(ckpt).rollout(starts, acts, num_steps=2,
                                                         seed=[derived_seed(e, t) for e, t in wins])
    for i, (e, t) in enumerate(((0, 0), (0, 4), (1, 0), (1, 4))):
        ep = store.load_episode(f"b{e:04d}_{t:02d}")
        np.testing.assert_array_equal(ep["obs"][0], train[e]["obs"][t])
        np.testing.assert_array_equal(ep["obs"][1:], frames[i].cpu().numpy())
        np.testing.assert_array_equal(ep["state"], train[e]["state"][t:t + 9])
    np.testing.assert_array_equal(store.load_episode("a0001")["obs"], train[1]["obs"])
    before, after = StateDecoder.load(ckpt).state_dict(), StateDecoder.load(tmp_path / "dec").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # fine-tuned from the checkpoint's decoder
    # it learned the model's frames: it reads the model's view (v1: None), whatever its start's was
    assert WorldModel.from_pretrained(ckpt).spec.scene is None and StateDecoder.load(tmp_path / "dec").config.scene \
        is None and StateDecoder.load(ckpt).config.scene == v2_view
    with pytest.raises(ValueError, match="no training episode has 16 steps"):
        script.main(args + ["--chunks", "4", "--store", str(tmp_path / "own4.zarr")])  # 12 actions per episode
    for taken in (tmp_path / "own.zarr", tmp_path / "data.zarr"):  # never deleted to make room
        with pytest.raises(FileExistsError, match="give a new --store path"):
            script.main(args + ["--store", str(taken)])
    assert len(EpisodeStore(tmp_path / "data.zarr", mode="r")) == 3 and len(store) == 6
    # every 2nd training episode: episode 0 alone of the 2
    assert script.main(args + ["--stride", "2", "--store", str(tmp_path / "own2.zarr")]) == 0
    strided = EpisodeStore(tmp_path / "own2.zarr", mode="r")
    assert sorted(strided.episode_ids()) == ["a0000", "a0001", "b0000_00", "b0000_04"]
    np.testing.assert_array_equal(strided.load_episode("b0000_04")["state"], train[0]["state"][4:13])
    # a window's frames are its own: the same predicted in batches of 1 as in the one batch of 4 above
    assert script.write_own_frames(WorldModel.from_pretrained(ckpt), train, str(tmp_path / "own1.zarr"), episodes=5,
                                   chunks=2, num_steps=2, batch=1) == 4
    one = EpisodeStore(tmp_path / "own1.zarr", mode="r")
    for e, t in wins:  # up to the float rounding of another batch size (one grey level)
        a, b = (s.load_episode(f"b{e:04d}_{t:02d}")["obs"].astype(int) for s in (one, store))
        assert np.abs(a - b).max() <= 1
    with pytest.raises(SystemExit):
        script.main(args + ["--stride", "0"])
    # real frames of another view than the model's are refused, before anything is written
    EpisodeStore(tmp_path / "data.zarr", mode="a").attrs["generator"] = {**v2_view, "fps": 20.0}
    with pytest.raises(ValueError, match="shows another scene than the model's"):
        script.main(args + ["--store", str(tmp_path / "v2.zarr")])
    assert not (tmp_path / "v2.zarr").exists()


def test_train_cli_records_the_fixed_sigma_loss_of_eval_windows(tmp_path, tiny_ckpt, capsys):
    from worldcache import cli

    write_training_store(tmp_path / "data.zarr")
    args = ["train", "--data", str(tmp_path / "data.zarr"), "--stages", "dit", "--dit-steps", "1", "--dit-batch", "2",
            "--vae-from", str(tiny_ckpt), "--layers", "2", "--heads", "2", "--head-dim", "16"]
    assert cli.main(args + ["--out", str(tmp_path / "a"), "--eval-windows", "4"]) == 0
    fixed = json.loads((tmp_path / "a" / "model" / "training.json").read_text())["dit"]["fixed_sigma_loss"]
    assert (fixed["train_windows"], fixed["heldout_windows"]) == (4, 4)  # of 18 training and 9 held-out windows
    assert "DiT loss at fixed noise levels" in capsys.readouterr().out
    assert cli.main(args + ["--out", str(tmp_path / "b"), "--eval-windows", "0"]) == 0
    assert "fixed_sigma_loss" not in json.loads((tmp_path / "b" / "model" / "training.json").read_text())["dit"]
    with pytest.raises(SystemExit) as e:  # refused by the parser, before any work
        cli.main(args + ["--out", str(tmp_path / "c"), "--eval-windows", "-1"])
    assert e.value.code == 2 and "argument --eval-windows: must be >= 0, got -1" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "d"), "--eval-windows", "0", "--dit-ema", "0.5"]) == 0
    assert json.loads((tmp_path / "d" / "model" / "training.json").read_text())["dit"]["ema"]["decay"] == 0.5
    assert cli.main(args + ["--out", str(tmp_path / "e"), "--dit-ema", "1"]) == 2
    assert "dit_ema (--dit-ema) must be a decay in [0, 1)" in capsys.readouterr().err
    assert cli.main(args + ["--out", str(tmp_path / "f"), "--eval-windows", "0", "--cond-blur", "1.5"]) == 0
    assert json.loads((tmp_path / "f" / "model" / "training.json").read_text())["config"]["cond_blur"] == 1.5
    assert (tmp_path / "f" / "blurred_conditioning_1.5.pt").is_file()
    assert cli.main(args + ["--out", str(tmp_path / "g"), "--cond-blur", "-1"]) == 2
    assert "cond_blur must be >= 0" in capsys.readouterr().err
    tiny = ["train", "--data", str(tmp_path / "data.zarr"), "--continue-from", str(tiny_ckpt)]  # chunks of 4
    assert cli.main(tiny + ["--stages", "dit", "--dit-steps", "1", "--dit-batch", "2", "--eval-windows", "0",
                            "--self-cond", "0.5", "--self-cond-windows", "2", "--self-cond-source", "vae",
                            "--out", str(tmp_path / "h")]) == 0
    assert json.loads((tmp_path / "h" / "model" / "training.json").read_text())["config"]["self_cond_source"] == "vae"
    assert (tmp_path / "h" / "vae_conditioning_2.pt").is_file()
    assert cli.main(tiny + ["--stages", "vae", "--vae-steps", "1", "--vae-batch", "2", "--vae-lr", "1e-4",
                            "--vae-decoder-only", "--vae-handover", "0.5", "--out", str(tmp_path / "i")]) == 0
    rec = json.loads((tmp_path / "i" / "model" / "training.json").read_text())
    assert (rec["config"]["vae_batch"], rec["config"]["vae_lr"], rec["vae"]["decoder_only"]) == (2, 1e-4, True)
    assert rec["vae"]["handover"] == 0.5


def test_dit_ema_exports_the_moving_average_of_the_raw_weights_and_resumes_it(tmp_path, tiny_ckpt, monkeypatch):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "run"), stages=("dit",), dit_steps=3,
                      dit_batch=2, save_every=2, holdout=0.34, vae_from=str(tiny_ckpt), dit_ema=0.2, eval_windows=2)
    seen, stop = [], [True]  # proj_out's raw weight after each optimiser step; the first run dies in step 3

    def after_step(opt, args, kwargs):
        seen.append(trainer.model.dit.transformer.proj_out.weight.detach().clone())
        if len(seen) == 3 and stop[0]:
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(after_step)
    try:
        trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=5))
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
        stop[0] = False  # the same command again: resumes from step 2, with the average saved there
        encoded, encode = [], Trainer._encode_windows  # which encodings pick windows: the scoring's
        monkeypatch.setattr(Trainer, "_encode_windows",
                            lambda self, eps, pick=None: encoded.append(pick is not None) or encode(self, eps, pick))
        trainer = Trainer(cfg, model=WorldModel.build(SPEC, **ARCH, seed=5))
        out = trainer.run()
    finally:
        handle.remove()
    assert encoded.count(True) == 2  # training and held-out scoring windows, encoded once for both sets of weights
    p1, p2, p3 = seen[0], seen[1], seen[3]
    # diffusers' EMAModel: decay 0 at step 1 (a copy), then k/(9+k) up to the cap: 2/11 at step 2, min(3/12, 0.2)
    e2 = 2 / 11 * p1 + 9 / 11 * p2
    expected = 0.2 * e2 + 0.8 * p3
    torch.testing.assert_close(WorldModel.from_pretrained(out).dit.transformer.proj_out.weight, expected)
    raw = torch.load(tmp_path / "run" / "state_dit.pt", weights_only=False)["module"]  # the DiT's alone
    torch.testing.assert_close(raw["transformer.proj_out.weight"], p3)  # the raw weights stay in the state
    assert not torch.allclose(expected, p3)
    rec = json.loads((out / "training.json").read_text())["dit"]
    assert rec["ema"]["decay"] == 0.2 and rec["ema"]["final_decay"] == pytest.approx(0.2)
    assert rec["ema"]["raw_fixed_sigma_loss"]["train_windows"] == rec["fixed_sigma_loss"]["train_windows"] == 2
    assert rec["ema"]["raw_fixed_sigma_loss"]["train"] != rec["fixed_sigma_loss"]["train"]  # each scores its weights
    assert trainer.fixed_sigma_losses() == rec["fixed_sigma_loss"]  # a fresh encoding scores the export alike
    # a run resumes with the decay it began with: an average begun later would start from the resumed weights
    for decay in (0.0, 0.5):
        with pytest.raises(ValueError, match=f"saved with EMA decay 0.2, resumed with {decay}"):
            Trainer(dataclasses.replace(cfg, dit_ema=decay, dit_steps=4), model=WorldModel.build(SPEC, **ARCH)).run()
    plain = dataclasses.replace(cfg, out=str(tmp_path / "plain"), dit_ema=0.0, dit_steps=2, eval_windows=0)
    Trainer(plain, model=WorldModel.build(SPEC, **ARCH, seed=5)).run()
    with pytest.raises(ValueError, match="saved with EMA decay 0.0, resumed with 0.5"):
        Trainer(dataclasses.replace(plain, dit_ema=0.5, dit_steps=3), model=WorldModel.build(SPEC, **ARCH)).run()
    # another run's state in the folder (other learning rate and seed): refused, not resumed under this record
    with pytest.raises(ValueError, match=r"state_dit.pt: saved by a run with other settings \(dit_lr: 0.0003 there, "
                                         r"1e-07 now, seed: 0 there, 5 now\)"):
        Trainer(dataclasses.replace(plain, dit_lr=1e-7, seed=5, dit_steps=3), model=WorldModel.build(SPEC, **ARCH)).run()
    with pytest.raises(FileNotFoundError, match="no vae/ folder"):  # a typo is not taken for a Hub repo id
        Trainer(dataclasses.replace(plain, out=str(tmp_path / "v"), vae_from="someuser"))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="dit_ema"):
            Trainer(dataclasses.replace(cfg, dit_ema=bad), model=WorldModel.build(SPEC, **ARCH))


def test_train_command_records_itself_as_typed(tmp_path, tiny_ckpt):
    import shlex

    from worldcache.cli import main

    write_training_store(tmp_path / "data.zarr")
    args = ["train", "--data", str(tmp_path / "data.zarr"), "--out", str(tmp_path / "run"), "--stages", "dit",
            "--continue-from", str(tiny_ckpt), "--dit-steps", "1", "--dit-batch", "2", "--eval-windows", "0"]
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "model" / "training.json").read_text())
    assert record["command"] == shlex.join(["worldcache", *args])  # runnable again, not this process's argv
    assert record["commands"] == [{"command": record["command"], "stages": ["dit"]}]


@pytest.mark.parametrize("stage,stop", [("vae", "raise"), ("dit", "raise"), ("dit", "signal")])
def test_an_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny_ckpt, device, stage,
                                                                              stop):
    """Stopped in its third step (states saved every 4): by an exception raised inside the step, nothing is saved (the
    step is half done: its optimiser stepped, its count not), and the run starts again; by Ctrl-C (a signal, held
    until the step ends), the state is saved where it stopped, step 3. Either way the resumed run ends with the
    weights of an unbroken one."""
    import signal

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from worldcache.train import TrainConfig, Trainer

    write_training_store(tmp_path / "data.zarr")
    cfg = TrainConfig(data=str(tmp_path / "data.zarr"), out=str(tmp_path / "whole"), stages=(stage,), vae_steps=4,
                      dit_steps=4, vae_batch=2, dit_batch=2, save_every=4, holdout=0.34, eval_windows=0,
                      vae_from=str(tiny_ckpt) if stage == "dit" else None, device=str(device))
    part = (lambda m: m.vae) if stage == "vae" else (lambda m: m.dit)

    def train(c, seed):  # the process's own generators differ between the runs: the draws come from the run's seed
        trainer = Trainer(c, model=WorldModel.build(SPEC, **ARCH, seed=5))  # (building seeds them)
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        return trainer.run()

    whole = WorldModel.from_pretrained(train(cfg, 1))
    steps = [0]

    def die_in_step_3(opt, args, kwargs):
        steps[0] += 1
        if steps[0] == 3:
            if stop == "signal":
                signal.raise_signal(signal.SIGINT)
            else:
                raise KeyboardInterrupt

    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))
    handle = register_optimizer_step_post_hook(die_in_step_3)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cut, 2)
    finally:
        handle.remove()
    state = tmp_path / "cut" / f"state_{stage}.pt"
    assert torch.load(state, weights_only=False)["step"] == 3 if stop == "signal" else not state.exists()
    resumed = WorldModel.from_pretrained(train(cut, 3))
    # every draw after step 2 (windows, noise levels, noise) continues where it stopped, so the weights are equal
    # (on CPU bit for bit; CUDA's kernels may sum in another order)
    tol = {"rtol": 0, "atol": 0} if device.type == "cpu" else {"rtol": 1e-4, "atol": 1e-5}
    for (name, a), b in zip(part(whole).state_dict().items(), part(resumed).state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, **tol)

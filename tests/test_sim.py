"""The Meta-World generator (sim.py): annotations, stillness of every kind of pause, regression of every
kind of retry, success, determinism, camera orientation and jitter, play video, and the resumable,
parallel writing of the splits that eval.py and train.py read."""
import contextlib
import json
import os
import shutil
from importlib.util import find_spec

import av
import numpy as np
import pytest

if not (find_spec("mujoco") and find_spec("metaworld")):  # not importorskip: mujoco must see MUJOCO_GL first
    pytest.skip("sim.py needs mujoco and metaworld: pip install -r requirements-sim.txt", allow_module_level=True)

import sim  # noqa: E402  (sets MUJOCO_GL=egl before importing mujoco)

TASK, SEED, SIZE, FPS = "pick-place-v3", 60001, 64, 10


def goal_distance(obs):
    """Object-to-goal distance from Meta-World's observation: object xyz at 4:7, goal xyz at 36:39."""
    return np.linalg.norm(obs[..., 4:7] - obs[..., 36:39], axis=-1)


def pixel_change(frames, ref):
    """Mean absolute difference of each frame to `ref`, in 0..255 units."""
    return np.abs(frames.astype(np.float64) - ref.astype(np.float64)).mean(axis=(1, 2, 3))


class Variants:
    """The expert of (task, seed) and the rollouts of every pause and retry mechanism, unrendered."""

    def __init__(self, task, seed, mechanisms):
        import warnings
        warnings.simplefilter("ignore")
        self.env = sim.make_env(task, seed)
        self.policy = sim.make_policy(task)
        self.expert = sim.Rollout(self.env)
        self.s = sim.finish(self.expert, self.policy, 5, 400)
        self.task, self.out = task, {}
        for kind, mechanism in mechanisms:
            rng = np.random.default_rng([seed, len(self.out)])
            if kind == "failure":
                self.out[mechanism] = sim.failure(self.env, self.policy, task, self.expert, self.s, rng, (5, 40),
                                                  lambda k: None, mechanism)
                continue
            fn, x_range = (sim.hesitation, (5, 40)) if kind == "hesitation" else (sim.retry, (5, 30))
            self.out[mechanism] = fn(self.env, self.policy, task, self.expert, self.s, rng, x_range, 5,
                                     lambda k: None, mechanism)


@pytest.fixture(scope="module")
def variants():
    return {"pick": Variants(TASK, SEED, [("hesitation", m) for m in sim.PAUSES] + [
                ("retry", m) for m in ("retrace", "regrasp")] + [("failure", m) for m in sim.FAILURES] + [
                ("hesitation", "hover"), ("retry", "slow_retrace")]),  # the test splits' own, last: the rest as before
            "push": Variants("push-v3", SEED, [("retry", m) for m in ("carry", "push")])}


def test_pauses_are_still_and_timed(variants):
    v = variants["pick"]
    E = np.array(v.expert.obs)
    for mechanism in sim.PAUSES + sim.TEST_PAUSES:
        assert v.out[mechanism] is not None, mechanism
        ro, m, n = v.out[mechanism]
        obs, x = np.array(ro.obs), n - m
        np.testing.assert_array_equal(obs[:m + 1], E[:m + 1])  # frames 0..m are the expert's
        assert abs(ro.t - v.expert.t - x) <= sim.DT_TOL  # the ground truth's assumption: the pause adds x frames
        coast = 6 if mechanism == "coast" else 0  # the arm slows down over at most 5 frames first
        hand = np.linalg.norm(obs[m + coast:n + 1, :3] - obs[m + coast, :3], axis=1).max()
        if mechanism == "hover":  # the hand rises, straight up, and is back down by n (within the damped arm's lag)
            rise = obs[m:n + 1, 2] - obs[m, 2]
            assert rise.max() > 0.003 and np.abs(obs[m:n + 1, :2] - obs[m, :2]).max() < 0.01, rise.max()
            assert np.linalg.norm(obs[n, :3] - obs[m, :3]) < 0.01
        else:
            assert hand < {"hold": 0.001, "jitter": 0.01, "coast": 0.001}[mechanism], (mechanism, hand)
        if mechanism == "coast":  # ... and it does move before it holds
            assert np.linalg.norm(obs[m + 1, :3] - obs[m, :3]) > 0.002
        d = goal_distance(obs[m:n + 1])
        tol = sim.COAST_PROGRESS_TOL if mechanism == "coast" else sim.HOLD_PROGRESS_TOL
        assert np.abs(d - d[0]).max() <= tol  # progress is flat
        assert not any(ro.success[m:n + 1]) and ro.success[-1]


def test_retries_move_away_from_goal(variants):
    for key, mechanisms in (("pick", ("retrace", "regrasp", "slow_retrace")), ("push", ("carry", "push"))):
        v = variants[key]
        E = np.array(v.expert.obs)
        for mechanism in mechanisms:
            assert v.out[mechanism] is not None, mechanism
            ro, m, n = v.out[mechanism]
            obs, x = np.array(ro.obs), n - m
            np.testing.assert_array_equal(obs[:m + 1], E[:m + 1])
            d = goal_distance(obs)
            assert d[n] > d[m] + sim.RETRY_MIN_REGRESS, (mechanism, d[m], d[n])
            assert not any(ro.success[m:n + 1]) and ro.success[-1]
            assert ro.t + 1 - 2 * x > 0  # a valid retry annotation
            if mechanism in ("retrace", "carry"):  # these end exactly where the expert was at m - x
                assert np.linalg.norm(obs[n, 4:7] - E[m - x, 4:7]) < sim.RETRY_STATE_TOL
                assert np.linalg.norm(obs[n, :3] - E[m - x, :3]) < sim.RETRY_STATE_TOL
                assert abs(ro.t - v.expert.t - 2 * x) <= sim.DT_TOL
            if mechanism == "retrace":  # frame m + k is the expert's frame m - k, played back physically
                back = E[m - x:m + 1][::-1]
                assert np.linalg.norm(obs[m:n + 1, :3] - back[:, :3], axis=1).max() < 0.03
            if mechanism == "slow_retrace":  # ... at half the pace: frame m + 2k is the expert's frame m - k
                u = x // 2
                assert x == 2 * u and abs(ro.t - v.expert.t - x - u) <= sim.DT_TOL
                back = E[m - u:m + 1][::-1]
                assert np.linalg.norm(obs[m:n + 1:2, :3] - back[:, :3], axis=1).max() < 0.03
                assert np.linalg.norm(obs[n, 4:7] - E[m - u, 4:7]) < sim.RETRY_STATE_TOL
            if mechanism == "regrasp":  # the object fell out of the gripper and was picked up again
                assert obs[m + 1:n + 1, 6].min() < E[m, 6] - 0.01 and obs[n:, 6].max() > obs[n, 6] + 0.01
            if mechanism in ("regrasp", "push"):  # n: the object first gets as far from the goal as it will, within
                # 5 mm, before it is fetched and moved goalwards (what follows is work re-done, not undoing)
                far = d[m:ro.success.index(True)].max()
                assert d[n] >= far - 0.005 and d[m:n].max() < far - 0.005, (mechanism, d[m:n + 1], far)
                assert d[n + 1:].min() < d[n] - 0.005


def test_failures_fail(variants):
    """Every failure mechanism: no success at any frame, the expert's frames up to f, and an achieved fraction in
    [0, 1) read from the privileged state; a stall keeps what it achieved, giving up or dropping loses some."""
    v = variants["pick"]
    E = np.array(v.expert.obs)
    for mechanism in sim.FAILURES:
        assert v.out[mechanism] is not None, mechanism
        ro, f = v.out[mechanism]
        obs = np.array(ro.obs)
        np.testing.assert_array_equal(obs[:f + 1], E[:f + 1])
        assert not any(ro.success) and ro.t > f + 4
        d = goal_distance(obs)
        a = sim.achieved(TASK, obs)
        assert a == pytest.approx(float(np.clip(1 - d[-1] / d[0], 0, 0.999))) and 0 <= a < 1
        if mechanism == "stall":
            assert np.linalg.norm(obs[-1, :3] - obs[f + 1, :3]) < 0.002
        if mechanism == "drop":  # the object ends lower than it was held
            assert obs[-1, 6] < E[f, 6] - 0.01


def test_dial_turn_failure_success_before_progress():
    """dial-turn succeeds before its dial has turned by PROGRESS_START (the progress measure starts after
    success), which once crashed the generator; its stalls and give-ups go wrong at some frame before success."""
    v = Variants("dial-turn-v3", 60000, [("failure", m) for m in ("stall", "give_up")])
    assert sim.started(v.task, v.expert) >= v.s
    for mechanism in ("stall", "give_up"):
        ro, f = v.out[mechanism]
        assert 2 <= f < v.s and not any(ro.success)


def test_generate_episodes_and_determinism():
    """generate() on one seed: one episode per kind, annotations that eval.py accepts, the expert's frames reused
    for the shared prefix, Meta-World's success on the last frame, the same result twice."""
    from eval import check_annotation

    eps = sim.generate(TASK, SEED, size=SIZE, fps=FPS, cameras=("corner", "corner2"))
    assert [e["meta"]["kind"] for e in eps] == list(sim.KINDS)
    env = sim.make_env(TASK, SEED)
    sim.Rollout(env)  # reset: sets the goal the env judges success against
    expert = eps[0]
    for ep in eps:
        a, T = ep["meta"], len(ep["observation.environment_state"])
        # the robot's own state as LeRobot's Meta-World env reports it: hand xyz and gripper, the observation's first 4
        np.testing.assert_array_equal(ep["observation.state"], ep["observation.environment_state"][:, :4])
        assert set(ep["frames"]) == {"corner", "corner2"}
        assert all(f.shape == (T, SIZE, SIZE, 3) and f.dtype == np.uint8 for f in ep["frames"].values())
        assert a["T"] == T == len(ep["action"]) and ep["task"] == sim.INSTRUCTIONS[TASK]
        check_annotation(a["kind"], a.get("m"), a.get("n"), T)
        if a["kind"] != "expert":
            assert a["mechanism"] in sim.PAUSES + sim.UNDOS + sim.FAILURES
            shared = a["f"] if a["kind"] == "failure" else a["m"]
            for c in ("corner", "corner2"):
                np.testing.assert_array_equal(ep["frames"][c][:shared + 1], expert["frames"][c][:shared + 1])
        obs = ep["observation.environment_state"].astype(np.float64)
        success = [env.evaluate_state(o, act)[1]["success"] for o, act in zip(obs, ep["action"])]
        if a["kind"] == "failure":  # never succeeds; achieved: the covered share of the object-to-goal distance
            assert not any(success)
            d = goal_distance(obs)
            assert a["achieved"] == pytest.approx(np.clip(1 - d[-1] / d[0], 0, 0.999)) and 0 <= a["achieved"] < 1
        else:
            assert success[-1], a
    env.close()
    again = sim.generate(TASK, SEED, kinds=("retry",), size=SIZE, fps=FPS, cameras=("corner", "corner2"))
    assert len(again) == 1
    np.testing.assert_array_equal(again[0]["frames"]["corner2"], eps[2]["frames"]["corner2"])
    assert again[0]["meta"] == eps[2]["meta"]
    # out_fps: the frames, state and actions of a video at 2 fps, those that training at 2 fps reads of the 10 fps one
    from data import resample
    slow = sim.generate(TASK, SEED, kinds=("expert",), size=SIZE, fps=FPS, cameras=("corner", "corner2"), out_fps=2)[0]
    keep = resample(expert["meta"]["T"], FPS, 2)
    assert slow["meta"] == {**expert["meta"], "T": len(keep)} and keep[-1] == expert["meta"]["T"] - 1
    for c in ("corner", "corner2"):
        np.testing.assert_array_equal(slow["frames"][c], expert["frames"][c][keep])
    for k in ("observation.state", "observation.environment_state", "action"):
        np.testing.assert_array_equal(slow[k], expert[k][keep])
    with pytest.raises(ValueError, match="experts and play only"):  # the others' annotations count frames at fps
        sim.generate(TASK, SEED, kinds=("expert", "retry"), out_fps=2)


def test_h264_files_do_not_depend_on_the_number_of_cores(tmp_path):
    """x264 cuts each frame into one slice per thread, and takes a thread per core unless told: the same corpus
    written on one core and on two decoded to other pixels (0.8 of 255 on average). The writer fixes the count."""
    import os
    import subprocess
    import sys
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two cores to compare a write on one with a write on two")
    frames = np.random.default_rng(0).integers(0, 256, (12, 128, 128, 3), dtype=np.uint8)  # the corpus size
    np.save(tmp_path / "frames.npy", frames)
    write = ("import os, sys, numpy as np; os.sched_setaffinity(0, map(int, sys.argv[3].split(','))); import sim; "
             "w = sim.Mp4Writer(sys.argv[1], 10, 'libx264', 128, 128, None, 2); w.write(np.load(sys.argv[2])); "
             "w.close()")
    for name, affinity in (("one.mp4", cpus[:1]), ("two.mp4", cpus[:2])):
        subprocess.run([sys.executable, "-c", write, str(tmp_path / name), str(tmp_path / "frames.npy"),
                        ",".join(map(str, affinity))],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert (tmp_path / "one.mp4").read_bytes() == (tmp_path / "two.mp4").read_bytes()


def test_camera_upright_and_jitter():
    """The goal marker appears where a pinhole projection of the corner camera puts it, and world-up is
    image-up (a vertical flip instead of the 180-degree turn would mirror the scene left to right); a jittered
    camera sees the scene moved by a few pixels, not a different scene."""
    env = sim.make_env(TASK, SEED)
    ro = sim.Rollout(env)
    cam = sim.Camera(env, 128, "corner")
    try:
        img = cam()
        model, data = env.model, env.data
        c = model.camera("corner").id
        pos, rot = data.cam_xpos[c], data.cam_xmat[c].reshape(3, 3)
        focal = 64 / np.tan(np.deg2rad(model.cam_fovy[c]) / 2)

        def pixel(p):  # (row, col) in the delivered frame; the camera looks along its -z, image up = its +y
            v = rot.T @ (p - pos)
            row, col = 64 - focal * v[1] / -v[2], 64 + focal * v[0] / -v[2]
            return np.array([127 - row, 127 - col])  # the corner camera is mounted upside down

        def blue(im):  # the goal site, rgba 0 0 .8
            return np.argwhere((im[..., 2] > 120) & (im[..., 0] < 60) & (im[..., 1] < 60))

        goal = ro.obs[0][36:39]
        assert len(blue(img)) >= 3
        assert np.abs(blue(img).mean(0) - pixel(goal)).max() < 4
        assert pixel(goal + [0, 0, 0.1])[0] < pixel(goal)[0] - 5  # higher in the world is higher in the image
        cam.jitter(np.random.default_rng(0), *sim.CAMERA_JITTER[:2])
        import mujoco
        mujoco.mj_forward(model, data)
        moved = cam()
        shift = np.abs(blue(moved).mean(0) - blue(img).mean(0)).max()
        assert 0.5 < shift < 15, shift
    finally:
        cam.close()
        env.close()


@contextlib.contextmanager
def beside_mujoco(*views):
    """The test task's env, sim.py's Camera for each view and MuJoCo's own Renderer at 128x128, all closed after."""
    import mujoco
    env = sim.make_env(TASK, SEED)
    cams, renderer = [], None
    try:
        cams = sim.open_cameras(env, 128, views)  # one MjrContext, as the generator draws
        renderer = mujoco.Renderer(env.model, 128, 128)
        yield env, cams, renderer
    finally:
        for c in [renderer, *cams, env]:
            if c is not None:
                c.close()


def test_cameras_sharing_a_context_draw_what_their_own_would():
    env = sim.make_env(TASK, SEED)
    sim.Rollout(env)
    shared, own = sim.open_cameras(env, 64, ["corner", "corner4"]), []
    try:
        own = [sim.Camera(env, 64, v) for v in ("corner", "corner4")]
        assert shared[1].ctx is shared[0].ctx and own[1].ctx is not own[0].ctx
        frames = [c() for c in shared]
        assert np.abs(frames[0].astype(int) - frames[1]).mean() > 20  # two views, drawn with one context
        for c, f in zip(own, frames):
            assert np.array_equal(c(), f)
    finally:
        for c in [*shared, *own, env]:
            c.close()


def test_metaworlds_own_renderer_delivers_the_corner_view_upside_down():
    """What Meta-World's env.render() and MuJoCo's Renderer deliver for a corner camera is this corpus's frame turned by
    180 degrees (data recorded through them is what train.py --rotate and eval.py --rotate are for)."""
    with beside_mujoco("corner") as (env, (cam,), renderer):
        ours = cam().astype(int)
        renderer.update_scene(env.data, camera="corner")
        theirs = renderer.render().astype(int)
        assert np.abs(theirs - ours[::-1, ::-1]).mean() < 6  # the same picture but for lighting (sim.py: none)
        assert np.abs(theirs - ours).mean() > 30 and np.abs(theirs - ours[::-1]).mean() > 20


def test_lerobots_metaworld_view_is_corner4_upright():
    """LeRobot's Meta-World env (lerobot.envs.metaworld, the one its Meta-World datasets were recorded with) renders
    `corner2` moved to (0.75, 0.075, 0.7) and flips it on both axes: that is this corpus's `corner4` frame, upright."""
    import mujoco
    with beside_mujoco("corner4", "corner") as (env, (cam, corner), renderer):
        ours = cam().astype(int)
        env.model.cam_pos[env.model.camera("corner2").id] = [0.75, 0.075, 0.7]  # what LeRobot's env sets (then resets)
        mujoco.mj_forward(env.model, env.data)
        renderer.update_scene(env.data, camera="corner2")
        theirs = np.flip(renderer.render(), (0, 1)).astype(int)
        assert 3 < np.abs(theirs - ours).mean() < 12  # the same picture but for the shadows and reflections
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            renderer.scene.flags[flag] = 0  # as sim.py draws
        theirs = np.flip(renderer.render(), (0, 1)).astype(int)
        assert np.abs(theirs - ours).mean() < 0.2 and (np.abs(theirs - ours) > 2).mean() < 0.01
        assert np.abs(theirs - corner().astype(int)).mean() > 20  # another view than `corner`


ARGS = ["--train-tasks", TASK, "drawer-open-v3", "--unseen-tasks", "reach-v3", "--seeds-train", "2", "--seeds-play",
        "2", "--seeds-play-unseen", "1", "--seeds-heldout", "1", "--size", "32", "--codec", "libx264", "--train-fps", "2",
        "--cameras", "corner", "corner2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "mw"
    sim.main(["--out", str(out), "--workers", "2", *ARGS])
    return out


def test_corpus(corpus):
    """main() on two training tasks, two seeds, two cameras: five LeRobot v3.0 splits with annotations that
    eval.py reads back, experts that succeed, no task shared between training and unseen, unlabeled play."""
    import eval as wvm_eval
    from data import read_lerobot

    tasks = {}
    for split, kinds in (("train", {"expert"}), ("play", {"play"}), ("play_unseen", {"play"}),
                         ("heldout_seen", set(sim.KINDS)), ("heldout_unseen", set(sim.KINDS))):
        root = corpus / split
        info = json.loads((root / "meta" / "info.json").read_text())
        # the training splits at --train-fps: only the frames that training at 2 fps reads
        assert info["codebase_version"] == "v3.0" and info["fps"] == (2 if split.startswith(("train", "play")) else FPS)
        videos = sorted(k for k, f in info["features"].items() if f["dtype"] == "video")
        views = ["corner", "corner2"] if split.startswith(("train", "play")) else ["corner"]
        assert videos == [f"observation.images.{v}" for v in views]
        ann = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
        assert {a["kind"] for a in ann} == kinds and [a["episode_index"] for a in ann] == list(range(len(ann)))
        assert all(a["instruction"] == sim.INSTRUCTIONS[a["task"]] and a["embodiment"] == "sawyer" for a in ann)
        eps = read_lerobot(str(root), camera="all")
        assert len(eps) == len(ann) * len(videos)
        assert [e.T for e in eps] == [a["T"] for a in ann] * len(videos)
        if split.startswith("play"):
            assert all("m" not in a and "n" not in a and a["mechanism"] in sim.PLAYS for a in ann)
        if split.startswith("heldout"):
            items, problems = wvm_eval.load_annotated(str(root), fps=2)
            assert not problems and len(items) == len(ann)
        tasks[split] = {a["task"] for a in ann}
    assert tasks["train"] == tasks["play"] == tasks["heldout_seen"] == {TASK, "drawer-open-v3"}
    assert tasks["heldout_unseen"] == tasks["play_unseen"] == {"reach-v3"}  # the unseen tasks' only unlabeled video
    # the training tasks' paraphrases, and only theirs: never an unseen task's, never the instruction itself
    from data import read_instruction_map, read_paraphrases
    para = read_paraphrases(corpus / "paraphrases.json")
    assert para == {sim.INSTRUCTIONS[t]: sim.PARAPHRASES[t] for t in (TASK, "drawer-open-v3")}
    assert set(sim.PARAPHRASES) == set(sim.TRAIN_TASKS) and not set(sim.PARAPHRASES) & set(sim.UNSEEN_TASKS)
    assert all(len(set(w)) == 3 and sim.INSTRUCTIONS[t] not in w for t, w in sim.PARAPHRASES.items())
    # Meta-World's own wording of every task (LeRobot's task strings), an instruction map eval.py --instructions reads
    wording = read_instruction_map(corpus / "metaworld_wording.json")
    assert wording == {sim.INSTRUCTIONS[t]: sim.METAWORLD_WORDING[t] for t in sim.INSTRUCTIONS}
    assert wording[sim.INSTRUCTIONS["pick-place-v3"]] == "Pick and place a puck to a goal"
    assert read_paraphrases(corpus / "metaworld_wording.json")[sim.INSTRUCTIONS["door-open-v3"]] == [
        "Open a door with a revolving joint"]
    # experts succeed: Meta-World's own test on each training episode's last frame
    import pyarrow.parquet as pq
    table = pq.read_table(corpus / "train" / "data")
    index = table["episode_index"].to_numpy()
    state, action = (np.array(table[k].to_pylist(), dtype=np.float64) for k in ("observation.environment_state", "action"))
    for line in (corpus / "train" / "annotations.jsonl").read_text().splitlines():
        a = json.loads(line)
        last = np.nonzero(index == a["episode_index"])[0][-1]
        env = sim.make_env(a["task"], a["seed"])
        sim.Rollout(env)
        assert env.evaluate_state(state[last], action[last])[1]["success"]
        env.close()


@pytest.mark.parametrize("main,argv,msg", [
    (sim.parse_args, ["--size", "0"], "--size must be positive and even (yuv420p video)"),
    (sim.parse_args, ["--fps", "0"], "--fps must be positive"),
    (sim.parse_args, ["--seeds-train", "-1"], "0 to 30000 seeds per split, at least one worker"),
    # the held-out splits' seeds would run into the test splits' (80000 on): one env seed in both benches
    (sim.parse_args, ["--seeds-heldout", "20001"], "at most 20000 held-out seeds per task"),
    (sim.policy_main, ["--size", "-2"], "--size must be positive and even (yuv420p video) and --episodes at least 1"),
    # a misspelt codec failed inside PyAV after the first task, and was recorded: the corrected command was refused
    (sim.parse_args, ["--codec", "x264"], "--codec x264: PyAV here has no such encoder (x264); e.g. libx264 or "
                                          "libsvtav1"),
    (sim.policy_main, ["--codec", "x264"], "--codec x264: PyAV here has no such encoder (x264); e.g. libx264 or "
                                           "libsvtav1"),
    (sim.parse_args, ["--codec", "aac"], "--codec aac: encodes audio, not video; e.g. libx264 or libsvtav1"),
    (sim.parse_args, ["--seed", "-1"], "--seed must be in [0, 40000)"),
    (sim.parse_args, ["--tail", "-1"], "--tail must not be negative"),
    (sim.policy_main, ["--seed", "-1"], "--seed must be in [0, 40000), --workers at least 1"),
])
def test_bad_settings_are_named_at_start(main, argv, msg, tmp_path, capsys):
    """A frame size or frame rate that no video can have stops before any work, naming the flag given."""
    with pytest.raises(SystemExit):
        main(argv + ["--out", str(tmp_path / "out")])
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {msg}")
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_named_at_start(tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    for main in (sim.parse_args, sim.policy_main):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.splitlines()[-1]
        assert err.endswith(f"error: --out {tmp_path / 'out'}: a file, not a folder")
        with pytest.raises(SystemExit) as e:  # under a file: no folder can be made there
            (sim.main if main is sim.parse_args else main)(["--out", str(tmp_path / "out" / "sub")])
        assert str(e.value) == f"--out {tmp_path / 'out' / 'sub'}: cannot be made (Not a directory)"
    assert (tmp_path / "out").read_text() == "mine"
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "eval_inits.json").write_text('{"reach-v3": [1, 2]}')  # not sim.py's: named before any work
    with pytest.raises(SystemExit) as e:
        sim.policy_main(["--out", str(tmp_path / "policy")])
    assert str(e.value).startswith(f"{tmp_path / 'policy' / 'eval_inits.json'}: unreadable (TypeError: ")
    assert sorted(p.name for p in (tmp_path / "policy").iterdir()) == ["eval_inits.json"]


def test_a_corpus_never_holds_a_task_both_trained_on_and_unseen(tmp_path, capsys):
    """A later run on a corpus, with other --train-tasks or --unseen-tasks, must not score as unseen a task its train
    split holds (nor train on one its unseen splits hold); nor does a run that writes no train split rewrite the
    paraphrases of the training tasks."""
    out = tmp_path / "mw"
    (out / "train" / "meta").mkdir(parents=True)
    (out / "train" / "meta" / "sim.json").write_text(json.dumps({"settings": {"jobs": [
        ["reach-wall-v3", 0, ["expert"]], ["button-press-v3", 0, ["expert"]]]}, "counts": {}}))
    argv = ["--out", str(out), "--workers", "1", "--train-tasks", "reach-wall", "--seen-tasks", "reach-wall"]
    with pytest.raises(SystemExit, match=r"mw: button-press-v3 would be both a training task and an unseen one \(with "
                                         r"the train split\(s\) already there\)"):
        sim.main([*argv, "--unseen-tasks", "button-press", "--splits", "heldout_unseen"])
    assert not (out / "heldout_unseen").exists() and not (out / "generation.json").exists()
    (out / "heldout_unseen" / "meta").mkdir(parents=True)
    (out / "heldout_unseen" / "meta" / "sim.json").write_text(json.dumps({"settings": {"jobs": [
        ["door-open-v3", 60000, ["expert"]]]}, "counts": {}}))
    with pytest.raises(SystemExit, match="door-open-v3 would be both"):
        sim.main(["--out", str(out), "--train-tasks", "door-open", "--unseen-tasks", "push", "--splits", "train"])
    (out / "generation.json").write_text(json.dumps({"args": {}, "splits": {}}))
    (out / "paraphrases.json").write_text("{}")
    capsys.readouterr()
    sim.main([*argv, "--unseen-tasks", "push", "--splits", "play_unseen", "--seeds-play-unseen", "0"])
    assert (out / "paraphrases.json").read_text() == "{}" and (out / "metaworld_wording.json").exists()
    # a split asked for by name that has nothing to write is said (it was passed over without a word)
    assert capsys.readouterr().out.startswith(f"{out / 'play_unseen'}: no episodes to write (0 seeds, or no tasks, "
                                              "for it); not written\n")


@pytest.mark.parametrize("flag", ["--cameras", "--heldout-camera", "--test-camera"])
def test_an_unknown_camera_stops_at_the_start(flag, tmp_path, capsys):
    """A misspelt view crashed with mujoco's KeyError in the first job that drew it: --heldout-camera after the
    training splits had been generated, --test-camera after all the others."""
    with pytest.raises(SystemExit):
        sim.parse_args([flag, "top", "--out", str(tmp_path / "out")])
    assert "invalid choice: 'top'" in capsys.readouterr().err


def test_task_options_take_names_with_or_without_the_version(tmp_path, capsys):
    """The README lists tasks as Meta-World's names without -v3; every task option takes both spellings, and a name
    that is neither still stops at the start."""
    args = sim.parse_args(["--train-tasks", "pick-place", "drawer-open-v3", "--unseen-tasks", "door-open",
                           "--seen-tasks", "pick-place", "--out", str(tmp_path / "out")])
    assert (args.train_tasks, args.unseen_tasks, args.seen_tasks) == (
        ["pick-place-v3", "drawer-open-v3"], ["door-open-v3"], ["pick-place-v3"])
    with pytest.raises(SystemExit):
        sim.parse_args(["--train-tasks", "pick-plate", "--out", str(tmp_path / "out")])
    assert "unknown task 'pick-plate'" in capsys.readouterr().err
    # a task named twice (in both spellings) is one task: each of its seeds was generated and written twice
    args = sim.parse_args(["--train-tasks", "pick-place", "pick-place-v3", "--unseen-tasks", "door-open", "door-open",
                           "--out", str(tmp_path / "out")])
    assert (args.train_tasks, args.seen_tasks, args.unseen_tasks) == (["pick-place-v3"], ["pick-place-v3"],
                                                                      ["door-open-v3"])
    # training on the unreliable task: the test split's extra task (by default that one) is then none, not an error
    # about --test-extra-tasks, a flag not given
    args = sim.parse_args(["--train-tasks", "button-press-wall", "--out", str(tmp_path / "out")])
    assert args.train_tasks == ["button-press-wall-v3"] and args.test_extra_tasks == []
    assert sim.parse_args(["--out", str(tmp_path / "out")]).test_extra_tasks == list(sim.UNRELIABLE)


def test_a_folder_sim_did_not_write_is_never_replaced(tmp_path):
    """A split's folder that holds something sim.py did not write (a user's dataset under --out) stops the run
    before any work, and is left as it was; the split would otherwise replace it when done."""
    root = tmp_path / "train"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("mine")
    with pytest.raises(SystemExit, match=r"train: exists and was not written by sim.py"):
        sim.write_split(root, [(TASK, 0, ("expert",))], {"fps": FPS}, "libx264")
    assert (root / "meta" / "info.json").read_text() == "mine" and not (tmp_path / "train.parts").exists()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit, match="was not written by sim.py"):
        sim.write_split(tmp_path / "file", [(TASK, 0, ("expert",))], {"fps": FPS}, "libx264")
    assert (tmp_path / "file").read_text() == "mine"
    # nor are the files sim.py writes beside the splits, where it has not written before (no generation.json)
    for mine, listed in (({"paraphrases.json": "{}"}, "paraphrases.json"),
                         ({"generation.json": "[]", "metaworld_wording.json": "{}"},
                          "generation.json, metaworld_wording.json")):
        out = tmp_path / f"out{len(mine)}"
        out.mkdir()
        for name, text in mine.items():
            (out / name).write_text(text)
        with pytest.raises(SystemExit) as e:
            sim.main(["--out", str(out), "--splits", "play_unseen", "--seeds-play-unseen", "0"])
        assert str(e.value) == f"{out}: holds {listed}, not written by sim.py; delete it or choose another --out"
        assert {name: (out / name).read_text() for name in mine} == mine


def test_test_splits(tmp_path):
    """The test splits: new seeds of training tasks without held-out seeds and of unseen tasks, in LeRobot's view and
    Meta-World's wording, their own pause and retry mechanisms tried first; not written unless asked for."""
    import eval as wvm_eval

    out = tmp_path / "mw"
    sim.main(["--out", str(out), "--workers", "1", "--splits", *sim.TEST_SPLITS, "--train-tasks", TASK,
              "drawer-open-v3", "--seen-tasks", TASK, "--unseen-tasks", "reach-v3", "--test-extra-tasks",
              "--seeds-test", "1", "--size", "32"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(sim.TEST_SPLITS)
    mechanisms = set()
    for split, task in (("test_seen", "drawer-open-v3"), ("test_unseen", "reach-v3")):
        root = out / split
        info = json.loads((root / "meta" / "info.json").read_text())
        assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == ["observation.images.corner4"]
        ann = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
        assert {a["kind"] for a in ann} == set(sim.KINDS) and {a["task"] for a in ann} == {task}
        assert all(a["instruction"] == sim.METAWORLD_WORDING[task] and a["seed"] == 80_000 for a in ann)
        items, problems = wvm_eval.load_annotated(str(root), fps=2)
        assert not problems and len(items) == len(ann)
        mechanisms |= {a["mechanism"] for a in ann if a["kind"] in ("hesitation", "retry")}
    assert mechanisms & set(sim.TEST_PAUSES) and mechanisms & set(sim.TEST_UNDOS), mechanisms


def test_demo_reads_the_corpus_sim_writes_as_its_own(corpus):
    """demo.py checks each split on disk against the settings `sim.plan` gives for the recipe: a corpus main() wrote
    with these arguments passes (every split, the benches' retry_end included), the same arguments but the views
    stop it, naming the key."""
    import demo
    demo.check_corpus(str(corpus), sim.parse_args(["--out", str(corpus), *ARGS]))
    with pytest.raises(SystemExit, match=r"mw/train: written with other settings \(cameras\)"):
        demo.check_corpus(str(corpus), sim.parse_args(["--out", str(corpus), *ARGS[:-2], "corner3"]))
    planned = sim.plan(sim.parse_args(["--out", str(corpus), *ARGS]))
    recorded = json.loads((corpus / "heldout_seen" / "meta" / "sim.json").read_text())["settings"]
    assert recorded == planned["heldout_seen"][2] and recorded["retry_end"] == "furthest"
    assert "retry_end" not in planned["train"][2]


def test_a_run_refused_for_other_settings_leaves_the_corpus_as_it_was(corpus, tmp_path):
    """Other training tasks on a written corpus are refused before anything is written: its paraphrases.json (which
    train.py and encode_text.py read with the train split) and generation.json were rewritten for the refused run."""
    out = tmp_path / "mw"
    shutil.copytree(corpus, out, ignore=shutil.ignore_patterns("heldout_*", "play"))
    before = {f: (out / f).read_text() for f in ("paraphrases.json", "generation.json")}
    args = ["--out", str(out), "--workers", "1", *ARGS, "--splits", "train"]
    args[args.index("drawer-open-v3")] = "door-close-v3"
    with pytest.raises(SystemExit, match=r"mw/train: written with other settings \(jobs\)"):
        sim.main(args)
    assert {f: (out / f).read_text() for f in before} == before


def test_a_parts_folder_sim_did_not_make_is_left_alone(tmp_path):
    """<split>.parts is where sim.py keeps a split's finished tasks, and deletes once they are merged: a user's folder
    of that name is refused, not filled and deleted."""
    (tmp_path / "mw" / "train.parts").mkdir(parents=True)
    (tmp_path / "mw" / "train.parts" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        sim.main(["--out", str(tmp_path / "mw"), "--workers", "1", *ARGS, "--splits", "train"])
    assert str(e.value) == (f"{tmp_path / 'mw' / 'train.parts'}: exists and was not made by sim.py (no settings.json); "
                            f"delete it or choose another --out")
    assert sorted(p.name for p in (tmp_path / "mw" / "train.parts").iterdir()) == ["notes.txt"]


def test_a_damaged_split_record_is_named(tmp_path):
    """A split whose meta/sim.json is cut short or not sim.py's record stops a run with the file's name, whichever
    check reads it first (the settings, the task split), never a JSONDecodeError from inside."""
    root = tmp_path / "mw" / "train"
    (root / "meta").mkdir(parents=True)
    for text in ('{"settings": {"jobs": [["reach-v3"', "[1, 2]", '{"settings": {}}'):
        (root / "meta" / "sim.json").write_text(text)
        with pytest.raises(SystemExit, match=r"mw/train/meta/sim.json: not the settings and counts sim.py records"):
            sim.changed_settings(root, {})
        with pytest.raises(SystemExit, match=r"mw/train/meta/sim.json: not the settings"):
            sim.check_task_split(tmp_path / "mw", {})
    (root / "meta" / "sim.json").write_text(json.dumps({"settings": {"jobs": [["reach-v3", 0, ["expert"]]]},
                                                         "counts": {"expert": 1}}))
    assert sim.changed_settings(root, {"jobs": [["reach-v3", 0, ["expert"]]]}) == []
    with pytest.raises(SystemExit, match="reach-v3 would be both a training task and an unseen one"):
        sim.check_task_split(tmp_path / "mw", {"heldout_unseen": ([("reach-v3", 1, ("expert",))],)})


def test_resume_and_encoder_failure(corpus, tmp_path, monkeypatch):
    """An interrupted run continues at the first missing part and a mux error mid-part (SVT-AV1 does this now
    and then) encodes that part again, and a corpus written a few splits at a time (--splits): the result equals
    an uninterrupted run's."""
    calls = {"jobs": 0, "writes": 0}
    job, write = sim._generate_job, sim.Mp4Writer.write

    def dies_after_first_part(j):
        calls["jobs"] += 1
        if calls["jobs"] == 3:  # the first job of the second task
            raise KeyboardInterrupt
        return job(j)

    def flaky(self, frames):
        calls["writes"] += 1
        if calls["writes"] == 2:
            raise av.error.ArgumentError(22, "Invalid argument", self.c.name)
        return write(self, frames)

    monkeypatch.setattr(sim, "_generate_job", dies_after_first_part)
    monkeypatch.setattr(sim.Mp4Writer, "write", flaky)
    out = tmp_path / "mw"
    with pytest.raises(KeyboardInterrupt):
        sim.main(["--out", str(out), "--workers", "1", *ARGS])
    assert (out / "train.parts" / TASK / "part.json").exists() and not (out / "train").exists()
    calls["jobs"] = 100
    # a merge killed on this host (its process gone) left its folder: removed; one still running is left alone, and
    # so is a folder of that name without sim.py's mark (it was deleted with whatever it held)
    import socket
    import subprocess
    gone = [subprocess.Popen(["true"]) for _ in range(2)]
    for g in gone:
        g.wait()
    stale, theirs, running = (out / f"train.partial-{socket.gethostname()}-{pid}"
                              for pid in (gone[0].pid, gone[1].pid, os.getppid()))
    for d in (stale, theirs, running):
        d.mkdir()
    for d in (stale, running):
        (d / sim.MERGING).touch()
    (theirs / "notes.txt").write_text("mine")
    # a split folder that is a symbolic link (e.g. to a larger disk): the split is written where it points (the
    # finished split's rename failed on the link, after the whole generation)
    (tmp_path / "disk").mkdir()
    (out / "play").symlink_to(tmp_path / "disk" / "play", target_is_directory=True)
    sim.main(["--out", str(out), "--workers", "1", *ARGS, "--splits", "train", "play"])  # as demo.py does
    assert not stale.exists() and running.exists() and (theirs / "notes.txt").read_text() == "mine"
    assert (out / "play").is_symlink() and (tmp_path / "disk" / "play" / "annotations.jsonl").exists()
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["play"]
    shutil.rmtree(running)
    shutil.rmtree(theirs)
    assert not any((out / s).exists() for s in ("play_unseen", "heldout_seen", "heldout_unseen"))
    sim.main(["--out", str(out), "--workers", "1", *ARGS])
    # train: drawer-open's 2 jobs only; play 2 x 2; unseen play 1; seen 2; unseen 1
    assert calls["jobs"] == 100 + 2 + 4 + 1 + 2 + 1
    assert set(json.loads((out / "generation.json").read_text())["splits"]) == set(sim.SPLITS)  # both calls' counts
    for split in ("train", "play", "play_unseen", "heldout_seen", "heldout_unseen"):
        a, b = corpus / split, out / split
        assert (a / "annotations.jsonl").read_text() == (b / "annotations.jsonl").read_text()
        assert not (out / f"{split}.parts").exists()
        for video in sorted((a / "videos").rglob("*.mp4")):
            frames = []
            for root in (a, b):
                with av.open(str(root / video.relative_to(a))) as c:
                    frames.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
            assert frames[0].shape == frames[1].shape
            # the same rendered frames (rendering is exact, see the determinism test; the encoder is not quite)
            assert np.abs(frames[0].astype(np.float64) - frames[1]).mean() < 0.5
    assert not list(out.glob("*.partial-*"))
    with pytest.raises(SystemExit, match=r"other settings \(cameras\)"):
        sim.main(["--out", str(out), *ARGS[:-2], "corner3"])


def test_a_split_being_written_is_locked_and_damaged_records_are_named(tmp_path):
    """A second sim.py on a split another is writing is refused (it lost its parts to the first's merge); a damaged
    generation.json, parts settings.json or part.json is one line naming it, not a JSONDecodeError (the first two
    before any episode is generated)."""
    import fcntl
    out = tmp_path / "mw"
    argv = ["--out", str(out), "--workers", "1", "--size", "32", "--train-tasks", "reach", "--unseen-tasks", "push",
            "--seeds-train", "1", "--splits", "train"]
    out.mkdir()
    (out / "generation.json").write_text('{"args": {}, "splits": []}')
    with pytest.raises(SystemExit, match="holds generation.json, not written by sim.py"):
        sim.main(argv)
    (out / "generation.json").unlink()
    parts = out / "train.parts"
    parts.mkdir()
    (parts / "settings.json").write_text('{"size": 32, "cod')
    with pytest.raises(SystemExit, match=rf"^{parts / 'settings.json'}: damaged \(.*\); delete {parts} and run again$"):
        sim.main(argv)
    sim.save_json(sim.plan(sim.parse_args(argv))["train"][2], parts / "settings.json")
    (parts / "reach-v3").mkdir()
    (parts / "reach-v3" / "part.json").write_text('{"annotations": [')
    with pytest.raises(SystemExit, match=rf"^{parts / 'reach-v3' / 'part.json'}: damaged \(.*\); delete "
                                         rf"{parts / 'reach-v3'} and run again"):
        sim.main(argv)
    with open(parts / ".lock", "a") as f:  # as another process holds it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (the runs refused above hold it no longer)
        with pytest.raises(SystemExit, match=rf"^{parts}: another sim.py is writing this split; wait for it"):
            sim.main(argv)
    assert (parts / "reach-v3" / "part.json").read_text() == '{"annotations": ['  # nothing of it touched


def test_a_worker_that_dies_stops_the_generation_with_a_message():
    """A worker killed mid-job (os._exit, as the kernel's out-of-memory killer would) ends the run with a message
    that says the finished tasks are kept; multiprocessing.Pool replaced the worker and waited for its job forever.
    Results come in job order, here or in workers."""
    here, there = sim.run_jobs(abs, [-3, 1, -2], 1, "split"), sim.run_jobs(abs, [-3, 1, -2], 2, "split")
    assert list(here) == list(there) == [3, 1, 2]
    with pytest.raises(SystemExit, match=r"split: a worker process died .* the tasks finished so far are kept"):
        list(sim.run_jobs(os._exit, [1, 1, 1], 2, "split"))



def process_table():
    """{pid: (parent pid, state letter)} of the processes alive now, from /proc (Linux)."""
    out = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{d}/stat").read().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        if fields[0] != "Z":  # a zombie has ended; its parent has not read its status yet
            out[int(d)] = (int(fields[1]), fields[0])
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads the process table from /proc (Linux)")
def test_workers_end_with_a_generation_that_is_killed():
    """A generation killed outright (SIGKILL: the out-of-memory killer, a scheduler) leaves no process behind: each
    worker held its memory (0.6 GB with MuJoCo) and idled on as an orphan, and a rerun added new ones beside them."""
    import signal
    import subprocess
    import sys
    import time
    main = subprocess.Popen([sys.executable, "-c", "import sim, time\nfor _ in sim.run_jobs(time.sleep, [60, 60], 2, "
                             "'split'): pass"], cwd=os.path.dirname(sim.__file__))
    deadline = time.time() + 60
    while time.time() < deadline and sum(pp == main.pid for pp, _ in process_table().values()) < 3:
        time.sleep(0.1)  # until both workers (and multiprocessing's resource tracker) run
    time.sleep(3)  # and have set themselves up (a spawned worker imports sim first)
    left = [pid for pid, (pp, _) in process_table().items() if pp == main.pid]
    assert len(left) >= 2
    main.kill()
    main.wait()
    deadline = time.time() + 10
    while time.time() < deadline and set(left) & set(process_table()):
        time.sleep(0.1)
    alive = set(left) & set(process_table())
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def test_a_failure_never_flings_the_object():
    """sweep-into's stall at seed 60000 (the default corpus's heldout_unseen) braked the fingers on the block, and the
    solver flung it 9 m off the table at 24 m/s: a video of a block vanishing, `achieved` 0 for half the work done.
    Such a draw is redrawn."""
    ep = sim.generate("sweep-into-v3", 60000, kinds=("failure",), size=16)[0]
    obj = ep["observation.environment_state"][:, 4:7]
    assert np.linalg.norm(np.diff(obj, axis=0), axis=1).max() < 0.1  # m per step: the hand moves at most 0.01
    assert ep["meta"]["achieved"] > 0.1  # it stopped after pushing the block part of the way


def test_policy_data_seed_ranges_never_overlap(tmp_path, monkeypatch, capsys):
    """1001 expert episodes (seeds from 91000 on) reached 92000, the first held-out initial condition's seed: the policy
    was then evaluated where it was trained. Too many episodes stop at the start."""
    monkeypatch.setattr(sim, "write_policy_split", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(SystemExit):
        sim.policy_main(["--episodes", "1001", "--out", str(tmp_path / "out")])
    assert "at most 1000 --episodes" in capsys.readouterr().err


def test_policy_data_task_named_twice_is_one_task(tmp_path, monkeypatch):
    jobs = {}
    monkeypatch.setattr(sim, "write_policy_split", lambda root, j, *a, **k: jobs.setdefault(root.name, j) and {})
    sim.policy_main(["--tasks", "hammer", "hammer-v3", "--episodes", "1", "--eval-episodes", "1", "--out",
                     str(tmp_path / "out")])
    assert jobs["expert"] == [("hammer-v3", 91_000, "expert")]


def test_heldout_mechanisms_can_be_chosen(tmp_path):
    """--pauses, --undos: the held-out splits' pauses and retries drawn from the named mechanisms only (a bench of the
    undos that rewinding does not show); a split written with other mechanisms is never taken for this one."""
    out = tmp_path / "mw"
    argv = ["--out", str(out), "--workers", "1", "--splits", "heldout_seen", "heldout_unseen", "--train-tasks", TASK,
            "--seen-tasks", TASK, "--unseen-tasks", "push-v3", "--seeds-heldout", "2", "--size", "32"]
    sim.main(argv + ["--pauses", "jitter", "--undos", "regrasp", "push"])
    got = {}
    for split in ("heldout_seen", "heldout_unseen"):
        for line in (out / split / "annotations.jsonl").read_text().splitlines():
            a = json.loads(line)
            got.setdefault(a["kind"], set()).add(a["mechanism"] if "mechanism" in a else None)
        settings = json.loads((out / split / "meta" / "sim.json").read_text())["settings"]
        assert settings["pauses"] == ["jitter"] and settings["undos"] == ["regrasp", "push"]
        assert settings["retry_end"] == "furthest"  # a split of the [m, n] before is not taken for one of these
    assert got["hesitation"] == {"jitter"} and got["retry"] == {"regrasp", "push"}, got  # pick-place's, push's
    with pytest.raises(SystemExit, match=r"written with other settings \(pauses, undos\)"):
        sim.main(argv)  # all mechanisms: not the split on disk

"""The Meta-World generator (sim.py) on one task and two seeds: annotations, stillness of hesitations,
regression of retries, success, determinism, camera orientation, and the datasets eval.py reads."""
import json
from importlib.util import find_spec

import av
import numpy as np
import pytest

if not (find_spec("mujoco") and find_spec("metaworld")):  # not importorskip: mujoco must see MUJOCO_GL first
    pytest.skip("sim.py needs mujoco and metaworld: pip install -r requirements-sim.txt", allow_module_level=True)

import sim  # noqa: E402  (sets MUJOCO_GL=egl before importing mujoco)

TASK, SEEDS, SIZE, FPS = "pick-place-v3", (50000, 50001), 64, 10
X_MIN = round(1.5 * FPS)


@pytest.fixture(scope="module")
def episodes():
    """{seed: {kind: episode}} generated with the defaults (pauses and undos of 1.5-4 s)."""
    out = {}
    for seed in SEEDS:
        stats = {}
        eps = sim.generate(TASK, seed, size=SIZE, fps=FPS, stats=stats)
        out[seed] = {ep["meta"]["kind"]: ep for ep in eps}
        assert set(out[seed]) == set(sim.KINDS), f"seed {seed}: missing kinds, counts {stats}"
    return out


def goal_distance(obs):
    """Object-to-goal distance from Meta-World's observation: object xyz at 4:7, goal xyz at 36:39."""
    return np.linalg.norm(obs[..., 4:7] - obs[..., 36:39], axis=-1)


def pixel_change(frames, ref):
    """Mean absolute difference of each frame to `ref`, in 0..255 units."""
    return np.abs(frames.astype(np.float64) - ref.astype(np.float64)).mean(axis=(1, 2, 3))


def test_annotations_consistent(episodes):
    from eval import check_annotation

    for seed, eps in episodes.items():
        for kind, ep in eps.items():
            a, T = ep["meta"], len(ep["frames"])
            assert a["T"] == T == len(ep["observation.state"]) == len(ep["action"])
            assert ep["frames"].shape[1:] == (SIZE, SIZE, 3) and ep["frames"].dtype == np.uint8
            assert ep["observation.state"].shape[1] == 39 and ep["action"].shape[1] == 4
            assert a["task"] == TASK and a["seed"] == seed and ep["task"] == sim.INSTRUCTIONS[TASK]
            check_annotation(kind, a.get("m"), a.get("n"), T)
            if kind == "expert":
                assert "m" not in a and "n" not in a
                continue
            m, n = a["m"], a["n"]
            assert 0 < m < n < T - 1
            assert X_MIN <= n - m <= round(4.0 * FPS)
            # frames 0..m are the expert's, rendered once and reused
            np.testing.assert_array_equal(ep["frames"][:m + 1], eps["expert"]["frames"][:m + 1])
            # the ground truth's assumption: the pause adds x frames, the retry 2x (up to DT_TOL)
            extra = (n - m) * (1 if kind == "hesitation" else 2)
            assert abs(T - (len(eps["expert"]["frames"]) + extra)) <= sim.DT_TOL


def test_hesitation_is_still(episodes):
    for seed, eps in episodes.items():
        ep = eps["hesitation"]
        m, n = ep["meta"]["m"], ep["meta"]["n"]
        f, obs = ep["frames"], ep["observation.state"].astype(np.float64)
        still = pixel_change(f[m:n + 1], f[m]).max()
        limit = 0.2 if ep["meta"]["pause"] == "hold" else 1.0  # a jitter moves the hand by up to 3 mm
        assert still < limit, f"seed {seed}: frames of the pause differ by {still:.2f} from frame m"
        # over as many frames from m the expert changes the picture far more than that
        E = eps["expert"]["frames"]
        assert pixel_change(E[m:m + n - m + 1], E[m]).max() > 2.0
        hand = np.linalg.norm(obs[m:n + 1, :3] - obs[m, :3], axis=1).max()
        assert hand < (0.001 if ep["meta"]["pause"] == "hold" else 0.01)  # jitter: +-3 mm per axis, and sag
        d = goal_distance(obs[m:n + 1])
        assert np.abs(d - d[0]).max() < 0.005  # progress is flat
        assert np.abs(obs[m:n + 1, 3] - obs[m, 3]).max() < 0.01  # fingers still


def test_retry_moves_away_from_goal(episodes):
    for seed, eps in episodes.items():
        ep = eps["retry"]
        m, n = ep["meta"]["m"], ep["meta"]["n"]
        x = n - m
        obs = ep["observation.state"].astype(np.float64)
        d = goal_distance(obs)
        assert d[n] > d[m] + 0.02, f"seed {seed}: object-to-goal distance {d[m]:.3f} -> {d[n]:.3f} over [m, n]"
        assert pixel_change(ep["frames"][n:n + 1], ep["frames"][m]).max() > 2.0
        # what the ground truth assumes: frame m + k is the expert's frame m - k, played back physically
        expert = eps["expert"]["observation.state"].astype(np.float64)
        back = expert[m - x:m + 1][::-1]
        assert np.abs(d[m:n + 1] - goal_distance(back)).max() < 0.03
        assert np.linalg.norm(obs[m:n + 1, :3] - back[:, :3], axis=1).max() < 0.03
        assert np.linalg.norm(obs[n, 4:7] - expert[m - x, 4:7]) < 0.02


def test_episodes_succeed(episodes):
    """Meta-World's own success test on the last frame of every episode, and not inside a segment."""
    for seed, eps in episodes.items():
        env = sim.make_env(TASK, seed)
        sim.Rollout(env)  # reset: sets the goal the env judges success against
        for kind, ep in eps.items():
            obs, act = ep["observation.state"].astype(np.float64), ep["action"]
            _, info = env.evaluate_state(obs[-1], act[-1])
            assert info["success"], f"seed {seed} {kind}: last frame is not a success"
            if kind != "expert":
                m, n = ep["meta"]["m"], ep["meta"]["n"]
                assert not any(env.evaluate_state(obs[t], act[t])[1]["success"] for t in range(m, n + 1))
        env.close()


def test_deterministic(episodes):
    again = sim.generate(TASK, SEEDS[1], kinds=("retry",), size=SIZE, fps=FPS)
    assert len(again) == 1
    ref = episodes[SEEDS[1]]["retry"]
    np.testing.assert_array_equal(again[0]["frames"], ref["frames"])
    np.testing.assert_array_equal(again[0]["observation.state"], ref["observation.state"])
    assert again[0]["meta"] == ref["meta"]


def test_camera_upright():
    """The goal marker appears where a pinhole projection of the corner camera puts it, and world-up is
    image-up (a vertical flip instead of the 180-degree turn would mirror the scene left to right)."""
    env = sim.make_env(TASK, SEEDS[0])
    ro = sim.Rollout(env)
    cam = sim.Camera(env, 128, "corner")
    try:
        img = cam()
    finally:
        cam.close()
    model, data = env.model, env.data
    c = model.camera("corner").id
    pos, rot = data.cam_xpos[c], data.cam_xmat[c].reshape(3, 3)
    focal = 64 / np.tan(np.deg2rad(model.cam_fovy[c]) / 2)

    def pixel(p):  # (row, col) in the delivered frame; the camera looks along its -z, image up = its +y
        v = rot.T @ (p - pos)
        row, col = 64 - focal * v[1] / -v[2], 64 + focal * v[0] / -v[2]
        return np.array([127 - row, 127 - col])  # the corner camera is mounted upside down

    goal = ro.obs[0][36:39]
    blue = np.argwhere((img[..., 2] > 120) & (img[..., 0] < 60) & (img[..., 1] < 60))  # goal site rgba 0 0 .8
    assert len(blue) >= 3
    assert np.abs(blue.mean(0) - pixel(goal)).max() < 4
    assert pixel(goal + [0, 0, 0.1])[0] < pixel(goal)[0] - 5  # higher in the world is higher in the image


def test_datasets(tmp_path):
    """main() writes the three LeRobot v3.0 splits with annotations that eval.py reads back."""
    import eval as wvm_eval
    from data import read_lerobot

    out = tmp_path / "mw"
    sim.main(["--out", str(out), "--train-tasks", TASK, "--unseen-tasks", "reach-v3", "--seeds-train", "1",
              "--seeds-heldout", "1", "--size", "32", "--codec", "libx264"])
    seeds = {}
    for split, kinds in (("train", {"expert"}), ("heldout_seen", set(sim.KINDS)), ("heldout_unseen", set(sim.KINDS))):
        root = out / split
        info = json.loads((root / "meta" / "info.json").read_text())
        assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
        ann = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
        assert {a["kind"] for a in ann} == kinds and [a["episode"] for a in ann] == list(range(len(ann)))
        assert all(a["instruction"] == sim.INSTRUCTIONS[a["task"]] and a["embodiment"] == "sawyer" for a in ann)
        eps = read_lerobot(str(root))
        assert [e.T for e in eps] == [a["T"] for a in ann]
        items, problems = wvm_eval.load_annotated(str(root), fps=2)
        assert not problems and len(items) == len(ann)
        seeds[split] = {(a["task"], a["seed"]) for a in ann}
    assert {t for t, _ in seeds["heldout_unseen"]} == {"reach-v3"}
    assert not seeds["train"] & seeds["heldout_seen"]
    # a rerun keeps finished splits
    sim.main(["--out", str(out), "--train-tasks", TASK, "--unseen-tasks", "reach-v3", "--seeds-train", "1",
              "--seeds-heldout", "1", "--size", "32", "--codec", "libx264"])
    # the README's default run on this set, with a very short training: both benches write their JSON
    import demo
    demo.prepare(str(out))
    results = demo.train_and_eval(str(out), str(tmp_path / "run"), dict(size="tiny", resolution=32, max_steps=3,
                                  batch_size=4, micro_batch=4, num_workers=0), seed=0)
    for split in demo.SPLITS:
        for bench in ("suboptimal", "expert"):
            assert (tmp_path / "run" / f"{split}_{bench}.json").exists()
            assert {m for m, _ in results[split, bench]} == {"wvm", "time", "constant"}
        assert demo.summary_row(results, split, "time")[2] == pytest.approx(1.0)  # Expert-VOC of t / (T - 1)


def test_split_regenerated_when_encoding_fails(tmp_path, monkeypatch):
    """A mux error mid-split (SVT-AV1 does this now and then) regenerates the split: same episodes, same video."""
    import data

    argv = ["--train-tasks", TASK, "--unseen-tasks", "reach-v3", "--seeds-train", "1", "--seeds-heldout", "1",
            "--size", "32", "--codec", "libx264"]
    sim.main(["--out", str(tmp_path / "ok"), *argv])
    write, calls = data._Mp4.write, []

    def flaky(self, frames):
        calls.append(len(frames))
        if len(calls) == 2:  # the second episode of the first split
            raise av.error.ArgumentError(22, "Invalid argument", self.c.name)
        return write(self, frames)

    monkeypatch.setattr(data._Mp4, "write", flaky)
    sim.main(["--out", str(tmp_path / "flaky"), *argv])
    for split in ("train", "heldout_seen", "heldout_unseen"):
        a, b = tmp_path / "ok" / split, tmp_path / "flaky" / split
        assert (a / "annotations.jsonl").read_text() == (b / "annotations.jsonl").read_text()
        video = "videos/observation.images.main/chunk-000/file-000.mp4"
        frames = []
        for root in (a, b):
            with av.open(str(root / video)) as c:
                frames.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
        assert frames[0].shape == frames[1].shape
        # the same rendered frames (rendering is exact, see test_deterministic; the encoder is not quite)
        assert np.abs(frames[0].astype(np.float64) - frames[1]).mean() < 0.5
    assert not list((tmp_path / "flaky").glob("*.partial-*"))

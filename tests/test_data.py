"""data.py and encode_text.py: LeRobot writers/readers, clip sampling, bad data, text cache.

Every video frame encodes its indices in gray levels that survive lossy AV1/H.264 compression:
top half = 16 + 5 * frame index, bottom half = 40 + 40 * episode number. Decoding them back checks
which frames a clip really holds against hand-computed indices.
"""
import copy
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import data
import encode_text
import sim

FPS = 10
LENGTHS = [40, 26, 33]  # native frames of episodes 0, 1, 2 (<= 47 so gray levels stay below 255)
TASKS = ["pick up the cube", "open the drawer", "pick up the cube"]


def make_frames(e, T, H=64, W=64):
    f = np.zeros((T, H, W, 3), np.uint8)
    f[:, : H // 2] = (16 + 5 * np.arange(T)).astype(np.uint8)[:, None, None, None]
    f[:, H // 2:] = 40 + 40 * e
    return f


def codes(x):
    """[3, n, S, S] in [-1, 1] -> (frame indices, episode numbers) read back from the gray levels."""
    g = (x.mean(0) + 1) * 127.5
    q = x.shape[-2] // 4
    frame = torch.round((g[:, :q].mean((1, 2)) - 16) / 5).long()
    episode = torch.round((g[:, -q:].mean((1, 2)) - 40) / 40).long()
    return frame.tolist(), episode.tolist()


def episodes(n=3):
    for e in range(n):  # a generator: the writer must stream
        T = LENGTHS[e]
        yield {"frames": make_frames(e, T), "task": TASKS[e], "observation.state": np.random.rand(T, 3),
               "action": np.random.rand(T, 2)}


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    sim.write_lerobot(root / "v30", episodes(), FPS, version="v3.0", codec="libsvtav1", files_max_episodes=2)
    sim.write_lerobot(root / "v21", episodes(), FPS, version="v2.1", codec="libx264")
    return root


# ----------------------------------------------------------------------------- resampling


def test_resample_rule():
    # T' = round((T-1) * target / native) + 1, frame k = round_half_up(k * (T-1) / (T'-1))
    assert data.resample(40, 10, 2).tolist() == [0, 5, 10, 15, 20, 24, 29, 34, 39]  # 19.5 -> 20
    assert data.resample(100, 30, 2).tolist() == [0, 14, 28, 42, 57, 71, 85, 99]
    assert data.resample(31, 30, 2).tolist() == [0, 15, 30]
    assert data.resample(5, 10, 20).tolist() == [0, 1, 2, 3, 4]  # never upsample
    assert data.resample(1, 30, 2).tolist() == [0]
    assert data.resample(0, 30, 2).tolist() == []


# ----------------------------------------------------------------------------- writers


def test_write_lerobot_v30_layout(lerobot):
    root = lerobot / "v30"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["features"]["observation.images.main"]["info"]["video.codec"] == "av1"
    assert info["features"]["observation.state"]["shape"] == [3]
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    v = "videos/observation.images.main/"
    assert [r[v + "file_index"] for r in ep] == [0, 0, 1]  # two episodes per mp4
    assert [r[v + "from_timestamp"] for r in ep] == [0.0, 4.0, 0.0]
    assert [r[v + "to_timestamp"] for r in ep] == [4.0, 6.6, 3.3]
    assert [r["dataset_from_index"] for r in ep] == [0, 40, 66] and ep[2]["dataset_to_index"] == 99
    assert [r["tasks"] for r in ep] == [[t] for t in TASKS]
    d = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert d.column("index").to_pylist() == list(range(66))
    assert d.column("episode_index").to_pylist() == [0] * 40 + [1] * 26
    assert d.column("task_index").to_pylist() == [0] * 40 + [1] * 26
    assert d.column("timestamp").to_pylist()[41] == pytest.approx(0.1)
    assert d.schema.field("observation.state").type.list_size == 3
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == TASKS[:2] and tasks.column("task_index").to_pylist() == [0, 1]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["index"]["max"] == [98] and stats["index"]["count"] == [99]
    assert np.array(stats["observation.images.main"]["mean"]).shape == (3, 1, 1)


def test_write_lerobot_v21_layout(lerobot):
    root = lerobot / "v21"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 3
    assert info["features"]["observation.images.main"]["info"]["video.codec"] == "h264"
    eps = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert eps[1] == {"episode_index": 1, "tasks": [TASKS[1]], "length": 26}
    assert [json.loads(x) for x in (root / "meta/tasks.jsonl").read_text().splitlines()] == [
        {"task_index": 0, "task": TASKS[0]}, {"task_index": 1, "task": TASKS[1]}]
    assert len((root / "meta/episodes_stats.jsonl").read_text().splitlines()) == 3
    assert pq.read_table(root / "data/chunk-000/episode_000002.parquet").num_rows == 33
    assert (root / "videos/chunk-000/observation.images.main/episode_000002.mp4").exists()


def test_write_lerobot_image_stats_are_exact(lerobot):
    # per channel in [0, 1] over every pixel of the episode (<= 100 frames are all taken), against float64 numpy
    for e, line in enumerate((lerobot / "v21/meta/episodes_stats.jsonl").read_text().splitlines()):
        got = json.loads(line)["stats"]["observation.images.main"]
        x = make_frames(e, LENGTHS[e]).astype(np.float64).reshape(-1, 3) / 255
        want = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
        for k, w in want.items():
            np.testing.assert_allclose(np.array(got[k]).reshape(3), w, rtol=1e-12, err_msg=k)
        assert got["count"] == [LENGTHS[e]]
    assert json.loads(line)["stats"]["observation.images.main"]["max"] == [[[(16 + 5 * 32) / 255]]] * 3


# ----------------------------------------------------------------------------- readers


@pytest.mark.parametrize("version", ["v30", "v21"])
def test_read_lerobot_and_decode(lerobot, version):
    eps = data.read_dataset(lerobot / version)
    assert [e.T for e in eps] == LENGTHS and [e.instruction for e in eps] == TASKS
    assert all(e.fps == FPS for e in eps)
    if version == "v30":
        assert eps[1].video == eps[0].video and eps[1].start == 4.0
    for e, ep in enumerate(eps):
        want = [0, 7, ep.T - 1, 3, 3, ep.T - 2]
        x = data.decode_frames(ep, want, 32)
        assert x.shape == (3, 6, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
        assert codes(x) == (want, [e] * 6)
    native = data.decode_frames(eps[0], [1], None)
    assert native.shape == (3, 1, 64, 64)
    with pytest.raises(IndexError):
        data.decode_frames(eps[0], [40], 32)


@pytest.mark.parametrize("codec,gop", [("libsvtav1", 2), ("libx264", 30)])
def test_sparse_decode_matches_every_frame(tmp_path, codec, gop):
    # 120 frames: top half = i % 40, bottom half = i // 40; seeks (gop 2) and decoding through (gop 30)
    f = np.concatenate([make_frames(b, 40) for b in range(3)])
    sim.write_lerobot(tmp_path / "ds", [{"frames": f, "task": "t"}], 30, codec=codec, gop=gop)
    (ep,) = data.read_lerobot(tmp_path / "ds")
    rng = np.random.default_rng(0)
    for _ in range(6):
        want = rng.choice(120, size=9, replace=False)
        lo, hi = codes(data.decode_frames(ep, want, 32))
        assert [40 * b + a for a, b in zip(lo, hi)] == want.tolist()


def test_resize_center_crop(tmp_path):
    f = np.zeros((4, 48, 96, 3), np.uint8)
    f[:, :, :24] = 255  # a white band on the left quarter falls outside the center crop
    f[:, :, 24:72] = 100
    sim.write_lerobot(tmp_path / "wide", [{"frames": f, "task": "t"}], FPS, codec="libx264")
    (ep,) = data.read_lerobot(tmp_path / "wide")
    x = data.decode_frames(ep, [0], 32)  # 48x96 -> 32x64 -> center 32x32
    assert x.shape == (3, 1, 32, 32)
    assert abs(float((x[:, :, :, 2:-2].mean() + 1) * 127.5) - 100) < 3


def test_camera_key_error(lerobot):
    with pytest.raises(ValueError, match="observation.images.main"):
        data.read_lerobot(lerobot / "v30", camera="observation.images.wrist")


def test_manifest(lerobot, tmp_path, caplog):
    video = lerobot / "v21/videos/chunk-000/observation.images.main/episode_000000.mp4"
    lines = [{"video": str(video), "instruction": "pick", "kind": "hesitation", "m": 3, "n": 9},
             {"video": str(video), "instruction": "pick", "start": 1.0, "end": 2.5},
             {"video": "missing.mp4", "instruction": "pick"},
             {"video": str(video), "instruction": ""}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{not json\n")
    eps = data.read_dataset(path)
    assert len(eps) == 2
    assert eps[0].T == 40 and eps[0].extra == {"kind": "hesitation", "m": 3, "n": 9}
    assert eps[1].T == 15 and eps[1].start == 1.0
    assert codes(data.decode_frames(eps[1], [0, 14], 32))[0] == [10, 24]
    assert [e.episode_index for e in eps] == [0, 1]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[2:3] + lines[:1]))  # a line left out shifts nothing
    assert [e.episode_index for e in data.read_dataset(path)] == [1]
    path.write_text("".join(json.dumps(x) + "\n" for x in [
        {"video": str(video), "instruction": "pick", "fps": "eight"},
        {"video": str(video), "instruction": "pick", "start": "zero"},
        {"video": str(video), "instruction": "pick", "fps": float("nan")},
        {"video": str(video), "instruction": "pick", "start": float("nan")}]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        assert data.read_dataset(path) == []
    assert [r.getMessage().split("): ")[1] for r in caplog.records] == [
        "bad manifest line (could not convert string to float: 'eight')",
        "bad manifest line (could not convert string to float: 'zero')",
        "bad manifest line (fps nan: must be a positive number)", "bad manifest line (start nan, end 4: not finite)"]
    path.write_bytes(path.read_bytes() + b'{"video": "x.mp4", "instruction": "caf\xe9"}\n')
    with pytest.raises(data.DataError, match=rf"^{path}:5: not UTF-8 text \(invalid continuation byte at column 39\)"):
        data.read_dataset(path)
    path.write_text("".join(json.dumps(x) + "\n" for x in [  # the video is 4 s long: a span past it is said
        {"video": str(video), "instruction": "pick", "start": 1.0, "end": 6.0},
        {"video": str(video), "instruction": "pick", "start": -1.0},
        {"video": str(video), "instruction": "pick", "start": 1.0, "end": 4.04}]))  # within half a frame
    skipped = []
    assert [e.T for e in data.read_dataset(path, skipped=skipped)] == [30]
    assert [why for _, why in skipped] == ["video shorter than metadata (span 1.000-6.000s, the video's 0.000-4.000s)",
                                           "video shorter than metadata (span -1.000-4.000s, the video's 0.000-4.000s)"]


def test_egodex(tmp_path):
    h5py = pytest.importorskip("h5py")
    task = tmp_path / "part1" / "fold_cloth"
    for n, attrs in enumerate([{"llm_description": "fold the cloth"},
                               {"llm_description": "fold", "llm_description2": "unfold the cloth",
                                "which_llm_description": 2, "llm_type": "reversible"},
                               {}, None, {"description": np.bytes_(b"fold the caf\xe9 cloth")},
                               {"llm_description": 3.0}, {"description": "hang the cloth"}]):
        mp4 = sim.Mp4Writer(task / f"{n}.mp4", 30, "libx264", 32, 32, None, 30)
        mp4.write(make_frames(n % 4, 12, 32, 32))
        mp4.close()
        if attrs is not None:
            with h5py.File(task / f"{n}.hdf5", "w") as f:
                f.attrs.update(attrs)
    skipped = []
    eps = data.read_dataset(tmp_path, skipped=skipped)  # found by its hdf5 files
    assert [e.instruction for e in eps] == ["fold the cloth", "unfold the cloth", "hang the cloth"]
    assert [e.episode_index for e in eps] == [0, 1, 6]  # a file left out shifts no other episode's number
    assert [why for _, why in skipped] == [
        "no instruction (2.hdf5 has no llm_description/description text)", "no instruction (3.hdf5 not found)",
        "unreadable hdf5 (attribute description is not UTF-8 text (invalid continuation byte at byte 12))",
        "no instruction (5.hdf5 has no llm_description/description text)"]
    assert eps[1].T == 12 and eps[1].fps == 30 and eps[1].extra["task"] == "fold_cloth"
    assert codes(data.decode_frames(eps[1], [11], 32)) == ([11], [1])


def test_egodex_hdf5_without_its_mp4_is_said_and_keeps_the_numbers(tmp_path):
    h5py = pytest.importorskip("h5py")
    task = tmp_path / "part1" / "pour"
    for n in range(3):
        if n != 1:  # 1.mp4 lost (a partial download), 1.hdf5 there
            mp4 = sim.Mp4Writer(task / f"{n}.mp4", 30, "libx264", 32, 32, None, 30)
            mp4.write(make_frames(n, 12, 32, 32))
            mp4.close()
        with h5py.File(task / f"{n}.hdf5", "w") as f:
            f.attrs["llm_description"] = "pour the water"
    skipped = []
    eps = data.read_egodex(tmp_path, skipped=skipped)
    assert [e.episode_index for e in eps] == [0, 2]  # 2 keeps its number
    assert skipped == [(str(task / "1.mp4"), "missing video (1.hdf5 has no 1.mp4)")]
    with pytest.raises(data.DataError, match=rf"^{tmp_path / 'part2'}: not an EgoDex root"):  # a mistyped path
        data.read_egodex(tmp_path / "part2")


# ----------------------------------------------------------------------------- clips


def expected_clip(T, t, mode, h=4):
    """The clip (DESIGN.md: clip edges, rewinding) written independently of data.py: (native indices, values) [9]."""
    native = data.resample(T, FPS, 2.0)
    n = len(native)
    k = [min(max(j, 0), n - 1) for j in range(t - h, t + h + 1)]
    if mode == "descending":
        k = k[::-1]
    if mode == "plateau":
        k = [t] * 9
    return [int(native[j]) for j in k], [j / (n - 1) for j in k]


@pytest.mark.parametrize("rewind,plateau,mode", [(0, 0, "rising"), (1, 0, "descending"), (1, 1, "plateau")])
def test_clip_modes(lerobot, rewind, plateau, mode):
    eps = data.read_lerobot(lerobot / "v30")
    ds = data.ClipDataset(eps, fps=2.0, size=32, rewind=rewind, plateau=plateau, prefix=0.0, seed=1)
    for i in range(4):
        s = ds[i]
        e = int(s["episode"].split("/")[1])
        t = ds.plan(i)["t"]
        idx, val = expected_clip(LENGTHS[e], t, mode)
        assert s["mode"] == mode and not s["prefix_randomized"] and s["text"] == TASKS[e]
        assert s["frame_index"].tolist() == idx
        assert codes(s["frames"]) == (idx, [e] * 9)
        assert s["values"].tolist() == pytest.approx(val[:5])
        assert s["frames"].shape == (3, 9, 32, 32)


def test_clip_hand_computed():
    # episode of 40 frames at 10 fps -> 2 fps: native [0, 5, 10, 15, 20, 24, 29, 34, 39], T' = 9
    ep = data.Episode("x", "unused.mp4", 0.0, 4.0, FPS, 40, "t", 0)
    ds = data.ClipDataset([ep], fps=2.0, prefix=0.0)
    cases = {("rising", 3): [0, 0, 5, 10, 15, 20, 24, 29, 34], ("rising", 8): [20, 24, 29, 34, 39, 39, 39, 39, 39],
             ("descending", 5): [39, 39, 34, 29, 24, 20, 15, 10, 5], ("plateau", 5): [24] * 9}
    values = {("rising", 3): [0, 0, 1 / 8, 2 / 8, 3 / 8], ("rising", 8): [4 / 8, 5 / 8, 6 / 8, 7 / 8, 1],
              ("descending", 5): [1, 1, 7 / 8, 6 / 8, 5 / 8], ("plateau", 5): [5 / 8] * 5}
    seen = set()
    for i in range(2000):
        p = ds.plan(i)
        key = (p["mode"], p["t"])
        if key in cases:
            assert p["frame_index"].tolist() == cases[key]
            assert p["values"].tolist() == pytest.approx(values[key])
            seen.add(key)
    assert seen == set(cases)


def test_clip_ratios_and_value_shapes(lerobot):
    eps = data.read_lerobot(lerobot / "v30")
    ds = data.ClipDataset(eps, fps=2.0, size=32, length=10**6)
    plans = [ds.plan(i) for i in range(4000)]
    mode = np.array([p["mode"] for p in plans])
    rewound = mode != "rising"
    assert abs(rewound.mean() - 0.5) < 0.03
    assert abs((mode[rewound] == "plateau").mean() - 0.1) < 0.025
    rand = np.array([p["prefix_randomized"] for p in plans])
    assert abs(rand.mean() - 0.5) < 0.03
    prefix = np.array([p["values"][0] for p in plans])[rand]
    assert abs(prefix.mean() - 0.5) < 0.03 and prefix.min() >= 0 and prefix.max() <= 1
    # drawn from U[0, 1] (~2000 draws), not only centred on 0.5: its spread, and a quarter below 0.25
    assert abs(prefix.std() - 12 ** -0.5) < 0.02 and abs((prefix < 0.25).mean() - 0.25) < 0.03
    for p in plans:
        v = p["values9"]
        if p["mode"] == "rising":
            assert np.all(np.diff(v) >= 0)
        elif p["mode"] == "descending":
            assert np.all(np.diff(v) <= 0) and v[0] > v[-1]
        else:
            assert np.all(v == v[0])
        if not p["prefix_randomized"]:
            assert p["values"][0] == pytest.approx(v[0])
        assert p["values"][1:].tolist() == pytest.approx(v[1:5])


def test_text_dropout_changes_nothing_else():
    # text dropout is drawn after every other choice: the clips, values and noise seeds stay those of p = 0, and
    # the share of dropped instructions is p (binomial, 4000 draws: std 0.007)
    ep = data.Episode("x", "unused.mp4", 0.0, 4.0, FPS, 40, "t", 0)
    plans = {p: [data.ClipDataset([ep], fps=2.0, text_dropout=p, length=10**6).plan(i) for i in range(4000)]
             for p in (0.0, 0.3, 1.0)}
    for p, ps in plans.items():
        assert abs(np.mean([q["text_dropped"] for q in ps]) - p) < 0.025
        for a, b in zip(plans[0.0], ps):
            assert a["frame_index"].tolist() == b["frame_index"].tolist() and a["seed"] == b["seed"]
            assert a["values"].tolist() == b["values"].tolist() and a["mode"] == b["mode"]


def test_paraphrases_draw_a_wording_and_change_nothing_else():
    # an instruction with 3 other wordings is read in each of the 4 about a quarter of the time (4000 draws: std
    # 0.007); the draw comes after every other one, so clips, values, seeds and text dropout stay those without it;
    # an instruction the file does not name keeps its own words
    eps = [data.Episode("x", "unused.mp4", 0.0, 4.0, FPS, 40, "open the drawer", 0),
           data.Episode("y", "unused.mp4", 0.0, 4.0, FPS, 40, "close the door", 1)]
    para = {"open the drawer": ["pull the drawer open", "slide the drawer out", "pull out the drawer"]}
    plain = [data.ClipDataset(eps, fps=2.0, text_dropout=0.3, length=10**6).plan(i) for i in range(4000)]
    worded = [data.ClipDataset(eps, fps=2.0, text_dropout=0.3, paraphrases=para, length=10**6).plan(i)
              for i in range(4000)]
    for a, b in zip(plain, worded):
        assert a["frame_index"].tolist() == b["frame_index"].tolist() and a["seed"] == b["seed"]
        assert a["values"].tolist() == b["values"].tolist() and a["text_dropped"] == b["text_dropped"]
        assert a["text"] == a["episode"].instruction
    assert {b["text"] for b in worded if b["episode"].episode_index == 1} == {"close the door"}
    drawer = Counter(b["text"] for b in worded if b["episode"].episode_index == 0)
    assert set(drawer) == {"open the drawer", *para["open the drawer"]}
    assert all(abs(n / sum(drawer.values()) - 0.25) < 0.035 for n in drawer.values())


def test_mismatch_pairs_another_instruction_with_zero_values():
    # a mismatched clip reads another episode's instruction (in one of its wordings) with every value 0, the prefix
    # randomized as usual; a dropped instruction is never mismatched; the draws come last, so clips, seeds, modes
    # and the unmatched clips' values and wordings stay those without it; the share is p of the kept instructions
    eps = [data.Episode("x", "unused.mp4", 0.0, 4.0, FPS, 40, "open the drawer", 0),
           data.Episode("y", "unused.mp4", 0.0, 4.0, FPS, 40, "close the door", 1),
           data.Episode("z", "unused.mp4", 0.0, 4.0, FPS, 40, "press the button", 2)]
    para = {"close the door": ["shut the door"]}
    kw = dict(fps=2.0, text_dropout=0.2, paraphrases=para, length=10**6)
    plain = [data.ClipDataset(eps, **kw).plan(i) for i in range(4000)]
    mixed = [data.ClipDataset(eps, mismatch=0.4, **kw).plan(i) for i in range(4000)]
    wordings = {"open the drawer": {"open the drawer"}, "press the button": {"press the button"},
                "close the door": {"close the door", "shut the door"}}
    hits = []
    for a, b in zip(plain, mixed):
        assert a["frame_index"].tolist() == b["frame_index"].tolist() and a["seed"] == b["seed"]
        assert a["mode"] == b["mode"] and a["text_dropped"] == b["text_dropped"] and not a["mismatched"]
        assert a["prefix_randomized"] == b["prefix_randomized"]
        if b["text_dropped"]:
            assert not b["mismatched"]
        if not b["mismatched"]:
            assert a["values"].tolist() == b["values"].tolist() and a["text"] == b["text"]
            continue
        own = b["episode"].instruction
        other = next(k for k, w in wordings.items() if b["text"] in w)
        assert other != own
        hits.append(other)
        assert b["values"][1:].tolist() == [0.0] * 4 and b["values9"].tolist() == [0.0] * 9
        assert b["values"][0] == (a["values"][0] if a["prefix_randomized"] else 0.0)
    kept = sum(not b["text_dropped"] for b in mixed)
    assert abs(len(hits) / kept - 0.4) < 0.03
    # each of an episode's two other instructions about half the time, "shut the door" half of "close the door"'s
    counts = Counter(hits)
    assert all(abs(n / len(hits) - 1 / 3) < 0.04 for n in counts.values())
    door = [b["text"] for b in mixed if b["mismatched"] and b["text"] in wordings["close the door"]]
    assert abs(door.count("shut the door") / len(door) - 0.5) < 0.06
    with pytest.raises(data.DataError, match="at least two instructions"):
        data.ClipDataset(eps[:1], fps=2.0, mismatch=0.5)


def test_paraphrase_file_errors_name_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"open the drawer": ["pull the drawer open"]}))
    assert data.read_paraphrases(good) == {"open the drawer": ["pull the drawer open"]}
    # an instruction map ({instruction: another}, as eval.py --instructions reads) is one other wording each
    (tmp_path / "str.json").write_text('{"open the drawer": "pull the drawer open", "close it": "shut it"}')
    assert data.read_paraphrases(tmp_path / "str.json") == {"open the drawer": ["pull the drawer open"],
                                                            "close it": ["shut it"]}
    both = "or each to one other .a string"
    for name, text, msg in (("list.json", '["open the drawer"]', both), ("empty.json", '{"open the drawer": []}', both),
                            ("mixed.json", '{"a": "b", "c": ["d"]}', both), ("num.json", '{"a": 3}', both),
                            ("blank.json", '{"a": "b", "c": ""}', "instructions must be a JSON object"),
                            ("bad.json", "{not json", "cannot read paraphrases")):
        (tmp_path / name).write_text(text)
        with pytest.raises(data.DataError, match=rf"^{tmp_path / name}: .*{msg}"):
            data.read_paraphrases(tmp_path / name)
    with pytest.raises(data.DataError, match="missing.json: cannot read paraphrases"):
        data.read_paraphrases(tmp_path / "missing.json")


@pytest.mark.parametrize("option,flag,bright", [("mirror", "mirrored", (0, 1)), ("rotate", "rotated", (1, 1))])
def test_mirror_and_rotate_flip_the_frames_and_change_nothing_else(tmp_path, option, flag, bright):
    # a mirrored (rotated) clip is the same clip flipped left-right (turned by 180 degrees: the bright top-left
    # quarter ends bottom-right), cached under its own key; the draw comes after every other one, so clips, values,
    # seeds and wordings stay those without it; the share flipped is p (std 0.008)
    T = 30
    frames = np.full((T, 64, 64, 3), 30, np.uint8)
    frames[:, :32, :32] = 200  # the top-left quarter bright
    sim.write_lerobot(tmp_path / "m", [{"frames": frames, "task": "t", "observation.state": np.zeros((T, 3)),
                                        "action": np.zeros((T, 2))}], FPS, codec="libx264")
    eps = data.read_lerobot(tmp_path / "m")
    plain, flipped = (data.ClipDataset(eps, fps=2.0, size=32, **{option: p}, length=10**6) for p in (0.0, 1.0))
    a, b = plain[0], flipped[0]
    quarter = lambda x, r, c: x[..., 16 * r:16 * r + 16, 16 * c:16 * c + 16].mean()
    assert quarter(a["frames"], 0, 0) > 0.4 and quarter(a["frames"], *bright) < -0.4
    assert quarter(b["frames"], *bright) > 0.4 and quarter(b["frames"], 0, 0) < -0.4
    torch.testing.assert_close(b["frames"], a["frames"].flip(-1) if option == "mirror" else a["frames"].flip(-2, -1),
                               rtol=0, atol=0)
    assert b["clip_key"] == a["clip_key"] + f"|{flag}" and not a["clip_key"].endswith(f"|{flag}")
    half = data.ClipDataset(eps, fps=2.0, size=32, **{option: 0.5}, length=10**6)
    plans = [(plain.plan(i), half.plan(i)) for i in range(4000)]
    assert abs(np.mean([q[flag] for _, q in plans]) - 0.5) < 0.03
    assert not any(p[flag] for p, _ in plans)
    for p, q in plans:
        assert p["frame_index"].tolist() == q["frame_index"].tolist() and p["seed"] == q["seed"]
        assert p["values"].tolist() == q["values"].tolist() and p["text"] == q["text"]


def test_first_frame_leads_each_clip_and_changes_nothing_else(lerobot):
    # with first_frame every clip is led by its episode's frame 0 (read back from the gray levels), cached under its
    # own key; the frames after it, the values, seeds, modes and wordings are those of the same sample without it
    eps = data.read_lerobot(lerobot / "v21")
    plain, led = (data.ClipDataset(eps, fps=2.0, size=32, first_frame=f, length=200) for f in (False, True))
    for i in range(0, 200, 7):
        p, q = plain.plan(i), led.plan(i)
        assert q["frame_index"].tolist() == [0, *p["frame_index"].tolist()]
        assert (q["values"].tolist(), q["seed"], q["mode"], q["text"]) == (p["values"].tolist(), p["seed"], p["mode"],
                                                                           p["text"])
    for i in range(0, 200, 29):
        a, b = plain[i], led[i]
        assert b["frames"].shape == (3, 10, 32, 32) and codes(b["frames"][:, :1])[0] == [0]
        assert codes(b["frames"][:, :1])[1] == codes(a["frames"])[1][:1]  # the same episode's
        torch.testing.assert_close(b["frames"][:, 1:], a["frames"], rtol=0, atol=0)
        assert b["clip_key"] != a["clip_key"]


def test_clip_key_follows_the_video_file(lerobot, tmp_path, monkeypatch):
    """Latents are cached under the clip key: the same file read through a relative or an absolute path meets the same
    latents, and a video written again in place (a regenerated corpus) never meets the old ones."""
    shutil.copytree(lerobot / "v30", tmp_path / "v30")
    ds = data.ClipDataset(data.read_lerobot(tmp_path / "v30"), size=32, seed=3)
    key, video = ds[0]["clip_key"], ds.plan(0)["episode"].video
    assert os.path.isabs(video) and f"|{os.path.realpath(video)}@" in key
    monkeypatch.chdir(tmp_path)
    assert data.ClipDataset(data.read_lerobot("v30"), size=32, seed=3)[0]["clip_key"] == key
    st = os.stat(video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ds[0]["clip_key"] != key
    ep, frames = ds.plan(0)["episode"], ds.plan(0)["frame_index"]  # a start corrected by 0.08 s, 10000 s in
    keys = {ds.clip_key(dataclasses.replace(ep, start=x), frames) for x in (10000.46, 10000.54)}
    assert len(keys) == 2


def test_latent_cache_files_are_shared_and_killed_writes_cleared(tmp_path):
    """Cache files get the umask's permissions (a team shares a cache; mkstemp made them the owner's alone), and what
    a process killed mid-write left an hour ago is removed, a file another process is writing now is not."""
    old = os.umask(0o022)
    try:
        cache = data.LatentCache(tmp_path, "vae1")
        cache.put("clip", torch.ones(2, 2))
        (path,) = [p for p in (tmp_path / "clips-vae1").iterdir()]
        assert path.stat().st_mode & 0o777 == 0o644
        torch.testing.assert_close(cache.load("clip"), torch.ones(2, 2))
    finally:
        os.umask(old)
    stale, fresh = tmp_path / "clips-vae1" / "tmpa.tmp", tmp_path / "clips-vae1" / "tmpb.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"\x00" * 64)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    data.LatentCache(tmp_path, "vae1")
    assert not stale.exists() and fresh.exists() and path.exists()


def test_determinism_collate_and_mixture(lerobot):
    a = data.ClipDataset(data.read_lerobot(lerobot / "v30"), size=32, seed=3)
    b = data.ClipDataset(data.read_lerobot(lerobot / "v30"), size=32, seed=3)
    s, t = a[2], b[2]
    assert torch.equal(s["frames"], t["frames"]) and torch.equal(s["values"], t["values"]) and s["seed"] == t["seed"]
    batch = data.collate([a[i] for i in range(3)])
    assert batch["frames"].shape == (3, 3, 9, 32, 32) and batch["values"].shape == (3, 5)
    assert batch["seed"].dtype == torch.int64 and len(batch["text"]) == 3
    assert len(set(batch["clip_key"])) == 3 and s["clip_key"] == t["clip_key"]
    # worker processes (forked after the main process decoded) give the very same batch
    loader = torch.utils.data.DataLoader(a, batch_size=3, num_workers=2, collate_fn=data.collate)
    assert torch.equal(next(iter(loader))["frames"], batch["frames"])
    other = data.ClipDataset(a.sources, seed=4)
    assert [p["seed"] for p in map(a.plan, range(5))] != [p["seed"] for p in map(other.plan, range(5))]
    mix = data.ClipDataset([data.Source(data.read_lerobot(lerobot / "v30"), 3.0, name="a"),
                            data.Source(data.read_lerobot(lerobot / "v21"), 1.0, fps=5.0, name="b")], size=32)
    plans = [mix.plan(i) for i in range(2000)]
    share = np.mean([p["episode"].source == "v30" for p in plans])
    assert abs(share - 0.75) < 0.03
    # episode 2 (33 frames): 10 fps -> 5 fps keeps every other frame exactly
    p = next(p for p in plans if p["episode"].id == "v21/2" and p["mode"] == "rising" and 4 <= p["t"] <= 12)
    assert np.diff(p["frame_index"]).tolist() == [2] * 8


# ----------------------------------------------------------------------------- bad data


def test_bad_data_is_skipped(tmp_path, caplog, capsys):
    root = tmp_path / "bad"
    sim.write_lerobot(root, ({"frames": make_frames(e % 5, 30), "task": f"task {e}"} for e in range(10)), FPS,
                       version="v2.1", codec="libx264")
    videos = root / "videos/chunk-000/observation.images.main"
    (videos / "episode_000001.mp4").unlink()                                   # missing
    (videos / "episode_000002.mp4").write_bytes(b"\x00garbage" * 100)          # corrupt
    short = sim.Mp4Writer(videos / "episode_000003.mp4", FPS, "libx264", 64, 64, None, 2)
    short.write(make_frames(3, 3))                                             # 3 frames, metadata says 30
    short.close()
    raw = (videos / "episode_000006.mp4").read_bytes()
    (videos / "episode_000006.mp4").write_bytes(raw[: len(raw) // 2])          # truncated file
    meta = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    meta[4]["length"] = 0                                                      # zero length
    meta[5]["tasks"] = []                                                      # no instruction
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))

    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        eps = data.read_lerobot(root)
    assert [e.episode_index for e in eps] == [0, 7, 8, 9]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6
    for ep, reason in [(1, "missing video"), (2, "unreadable video"), (3, "video shorter than metadata"),
                       (4, "zero length"), (5, "no instruction"), (6, "unreadable video")]:
        assert any(f"episode {ep} (" in m and f"episode_00000{ep}.mp4" in m and reason in m for m in lines), reason
    assert "4 episodes indexed, 6 skipped" in capsys.readouterr().out

    # without probing, the bad videos are only found when decoding: the sample goes to another episode
    eps = data.read_lerobot(root, probe=False)  # episodes 0, 2, 3, 6, 7, 8, 9 (their files exist)
    ds = data.ClipDataset(eps, size=32, length=40)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        samples = [ds[i] for i in range(30)]
    assert {s["episode"] for s in samples} <= {"bad/0", "bad/7", "bad/8", "bad/9"}
    assert sum(s["retries"] for s in samples) >= 3 and {b.split(" (")[0] for b in ds.bad} == {"bad/2", "bad/3", "bad/6"}
    assert ds.failures == 3 and len(caplog.records) == 3  # one warning per bad episode
    assert any("fewer frames than the metadata says" in r.getMessage() for r in caplog.records)
    again = data.ClipDataset(eps, size=32, length=40)  # a fresh process draws the same samples
    assert [again[i]["episode"] for i in range(30)] == [s["episode"] for s in samples]


def test_a_bad_episode_leaves_out_no_episode_of_another_source_of_its_name(tmp_path):
    """/a/train and /b/train both give episode ids train/0, ...: a's video failing to decode must not drop b's."""
    for d in "ab":
        mp4 = sim.Mp4Writer(tmp_path / d / "v.mp4", FPS, "libx264", 32, 32, None, FPS)
        mp4.write(make_frames(0, 20, 32, 32))
        mp4.close()
        (tmp_path / d / "train.jsonl").write_text(json.dumps({"video": "v.mp4", "instruction": "pick"}) + "\n")
    raw = bytearray((tmp_path / "a" / "v.mp4").read_bytes())  # a's frames broken, its header whole
    at = raw.index(b"mdat")
    end = at - 4 + int.from_bytes(raw[at - 4:at], "big")
    raw[at + 4:end] = b"\xff" * (end - at - 4)
    (tmp_path / "a" / "v.mp4").write_bytes(bytes(raw))
    srcs = [data.Source(data.read_dataset(tmp_path / d / "train.jsonl")) for d in "ab"]
    assert srcs[0].episodes[0].id == srcs[1].episodes[0].id == "train/0"
    ds = data.ClipDataset(srcs, size=32, length=20)
    samples = [ds[i] for i in range(20)]  # every one b's
    assert {s["clip_key"].split("|")[1].split("@")[0] for s in samples} == {str(tmp_path / "b" / "v.mp4")}
    assert ds.failures == 1

def test_too_short_episodes_are_skipped(caplog):
    eps = [data.Episode("x", "a.mp4", 0, 1.2, FPS, 12, "t", 0), data.Episode("x", "b.mp4", 0, 4.0, FPS, 40, "t", 1)]
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        ds = data.ClipDataset(eps, fps=2.0)  # 12 frames at 10 fps -> 3 frames at 2 fps < 5
    assert [e.episode_index for e in ds.sources[0].episodes] == [1]
    assert "episode x/0 (a.mp4)" in caplog.text and "too short" in caplog.text
    with pytest.raises(ValueError, match="no usable episodes"):
        data.ClipDataset(eps[:1], fps=2.0)
    with pytest.raises(data.DataError, match=r"no source of weight > 0 has usable episodes \(x: weight 0\)"):
        data.ClipDataset([data.Source(eps, 0.0, name="x")], fps=2.0)
    # in a mixture, a weighted source without usable episodes: its share went to the others unsaid
    with pytest.raises(data.DataError, match=r"ClipDataset: y \(weight 0.5 of the mixture\) has no usable episodes "
                                             r"at 2 fps \(see the skipped episodes above\)"):
        data.ClipDataset([data.Source(eps, 1.0, name="x"), data.Source(eps[:1], 0.5, name="y")], fps=2.0)


def edit_info(root, **kw):
    path = root / "meta/info.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | kw))


def edit_episodes(root, columns):
    """Replace columns of a v3.0 dataset's episode metadata (one parquet file here)."""
    import pyarrow as pa
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    for k, v in columns.items():
        t = t.set_column(t.schema.get_field_index(k), k, pa.array(v))
    pq.write_table(t, path)


def edit_jsonl(path, lines):
    """Update the objects on some lines of a JSONL file: {line index: {key: value}}."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for n, kv in lines.items():
        rows[n] |= kv
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def not_utf8(path):
    path.write_bytes(path.read_bytes().replace(b"drawer", b"tiroir \xe9"))  # Latin-1, not UTF-8


@pytest.mark.parametrize("version,damage,msg", [
    ("v30", lambda r: edit_info(r, fps=0), "meta/info.json: fps 0: must be a positive number"),
    ("v21", lambda r: edit_info(r, fps=-10), "meta/info.json: fps -10: must be a positive number"),
    ("v30", lambda r: edit_info(r, fps=float("nan")), "meta/info.json: fps nan: must be a positive number"),
    ("v30", lambda r: edit_info(r, video_path="videos/{video_key}/chunk-{episode_chunk:03d}/file-{file_index:03d}.mp4"),
     "meta/info.json: video_path 'videos/{video_key}/chunk-{episode_chunk:03d}/file-{file_index:03d}.mp4' does not "
     "name a v3.0 video file (KeyError: 'episode_chunk'); its fields are video_key, chunk_index, file_index"),
    ("v21", lambda r: edit_info(r, video_path="videos/{chunk_index}/{video_key}/{episode_index}.mp4"),
     "meta/info.json: video_path 'videos/{chunk_index}/{video_key}/{episode_index}.mp4' does not name a v2.1 video "
     "file (KeyError: 'chunk_index'); its fields are video_key, episode_chunk, episode_index"),
    ("v21", lambda r: edit_info(r, video_path="../other/{video_key}/{episode_chunk}/{episode_index}.mp4"),
     "meta/info.json: video_path '../other/{video_key}/{episode_chunk}/{episode_index}.mp4' names "
     "'../other/observation.images.main/0/0.mp4', outside the dataset folder"),
    ("v30", lambda r: edit_info(r, video_path="/home/{video_key}/{chunk_index}-{file_index}.mp4"),
     "meta/info.json: video_path '/home/{video_key}/{chunk_index}-{file_index}.mp4' names "
     "'/home/observation.images.main/0-0.mp4', outside the dataset folder"),
    ("v30", lambda r: edit_episodes(r, {"tasks": TASKS}),
     "meta/episodes/chunk-000/file-000.parquet: column 'tasks' is string, not a list of strings"),
    ("v21", lambda r: edit_info(r, chunks_size=None),
     "meta/info.json: chunks_size None: must be a positive integer (episodes per chunk)"),
    ("v21", lambda r: edit_info(r, chunks_size=0), "meta/info.json: chunks_size 0: must be a positive integer "
     "(episodes per chunk)"),
    ("v21", lambda r: not_utf8(r / "meta/episodes.jsonl"),
     "meta/episodes.jsonl:2: not UTF-8 text (invalid continuation byte at column 49)"),
])
def test_malformed_metadata_is_named(lerobot, tmp_path, version, damage, msg):
    """A metadata file that no episode can be read from stops the reader with the file and the problem named."""
    root = tmp_path / version
    shutil.copytree(lerobot / version, root)
    damage(root)
    with pytest.raises(data.DataError) as e:
        data.read_lerobot(root)
    assert str(e.value) == f"{root}/{msg}"


def test_video_file_numbers_written_as_floats_are_read(lerobot, tmp_path, caplog):
    """pandas writes a column with a null anywhere as float64 (0.0): whole numbers name the file as integers do, a
    fraction is skipped with its reason, never a format error from deep inside."""
    shutil.copytree(lerobot / "v30", tmp_path / "v30")
    v = "videos/observation.images.main/"
    edit_episodes(tmp_path / "v30", {v + "chunk_index": [0.0, 0.0, 0.0], v + "file_index": [0.0, 0.0, 0.5]})
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        eps = data.read_lerobot(tmp_path / "v30")
    assert [e.episode_index for e in eps] == [0, 1]
    assert [e.video for e in eps] == [str(tmp_path / "v30" / v / "chunk-000/file-000.mp4")] * 2
    assert [r.getMessage() for r in caplog.records][0] == (
        f"v30: skipping episode 2: bad metadata ({v}chunk_index 0.0, file_index 0.5: not whole numbers)")
    # timestamps written as strings: float() failed naming no file ('abc'), or read them ('0.0')
    t = pq.read_table(tmp_path / "v30/meta/episodes/chunk-000/file-000.parquet")
    start = t[v + "from_timestamp"].to_pylist()
    edit_episodes(tmp_path / "v30", {v + "file_index": [0, 0, 0], v + "from_timestamp": [str(x) for x in start],
                                     v + "to_timestamp": [str(x) for x in t[v + "to_timestamp"].to_pylist()]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        assert data.read_lerobot(tmp_path / "v30") == []
    assert [r.getMessage() for r in caplog.records][0] == (
        f"v30: skipping episode 0: bad metadata ({v}from_timestamp {str(start[0])!r}, to_timestamp "
        f"{str(t[v + 'to_timestamp'][0].as_py())!r}: not numbers)")


def test_episode_lengths_and_indices_that_are_not_whole_numbers_are_named(lerobot, tmp_path, caplog):
    """A null or NaN in the episode metadata's length or dataset_from_index skips that episode with its reason, or
    falls back to the running frame count, never a TypeError from deep inside."""
    shutil.copytree(lerobot / "v30", tmp_path / "v30")
    t = pq.read_table(tmp_path / "v30/meta/episodes/chunk-000/file-000.parquet")
    length, base = t["length"].to_pylist(), t["dataset_from_index"].to_pylist()
    edit_episodes(tmp_path / "v30", {"length": [float(length[0]), float("nan"), float(length[2])],
                                     "dataset_from_index": [base[0], None, None]})
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        eps = data.read_lerobot(tmp_path / "v30")
    assert [(e.episode_index, e.T, e.extra["index_from"]) for e in eps] == [(0, length[0], 0), (2, length[2], length[0])]
    assert [r.getMessage() for r in caplog.records][0] == "v30: skipping episode 1: bad metadata (length nan: not a " \
                                                          "whole number)"


def test_episodes_slower_than_the_target_fps_are_said(caplog):
    """resample never adds frames: an episode recorded at 1 fps is read at 1 fps, each window twice the time a 2 fps
    model trained on; training and scoring say so (once per dataset), and are silent at or above the target."""
    eps = [data.Episode("ds", "v.mp4", 0.0, T / f, f, T, "lift it", i) for i, (f, T) in enumerate([(10, 40), (1, 20),
                                                                                                     (1.5, 20)])]
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        data.ClipDataset(eps, fps=2.0, size=32, h=4)
        data.warn_slow(eps[:1], 2.0, "ds")
        data.warn_slow(eps[1:2], 1.0, "ds")
    assert [r.getMessage() for r in caplog.records] == [
        "ds: 2 of 3 episodes run at fewer than 2 fps (the slowest 1 fps, episode ds/1) and are read at their own "
        "rate: each window spans more time than at 2 fps"]


def test_episodes_of_several_tasks_are_said(lerobot, tmp_path, caplog):
    """An episode that lists several tasks is read with the first, and the reader says how many do so."""
    shutil.copytree(lerobot / "v21", tmp_path / "v21")
    edit_jsonl(tmp_path / "v21/meta/episodes.jsonl", {1: {"tasks": ["lift it", "open the drawer"]}})
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        eps = data.read_lerobot(tmp_path / "v21")
    assert eps[1].instruction == "lift it"
    assert [r.getMessage() for r in caplog.records] == [
        "v21: 1 of 3 episodes list several tasks, each read with the first listed (episode 1: 'lift it' of "
        "['lift it', 'open the drawer'])"]


def test_malformed_episode_metadata_is_skipped(lerobot, tmp_path, caplog):
    """An episode whose metadata has a null video file, a span that is not finite or ends before it starts, a length
    that is not a number or tasks that are one string (not a list of them) is skipped with its reason."""
    for version in ("v30", "v21"):
        shutil.copytree(lerobot / version, tmp_path / version)
    v = "videos/observation.images.main/"
    edit_episodes(tmp_path / "v30", {v + "from_timestamp": [float("nan"), 4.0, 0.0],
                                     v + "to_timestamp": [4.0, 3.0, 3.3], v + "chunk_index": [0, 0, None]})
    edit_jsonl(tmp_path / "v21/meta/episodes.jsonl", {0: {"length": "40"}, 1: {"tasks": TASKS[1]}})
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        assert data.read_lerobot(tmp_path / "v30") == []
        assert [e.episode_index for e in data.read_lerobot(tmp_path / "v21")] == [2]
    lines = [r.getMessage() for r in caplog.records]
    assert [(m.split(" (")[0], m.split("): ")[1]) for m in lines[:2]] == [
        ("v30: skipping episode 0", "bad video span (from_timestamp nan, to_timestamp 4)"),
        ("v30: skipping episode 1", "bad video span (from_timestamp 4, to_timestamp 3)")]
    assert lines[2] == (f"v30: skipping episode 2: bad metadata ({v}chunk_index, file_index, from_timestamp or "
                        f"to_timestamp is null)")
    assert lines[3:] == [f"v21: skipping {tmp_path}/v21/meta/episodes.jsonl:1: bad metadata line (length '40': "
                         f"not an integer)",
                         f"v21: skipping {tmp_path}/v21/meta/episodes.jsonl:2: bad metadata line (tasks "
                         f"'open the drawer': a string, not a list of strings)"]


def test_an_episode_index_names_one_episode(lerobot, tmp_path, caplog):
    """Metadata whose episode_index is null or repeats an earlier one's is skipped: two episodes never share an id."""
    for version in ("v30", "v21"):
        shutil.copytree(lerobot / version, tmp_path / version)
    edit_episodes(tmp_path / "v30", {"episode_index": [0, None, 0]})
    edit_jsonl(tmp_path / "v21/meta/episodes.jsonl", {1: {"episode_index": None}, 2: {"episode_index": 0}})
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        assert [e.id for e in data.read_lerobot(tmp_path / "v30")] == ["v30/0"]
        assert [e.id for e in data.read_lerobot(tmp_path / "v21")] == ["v21/0"]
    jsonl = tmp_path / "v21/meta/episodes.jsonl"
    assert [r.getMessage() for r in caplog.records] == [
        "v30: skipping episode metadata row 1: bad metadata (episode_index None: not an integer)",
        "v30: skipping episode metadata row 2: bad metadata (episode_index 0 repeats row 0's)",
        f"v21: skipping {jsonl}:2: bad metadata line (episode_index None: not an integer)",
        f"v21: skipping {jsonl}:3: bad metadata line (episode_index 0 repeats line 1's)"]


def test_metadata_that_would_read_other_frames_is_skipped(lerobot, tmp_path, caplog):
    """A length shorter than the episode's video span or own video, spans that overlap in a shared file, tasks that
    are no list, and a manifest's fps that is not its video's: each skipped with its reason, never read as it says."""
    v = "videos/observation.images.main/"
    damages = {"short": ("v30", lambda r: edit_episodes(r, {"length": [LENGTHS[0] - 10, *LENGTHS[1:]]})),
               "overlap": ("v30", lambda r: edit_episodes(r, {v + "from_timestamp": [0.0, 0.0, 0.0],
                                                              v + "to_timestamp": [x / FPS for x in LENGTHS]})),
               "v21": ("v21", lambda r: edit_jsonl(r / "meta/episodes.jsonl", {0: {"length": LENGTHS[0] - 2},
                                                                               1: {"tasks": 5},
                                                                               2: {"tasks": {TASKS[2]: 0}}}))}
    skipped = {}
    for name, (version, damage) in damages.items():
        shutil.copytree(lerobot / version, tmp_path / name)
        damage(tmp_path / name)
        skipped[name] = []
        with caplog.at_level(logging.WARNING, logger="wvm.data"):
            kept = data.read_lerobot(tmp_path / name, skipped=skipped[name])
        assert [e.episode_index for e in kept] == {"short": [1, 2], "overlap": [2], "v21": []}[name]
    assert skipped["short"] == [("short/0", f"length ends before its video span (30 frames at {FPS} fps from 0.000s "
                                            f"end before the span's end at 4.000s)")]
    assert skipped["overlap"] == [("overlap/0", "video span overlaps another episode's (0.000-4.000s, episode 1's "
                                                "0.000-2.600s)"),
                                  ("overlap/1", "video span overlaps another episode's (0.000-2.600s, episode 0's "
                                                "0.000-4.000s)")]
    jsonl = tmp_path / "v21/meta/episodes.jsonl"
    assert skipped["v21"] == [
        ("v21/0", "video longer than metadata (40 frames in the video, 38 in the metadata)"),
        (f"{jsonl}:2", "bad metadata line (tasks 5: int, not a list of strings)"),
        (f"{jsonl}:3", "bad metadata line (tasks {'pick up the cube': 0}: dict, not a list of strings)")]
    video = lerobot / "v21" / v.replace("videos/", "videos/chunk-000/") / "episode_000000.mp4"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video": str(video), "instruction": "pick", "fps": f}) + "\n"
                                for f in (FPS, FPS / 2, True)))
    skipped = []
    assert [e.T for e in data.read_dataset(manifest, skipped=skipped)] == [40]
    assert [why for _, why in skipped] == [f"frame rate differs (the video runs at {FPS} fps, the manifest says "
                                           f"{FPS / 2:g})", "bad manifest line (fps True: not a number)"]
    (tmp_path / "info").mkdir()
    shutil.copytree(lerobot / "v30/meta", tmp_path / "info/meta", ignore=shutil.ignore_patterns("info.json"))
    (tmp_path / "info/meta/info.json").mkdir()
    with pytest.raises(data.DataError, match=r"^.*/info/meta/info.json: cannot be read \(Is a directory\)$"):
        data.read_lerobot(tmp_path / "info")


@pytest.mark.parametrize("version", ["v30", "v21"])
def test_a_frame_rate_the_videos_do_not_have_is_named(lerobot, tmp_path, version, caplog):
    """Frames are read at i / fps: info.json's fps must be the videos' own, or frames would repeat silently."""
    shutil.copytree(lerobot / version, tmp_path / version)
    edit_info(tmp_path / version, fps=2 * FPS)
    skipped = []
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        assert data.read_lerobot(tmp_path / version, skipped=skipped) == []
    assert skipped == [(f"{version}/{e}", f"frame rate differs (the video runs at {FPS} fps, info.json says "
                                          f"{2 * FPS})") for e in range(3)]


# ----------------------------------------------------------------------------- text


def tiny_encoder(tmp_path):
    tokenizer, model = encode_text.tiny_random_encoder(16)
    return tokenizer, model, model.config


def test_text_cache_round_trip(tmp_path):
    tokenizer, model, _ = tiny_encoder(tmp_path)
    texts = ["pick up the cube", "pick  up the\ncube ", "open &amp; close", "open the drawer"]
    assert encode_text.build_cache(texts, tokenizer, model, tmp_path / "cache", batch_size=2, shard_size=2,
                                   dtype=torch.float32, text_len=16) == 3
    assert encode_text.build_cache(texts, tokenizer, model, tmp_path / "cache", text_len=16) == 0  # resumes
    cache = encode_text.TextCache(tmp_path / "cache")
    assert len(cache) == 3 and "pick up the cube" in cache
    e = cache.get("pick up the cube")
    with torch.no_grad():  # independent check: the unpadded sequence through the model
        ids = [3 + zlib.crc32(w.encode()) % 2 ** 15 for w in "pick up the cube".split()] + [1]  # hashed words, </s>
        ref = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    assert e.shape == (5, 16) and e.dtype == torch.float32
    torch.testing.assert_close(e, ref, atol=1e-5, rtol=1e-5)
    assert cache.get("open & close").shape == (3, 16)  # html unescaped, then punctuation dropped, before tokenizing
    with pytest.raises(KeyError, match="no embedding for instruction 'close the drawer'"):
        cache.get("close the drawer")


def test_tiny_encoder_features_do_not_depend_on_the_other_texts(tmp_path):
    """Adding a new dataset's instructions to a cache later must not give known words other features, even where
    two words hash to the same id ("puck" and "start": a vocabulary-based tokenizer read one of them as unknown,
    which one depending on the other texts and the process)."""
    tok, model = encode_text.tiny_random_encoder(16)
    texts = ["push the puck", "start the machine"]
    assert zlib.crc32(b"puck") % 2 ** 15 == zlib.crc32(b"start") % 2 ** 15  # the collision this test is about
    got = tok(texts, max_length=8)
    for i, t in enumerate(texts):  # hashed words, </s>, then padding
        ids = [3 + zlib.crc32(w.encode()) % 2 ** 15 for w in t.split()] + [1]
        assert got["input_ids"][i].tolist() == ids + [0] * (8 - len(ids))
        assert got["attention_mask"][i].tolist() == [1] * len(ids) + [0] * (8 - len(ids))
    together = encode_text.encode(texts + ["open the drawer now"], tok, model, text_len=8)
    for t, e in zip(texts, together):
        torch.testing.assert_close(encode_text.encode([t], tok, model, text_len=8)[0], e, rtol=1e-6, atol=1e-6)
    c = encode_text.tiny_random_encoder(16, seed=1)
    assert not torch.allclose(together[0], encode_text.encode(["push the puck"], *c, text_len=8)[0])
    # case and punctuation are dropped: another casing reads as the same words, another word does not
    ec = encode_text.encode(["Push the Puck.", "push the block"], tok, model, text_len=8)
    torch.testing.assert_close(ec[0], together[0], rtol=1e-6, atol=1e-6)
    assert ec[1].shape == together[0].shape and not torch.allclose(ec[1], together[0])


def test_a_text_cache_shard_cut_short_by_a_kill_is_never_left(tmp_path, monkeypatch):
    """A run killed while a shard is written leaves no shard (a half one stopped every later run until deleted by
    hand), and the next run encodes those texts."""
    import checkpoint
    tokenizer, model, _ = tiny_encoder(tmp_path)
    real = checkpoint.save_file

    def killed(tensors, path, metadata=None):
        open(path, "wb").write(b"\x00" * 40)
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        encode_text.build_cache(["pick up the cube"], tokenizer, model, tmp_path / "cache", text_len=8)
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert encode_text.build_cache(["pick up the cube"], tokenizer, model, tmp_path / "cache", text_len=8) == 1
    assert encode_text.TextCache(tmp_path / "cache").get("pick up the cube").shape == (5, 16)  # its 4 words and </s>


def test_text_cache_errors_name_the_file(tmp_path):
    tokenizer, model, _ = tiny_encoder(tmp_path)
    tiny = {"id": "tiny:16", "flags": "--tiny_random 16 --text_len 8"}
    encode_text.build_cache(["pick up the cube"], tokenizer, model, tmp_path / "cache", text_len=8, encoder=tiny)
    with pytest.raises(encode_text.TextCacheError, match=r"made by `--tiny_random 16 --text_len 8` \(encoder tiny:16\), "
                                                         r"not `--model x` \(encoder umt5:1\)"):
        encode_text.build_cache(["open"], tokenizer, model, tmp_path / "cache", text_len=8,
                                encoder={"id": "umt5:1", "flags": "--model x"})
    cache = encode_text.TextCache(tmp_path / "cache")
    with pytest.raises(encode_text.MissingText) as e:
        cache.require(["pick up the cube", "open it", "close it"], [tmp_path / "ds.jsonl"])
    assert str(e.value) == (f"{tmp_path / 'cache'}: no embedding for 2 instruction(s): 'close it', 'open it'; add them "
                            f"with: python encode_text.py --tiny_random 16 --text_len 8 --out {tmp_path / 'cache'} "
                            f"--manifest {tmp_path / 'ds.jsonl'}")
    shard = next((tmp_path / "cache").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    with pytest.raises(encode_text.TextCacheError, match=rf"{shard}: unreadable text cache shard"):
        encode_text.TextCache(tmp_path / "cache")


def test_encode_text_reads_the_instructions_of_a_dataset_without_its_first_camera(tmp_path, monkeypatch):
    """A dataset downloaded with only the cameras trained on: its instructions are still found and encoded (the first
    camera's missing videos left none), and a run that finds no instruction says so in one line."""
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    sim.write_lerobot(tmp_path / "ds", [{"frames": {"observation.images.top": frames, "observation.images.wrist": frames},
                                          "task": t} for t in ("open the drawer", "close the drawer")], 10,
                      codec="libx264")
    shutil.rmtree(tmp_path / "ds" / "videos" / "observation.images.top")
    run = ["encode_text.py", "--tiny_random", "8", "--text_len", "8", "--lerobot", str(tmp_path / "ds"), "--out"]
    monkeypatch.setattr(sys, "argv", [*run, str(tmp_path / "cache")])
    encode_text.main()
    encode_text.TextCache(tmp_path / "cache").require(["open the drawer", "close the drawer"], [])
    shutil.rmtree(tmp_path / "ds" / "videos")
    monkeypatch.setattr(sys, "argv", [*run, str(tmp_path / "none")])
    with pytest.raises(SystemExit, match=f"{tmp_path / 'none'}: no text cache"):
        encode_text.main()


def test_the_command_a_missing_text_names_encodes_every_dataset_of_a_mixture(tmp_path, monkeypatch):
    """train.py --data=A,B names `--lerobot A --lerobot B`: both datasets' instructions are encoded (the second flag
    replaced the first, and the command, run as told, left A's missing)."""
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    for name, task in (("A", "open the drawer"), ("B", "close the drawer")):
        sim.write_lerobot(tmp_path / name, [{"frames": frames, "task": task}], 10, codec="libx264")
    (tmp_path / "t.txt").write_text("pick up the cube\n")
    monkeypatch.setattr(sys, "argv", ["encode_text.py", "--tiny_random", "8", "--text_len", "8", "--texts",
                                      str(tmp_path / "t.txt"), "--out", str(tmp_path / "cache")])
    encode_text.main()
    with pytest.raises(encode_text.MissingText) as e:
        encode_text.TextCache(tmp_path / "cache").require(["open the drawer", "close the drawer"],
                                                          [tmp_path / "A", tmp_path / "B"])
    command = str(e.value).split("add them with: python ")[1]
    assert f"--lerobot {tmp_path / 'A'} --lerobot {tmp_path / 'B'}" in command
    monkeypatch.setattr(sys, "argv", command.split())
    encode_text.main()
    encode_text.TextCache(tmp_path / "cache").require(["open the drawer", "close the drawer", "pick up the cube"], [])


def test_encode_text_names_a_texts_file_that_is_not_utf8(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_bytes(b"open the drawer\ncaf\xe9 au lait\n")  # Latin-1
    monkeypatch.setattr(sys, "argv", ["encode_text.py", "--tiny_random", "8", "--text_len", "8", "--texts",
                                      str(tmp_path / "t.txt"), "--out", str(tmp_path / "cache")])
    with pytest.raises(SystemExit, match=rf"^{tmp_path / 't.txt'}:2: not UTF-8 text"):
        encode_text.main()


def test_encode_text_refuses_a_model_and_a_random_encoder_together_or_a_missing_device(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["encode_text.py", "--model", str(tmp_path / "umt5"), "--tiny_random", "8",
                                      "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "cache")])
    with pytest.raises(SystemExit):
        encode_text.main()
    assert "give --model or --tiny_random, not both" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()
    for device in ("cudda", f"cuda:{torch.cuda.device_count()}"):  # a typo; a GPU this machine lacks
        monkeypatch.setattr(sys, "argv", ["encode_text.py", "--tiny_random", "8", "--device", device, "--texts",
                                          str(tmp_path / "t.txt"), "--out", str(tmp_path / "cache")])
        with pytest.raises(SystemExit):
            encode_text.main()
        assert f"--device {device}: no such device here" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def hf_word_tokenizer(words):
    """A saveable HF tokenizer with the tiny encoder's ids for these words (none of which collide): what
    load_encoder reads from a umT5 folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: 3 + zlib.crc32(w.encode()) % 2 ** 15 for w in words}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_encode_text_from_a_transformers_folder(tmp_path, capsys, monkeypatch):
    """encode_text.py --model on a umT5 saved by transformers: the features are the model's own, the encoder id the
    same whether it is loaded in fp32 or bf16 or saved by another transformers version, another tokenizer a new id,
    and an instruction that fills all text_len tokens is said."""
    import sys
    tokenizer, model = encode_text.tiny_random_encoder(16)
    model.save_pretrained(tmp_path / "umt5")
    hf_word_tokenizer(["open", "the", "drawer", "now", "please"]).save_pretrained(tmp_path / "umt5")
    (tmp_path / "texts.txt").write_text("open the drawer\nopen the drawer now please\n")

    def run(out, *extra):
        monkeypatch.setattr(sys, "argv", ["encode_text.py", "--model", str(tmp_path / "umt5"), "--text_len", "5",
                                          "--out", str(tmp_path / out), "--texts", str(tmp_path / "texts.txt"), *extra])
        encode_text.main()
        return encode_text.TextCache(tmp_path / out)
    cache = run("c32", "--dtype", "float32")
    torch.testing.assert_close(cache.get("open the drawer"), encode_text.encode(["open the drawer"], tokenizer, model,
                                                                                  text_len=5)[0])
    assert "1 instructions fill all 5 tokens and may be cut short" in capsys.readouterr().err
    config = json.loads((tmp_path / "umt5" / "config.json").read_text())
    (tmp_path / "umt5" / "config.json").write_text(json.dumps(config | {"transformers_version": "4.0.0"}))
    assert encode_text.encoder_id(run("c16").encoder).split(":")[1] == encode_text.encoder_id(cache.encoder).split(":")[1]
    hf_word_tokenizer(["open", "the", "drawer"]).save_pretrained(tmp_path / "umt5")
    assert encode_text.encoder_id(run("c16b").encoder).split(":")[1] != encode_text.encoder_id(cache.encoder).split(":")[1]
    from safetensors.torch import load_file, save_file

    from checkpoint import CheckpointError
    weights = tmp_path / "umt5" / "model.safetensors"
    sd = load_file(weights)
    save_file({k: v for k, v in sd.items() if ".block.1." not in k}, weights)  # read anyway, it would be half random
    with pytest.raises(CheckpointError, match=r"umt5: the encoder's weights lack \d+ tensors, e.g. encoder.block.1."):
        encode_text.load_encoder(tmp_path / "umt5", dtype=torch.float32)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"umt5: not a readable text encoder \("):
        encode_text.load_encoder(tmp_path / "umt5", dtype=torch.float32)
    (tmp_path / "umt5" / "tokenizer.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"umt5: no tokenizer could be read \("):
        encode_text.load_encoder(tmp_path / "umt5", dtype=torch.float32)


def test_encode_text_reads_t5_and_mt5_encoders_by_their_own_class(tmp_path):
    """A T5 or mT5 folder (a position bias in the first layer only) was read as a umT5 and refused as lacking
    tensors; a umT5's weights under model_type t5 would lose every other layer's bias: refused, named."""
    from transformers import MT5Config, MT5EncoderModel, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    from checkpoint import CheckpointError
    tok = hf_word_tokenizer(["open", "the", "drawer"])
    small = dict(vocab_size=3 + 2 ** 15, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    ids = tok(["open the drawer"], return_tensors="pt")
    for cls, cfg in ((T5EncoderModel, T5Config), (MT5EncoderModel, MT5Config)):
        torch.manual_seed(0)
        model = cls(cfg(**small)).eval()
        model.save_pretrained(tmp_path / cfg.model_type)
        tok.save_pretrained(tmp_path / cfg.model_type)
        tokenizer, loaded = encode_text.load_encoder(tmp_path / cfg.model_type, dtype=torch.float32)
        with torch.no_grad():
            want = model(**ids).last_hidden_state[0]
        torch.testing.assert_close(encode_text.encode(["open the drawer"], tokenizer, loaded, 8)[0], want)
    UMT5EncoderModel(UMT5Config(**small)).save_pretrained(tmp_path / "umt5")
    tok.save_pretrained(tmp_path / "umt5")
    config = json.loads((tmp_path / "umt5" / "config.json").read_text())
    (tmp_path / "umt5" / "config.json").write_text(json.dumps(config | {"model_type": "t5"}))
    with pytest.raises(CheckpointError, match=r"umt5: 1 encoder tensors a t5 encoder has no place for, e.g. encoder."
                                              r"block.1.layer.0.SelfAttention.relative_attention_bias.weight; is "):
        encode_text.load_encoder(tmp_path / "umt5", dtype=torch.float32)


def test_other_kinds_of_models_give_their_texts_states(tmp_path):
    """Beyond the paper: an encoder-decoder (BART) gives its encoder's states, not its decoder's (which AutoModel's
    output is, fed the text shifted); a CLIP folder its text tower's (AutoModel's model wants images too); a decoder
    whose tokenizer has no padding token (GPT-2's) its own states, padded with the end token."""
    from transformers import (BartConfig, BartModel, CLIPConfig, CLIPModel, GPT2Config, GPT2Model,
                              PreTrainedTokenizerFast)
    words = ["open", "the", "drawer"]
    tok, small = hf_word_tokenizer(words), dict(vocab_size=3 + 2 ** 15, max_position_embeddings=16)
    torch.manual_seed(0)
    bart = BartModel(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, **small)).eval()
    clip = CLIPModel(CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, **small),
                                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16))).eval()
    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=small["vocab_size"], n_positions=16)).eval()
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="</s>", unk_token="<unk>")
    ids = tok(["open the drawer"], return_tensors="pt")
    with torch.no_grad():
        wants = {"bart": bart.get_encoder()(**ids).last_hidden_state[0],
                 "clip": clip.text_model(**ids).last_hidden_state[0], "gpt2": gpt2(**ids).last_hidden_state[0]}
    for name, model, t in (("bart", bart, tok), ("clip", clip, tok), ("gpt2", gpt2, no_pad)):
        model.save_pretrained(tmp_path / name)
        t.save_pretrained(tmp_path / name)
        tokenizer, encoder = encode_text.load_encoder(tmp_path / name, dtype=torch.float32)
        with torch.no_grad():
            got = encode_text.encode(["open the drawer", "open"], tokenizer, encoder, 8)
        assert got[0].shape == (4, 16)  # three words and </s>
        torch.testing.assert_close(got[0], wants[name])


def test_encode_text_from_another_encoder(tmp_path, monkeypatch):
    """Beyond the paper, a transformers folder of another encoder (here a tiny BERT, as all-MiniLM-L6-v2 is one):
    its last hidden states are the features, its model type leads the cache's encoder id."""
    import sys

    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=3 + 2 ** 15, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16), add_pooling_layer=False).eval()
    bert.save_pretrained(tmp_path / "bert")
    tok = hf_word_tokenizer(["open", "close", "the", "drawer"])
    tok.save_pretrained(tmp_path / "bert")
    (tmp_path / "texts.txt").write_text("open the drawer\nclose the drawer\n")
    monkeypatch.setattr(sys, "argv", ["encode_text.py", "--model", str(tmp_path / "bert"), "--text_len", "8", "--dtype",
                                      "float32", "--out", str(tmp_path / "cache"), "--texts", str(tmp_path / "texts.txt")])
    encode_text.main()
    cache = encode_text.TextCache(tmp_path / "cache")
    for text in ("open the drawer", "close the drawer"):
        ids = tok([text], return_tensors="pt")
        with torch.no_grad():
            want = bert(**ids).last_hidden_state[0]
        torch.testing.assert_close(cache.get(text), want)
    assert cache.encoder["id"].startswith("bert:") and cache.encoder["id"].endswith(":float32:len8")
    assert cache.width() == 16  # demo.py --text_model sets train.py --text_dim from it
    # another fine-tune of the same model (same config, vocabulary and first embedding rows, one layer changed): the
    # same id (caches and models made before keep theirs), other weights, and its features are not added to this
    # cache (they were, as the same encoder's)
    other = copy.deepcopy(bert)
    with torch.no_grad():
        other.encoder.layer[0].output.dense.weight.mul_(3)
    assert encode_text.model_id(tok, other) == encode_text.model_id(tok, bert)
    assert encode_text.weights_digest(other) != encode_text.weights_digest(bert) == encode_text.weights_digest(
        copy.deepcopy(bert))
    assert cache.encoder["weights"] == encode_text.weights_digest(bert)
    with pytest.raises(encode_text.TextCacheError, match=r"cache: made by an encoder of the same id \(bert:.*\) but "
                                                         r"other weights \(another fine-tune of one model\?\)"):
        encode_text.build_cache(["push it"], tok, other, tmp_path / "cache", dtype=torch.float32, text_len=8,
                                encoder={**cache.encoder, "weights": encode_text.weights_digest(other)})
    # a tokenizer that pads on the left: the cache held the pads' states, not the instruction's
    config = json.loads((tmp_path / "bert" / "tokenizer_config.json").read_text())
    (tmp_path / "bert" / "tokenizer_config.json").write_text(json.dumps(config | {"padding_side": "left"}))
    left_tok, model = encode_text.load_encoder(tmp_path / "bert", dtype=torch.float32)
    torch.testing.assert_close(encode_text.encode(["open the drawer", "close"], left_tok, model, 8)[0],
                               cache.get("open the drawer"))
    monkeypatch.setattr(sys, "argv", [*sys.argv[:3], "--text_len", "32", *sys.argv[5:]])  # failed inside transformers
    with pytest.raises(SystemExit) as e:
        encode_text.main()
    assert str(e.value) == f"--text_len 32: {tmp_path / 'bert'} reads at most 16 tokens; pass --text_len 16 or less"
    # without its tokenizer files transformers made an empty tokenizer: every word [UNK], one feature per length
    for f in (tmp_path / "bert").glob("*token*"):
        f.unlink()
    from checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match=r"bert: no tokenizer files \(tokenizer.json, "):
        encode_text.load_encoder(tmp_path / "bert", dtype=torch.float32)
    # a run's folder is no text cache: refused, and no advice to delete it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "wvm.safetensors").write_bytes(b"a model")
    with pytest.raises(encode_text.TextCacheError) as e:
        encode_text.build_cache(["open"], tok, bert, tmp_path / "run")
    assert str(e.value) == (f"{tmp_path / 'run'}: holds wvm.safetensors, not text cache shards "
                            f"(text-*.safetensors): use another --out")


def test_wan_t5_checkpoint_layout(tmp_path):
    tokenizer, model, cfg = tiny_encoder(tmp_path)
    hf_word_tokenizer(["open", "the", "drawer"]).save_pretrained(tmp_path / "google" / "umt5-xxl")
    sd, wan = model.state_dict(), {"token_embedding.weight": model.state_dict()["shared.weight"],
                                   "norm.weight": model.state_dict()["encoder.final_layer_norm.weight"]}
    for i in range(cfg.num_layers):  # Wan2.2's key names (wan/modules/t5.py), written out by hand
        b = f"encoder.block.{i}.layer."
        wan |= {f"blocks.{i}.norm1.weight": sd[b + "0.layer_norm.weight"],
                f"blocks.{i}.attn.q.weight": sd[b + "0.SelfAttention.q.weight"],
                f"blocks.{i}.attn.k.weight": sd[b + "0.SelfAttention.k.weight"],
                f"blocks.{i}.attn.v.weight": sd[b + "0.SelfAttention.v.weight"],
                f"blocks.{i}.attn.o.weight": sd[b + "0.SelfAttention.o.weight"],
                f"blocks.{i}.pos_embedding.embedding.weight": sd[b + "0.SelfAttention.relative_attention_bias.weight"],
                f"blocks.{i}.norm2.weight": sd[b + "1.layer_norm.weight"],
                f"blocks.{i}.ffn.gate.0.weight": sd[b + "1.DenseReluDense.wi_0.weight"],
                f"blocks.{i}.ffn.fc1.weight": sd[b + "1.DenseReluDense.wi_1.weight"],
                f"blocks.{i}.ffn.fc2.weight": sd[b + "1.DenseReluDense.wo.weight"]}
    torch.save(wan, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "ti2v", "dim": 3072}))
    tok2, loaded = encode_text.load_encoder(tmp_path, dtype=torch.float32, config=cfg)  # the folder, the DiT's config
    a = encode_text.encode(["open the drawer"], tok2, loaded, text_len=16)[0]
    b = encode_text.encode(["open the drawer"], tokenizer, model, text_len=16)[0]
    torch.testing.assert_close(a, b)
    from checkpoint import CheckpointError
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")  # a VAE's
    with pytest.raises(CheckpointError, match=r"models_t5_umt5-xxl-enc-bf16.pth: not Wan2.2's umT5-XXL encoder "
                                              r"\(unexpected Wan T5 key encoder.conv1.weight\)"):
        encode_text.load_encoder(tmp_path, dtype=torch.float32, config=cfg)


# ----------------------------------------------------------------------------- the robot's state


@pytest.mark.parametrize("version", ["v30", "v21"])
def test_the_robots_state_is_read_per_episode_in_frame_order(lerobot, version):
    """read_lerobot(state=column): each episode gets its rows of the column from the data parquet files (v3.0 packs
    several episodes in one), in frame order, as float32 [T, d]; any per-frame float column will do."""
    t = pq.read_table(lerobot / version / "data")
    for column, d in (("observation.state", 3), ("action", 2)):
        eps = data.read_lerobot(lerobot / version, state=column)
        assert [e.episode_index for e in eps] == [0, 1, 2]
        for ep in eps:
            rows = [i for i, e in enumerate(t["episode_index"].to_pylist()) if e == ep.episode_index]
            rows.sort(key=lambda i: t["frame_index"][i].as_py())
            want = np.array([t[column][i].as_py() for i in rows], np.float32)
            assert ep.extra["state"].dtype == np.float32 and ep.extra["state"].shape == (ep.T, d)
            np.testing.assert_array_equal(ep.extra["state"], want)
    assert all("state" not in e.extra for e in data.read_lerobot(lerobot / version))  # only when asked


def test_a_missing_or_broken_state_is_named(lerobot, tmp_path, caplog):
    """A column the dataset lacks, or one that is not a float vector, stops with info.json named, and one that holds
    text with its parquet file named; an episode whose rows are incomplete or not finite is skipped with its reason; a
    dataset that is not LeRobot has no columns."""
    with pytest.raises(data.DataError, match=r"info.json: no feature 'observation.velocity' \(the robot's state\); "
                                             r"its vector features: observation.state, action"):
        data.read_lerobot(lerobot / "v30", state="observation.velocity")
    with pytest.raises(data.DataError, match=r"info.json: feature 'episode_index' is int64 \[1\], not a float vector"):
        data.read_lerobot(lerobot / "v30", state="episode_index")
    root = tmp_path / "ds"
    shutil.copytree(lerobot / "v30", root)
    info = json.loads((root / "meta/info.json").read_text())
    for k, (shape, shown) in enumerate(((4, "4"), (["3"], r"\['3'\]"), ([True], r"\[True\]"))):  # no [int]
        broken = tmp_path / f"shape{k}"
        shutil.copytree(root / "meta", broken / "meta")
        info["features"]["observation.state"]["shape"] = shape
        (broken / "meta/info.json").write_text(json.dumps(info))
        with pytest.raises(data.DataError, match=rf"info.json: feature 'observation.state' is float32 {shown}, not a "):
            data.read_lerobot(broken, state="observation.state")
    f = root / "data/chunk-000/file-000.parquet"  # episodes 0 and 1
    t = pq.read_table(f)
    keep = [not (e == 0 and i == 5) for e, i in zip(t["episode_index"].to_pylist(), t["frame_index"].to_pylist())]
    t = t.filter(keep)
    state = t["observation.state"].to_pylist()
    state[-1] = [0.0, float("nan"), 0.0]  # episode 1's last frame
    import pyarrow as pa
    t = t.set_column(t.schema.get_field_index("observation.state"), "observation.state",
                     pa.array(state, type=t.schema.field("observation.state").type))
    pq.write_table(t, f)
    with caplog.at_level(logging.WARNING, logger="wvm.data"):
        eps = data.read_lerobot(root, state="observation.state")
    assert [e.episode_index for e in eps] == [2]
    lines = [r.getMessage() for r in caplog.records]
    assert any("episode 0 (" in m and "observation.state incomplete" in m and "39 rows for 40 frames" in m
               for m in lines)
    assert any("episode 1 (" in m and "observation.state not finite" in m for m in lines)
    f = root / "data/chunk-000/file-001.parquet"  # episode 2's state as text
    t = pq.read_table(f)
    t = t.set_column(t.schema.get_field_index("observation.state"), "observation.state",
                     pa.array([[str(x) for x in row] for row in t["observation.state"].to_pylist()]))
    pq.write_table(t, f)
    with pytest.raises(data.DataError, match=rf"^{f}: column 'observation.state' holds string values, not numbers"):
        data.read_lerobot(root, state="observation.state")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "x.mp4", "instruction": "t"}) + "\n")
    with pytest.raises(data.DataError, match=r"m.jsonl: the state 'observation.state' is a column of a LeRobot"):
        data.read_dataset(manifest, state="observation.state")


def test_state_rows_of_other_widths_and_frame_numbers_that_are_not_integers_are_named(lerobot, tmp_path):
    """Rows of 4 and 2 values where info.json says 3 (the right total) would move values between frames; frame
    numbers written as text or missing would be read as no frames: both stop with the file and the column named."""
    import pyarrow as pa
    root = tmp_path / "ds"
    shutil.copytree(lerobot / "v30", root)
    f = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    state = t["observation.state"].to_pylist()
    state[0], state[1] = state[0] + [0.5], state[1][:2]
    frames = t["frame_index"].to_pylist()
    for column, values, msg in (("observation.state", state, "has rows of 2, 4 values, not 3 (meta/info.json)"),
                                ("frame_index", [str(i) for i in frames], "holds string values, not integers"),
                                ("frame_index", [None, *frames[1:]],
                                 "has 1 null rows: each frame needs its frame_index")):
        pq.write_table(t.set_column(t.schema.get_field_index(column), column, pa.array(values)), f)
        with pytest.raises(data.DataError) as e:
            data.read_lerobot(root, state="observation.state")
        assert str(e.value) == f"{f}: column {column!r} {msg}"


def test_a_clips_state_is_that_of_its_value_frames_and_changes_nothing_else(lerobot):
    """ClipDataset(state=True): a sample holds the state at its prefix and current frames (after o_0 when o_0 leads)
    and at frame 0; state_dropout leaves it out of that share of clips, drawn after everything else, so the clips,
    values, seeds and wordings are those of a run without the state."""
    eps = data.read_lerobot(lerobot / "v30", state="observation.state")
    by_id = {e.id: e for e in eps}
    plain = data.ClipDataset(eps, fps=2.0, size=32, length=300)
    for first in (False, True):
        ds = data.ClipDataset(eps, fps=2.0, size=32, length=300, state=True, state_dropout=0.3, first_frame=first)
        plans = [ds.plan(i) for i in range(300)]
        for i in range(0, 300, 7):
            p = plain.plan(i)
            assert (plans[i]["frame_index"][int(first):].tolist(), plans[i]["values"].tolist(), plans[i]["seed"],
                    plans[i]["text"]) == (p["frame_index"].tolist(), p["values"].tolist(), p["seed"], p["text"])
        assert 0.22 < np.mean([q["state_dropped"] for q in plans]) < 0.38
        samples = [ds[i] for i in range(0, 300, 37)]
        for s in samples:
            st = by_id[s["episode"]].extra["state"]
            np.testing.assert_array_equal(s["state"].numpy(), st[s["frame_index"].numpy()[int(first):int(first) + 5]])
            np.testing.assert_array_equal(s["start_state"].numpy(), st[0])
        batch = data.collate(samples)
        assert batch["state"].shape == (len(samples), 5, 3) and batch["start_state"].shape == (len(samples), 3)
        assert batch["state_dropped"].tolist() == [s["state_dropped"] for s in samples]
    assert "state" not in plain[0] and "state" not in data.collate([plain[0]])
    with pytest.raises(data.DataError, match=r"episode v21/0 \(.*\) has no state; read its dataset with state="):
        data.ClipDataset(data.read_lerobot(lerobot / "v21"), fps=2.0, size=32, state=True)


@pytest.mark.parametrize("out", ["folder", "gone/vae.safetensors", "vae.safetensors"])
def test_wan_vae_names_an_out_it_cannot_write_before_making_the_vae(out, tmp_path, capsys):
    """A trained VAE (minutes of work) was lost to an --out that is a folder or whose folder does not exist; a VAE
    already there (models and latent caches record its id) is never replaced."""
    import wan_vae
    (tmp_path / "folder").mkdir()
    (tmp_path / "vae.safetensors").write_bytes(b"a VAE")
    with pytest.raises(SystemExit):
        wan_vae.main(["--train", "tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / out)])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --out {tmp_path / out}: " + ("exists; delete it first or choose another --out" if out.startswith("vae")
                                              else "must name a file in an existing folder"))
    assert os.listdir(tmp_path / "folder") == [] and not (tmp_path / "gone").exists()
    assert (tmp_path / "vae.safetensors").read_bytes() == b"a VAE"


def test_a_file_written_whole_replaces_no_file_it_was_not_asked_to(tmp_path, monkeypatch):
    """The temporary file is this write's own (a fixed <path>.tmp was a user's file, replaced and then renamed away),
    and a VAE made while another came to be at its path is not written over it."""
    from checkpoint import CheckpointError, save_json, save_safetensors
    (tmp_path / "keep.safetensors.tmp").write_text("mine")
    save_safetensors({"w": torch.ones(2)}, tmp_path / "keep.safetensors")
    save_json({"a": 1}, tmp_path / "keep.safetensors.tmp.json")
    assert (tmp_path / "keep.safetensors.tmp").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors", "keep.safetensors.tmp",
                                                          "keep.safetensors.tmp.json"]
    with pytest.raises(CheckpointError, match=r"keep.safetensors: made by another process meanwhile; left as it is"):
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "keep.safetensors", replace=False)
    from safetensors.torch import load_file
    assert load_file(tmp_path / "keep.safetensors")["w"].tolist() == [1.0, 1.0]
    assert len(list(tmp_path.iterdir())) == 3  # no temporary file left behind
    # those of writes killed part-way (each had a name of its own) go once an hour old; a running one's stays
    for name, age in (("keep.safetensors.123-0123abcd.tmp", 7200), ("keep.safetensors.124-0123abcd.tmp", 60)):
        (tmp_path / name).write_text("half a file")
        os.utime(tmp_path / name, (time.time() - age,) * 2)
    save_safetensors({"w": torch.ones(2)}, tmp_path / "keep.safetensors")
    assert not (tmp_path / "keep.safetensors.123-0123abcd.tmp").exists()
    (tmp_path / "keep.safetensors.124-0123abcd.tmp").unlink()  # (it was kept)
    def no_links(src, dst):  # a file system without hard links (some network and FUSE mounts)
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(CheckpointError, match=r"keep.safetensors: made by another process meanwhile"):
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "keep.safetensors", replace=False)
    save_safetensors({"w": torch.zeros(2)}, tmp_path / "new.safetensors", replace=False)
    assert load_file(tmp_path / "new.safetensors")["w"].tolist() == [0.0, 0.0] and len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize("argv", [["encode_text.py", "--tiny_random", "8", "--batch-size", "0"],
                                  ["encode_text.py", "--tiny_random", "-4"],
                                  ["encode_text.py", "--tiny_random", "8", "--text_len", "0"],
                                  ["wan_vae.py", "--random", "tiny", "--clips", "0"],
                                  ["wan_vae.py", "--train", "tiny", "--batch", "0"],
                                  ["wan_vae.py", "--random", "tiny", "--fps", "0"]])
def test_command_line_sizes_out_of_range_are_named(argv, tmp_path, monkeypatch, capsys):
    """A size of 0 or below stops the command with the flags named, before any data is read or file written."""
    import wan_vae
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out")]
                        + (["--data", str(tmp_path / "none")] if argv[0] == "wan_vae.py" else []))
    with pytest.raises(SystemExit) as e:
        encode_text.main() if argv[0] == "encode_text.py" else wan_vae.main(sys.argv[1:])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{argv[0]}: error: " + ("--batch-size, --shard-size, --text_len and --tiny_random must be at least 1"
                                 if argv[0] == "encode_text.py" else
                                 "--resolution, --clips, --steps and --batch must be at least 1, --fps positive"))

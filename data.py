"""Dataset readers and clip sampling for WVM training and evaluation.

Readers (LeRobot v3.0 / v2.1, EgoDex, JSONL manifests) build a light in-memory index of episodes (`Episode`: a
video file, a time span in it, a frame rate, a length and an instruction); frames are decoded on demand with PyAV,
so a 400k-episode mixture never sits in memory. `ClipDataset` turns a weighted mixture of sources into the 9-frame
training clips (wvm.clip_latents encodes them) with the paper's two augmentations, `rewind` and `randomize_prefix`;
`LatentCache` keeps the encoded clips. sim.py writes LeRobot datasets.

Bad data never stops a run and never trains silently: an episode whose video is missing or
unreadable, whose video is shorter than its metadata, whose declared length runs past its span in a
file it shares with other episodes, whose length is zero or too short for a clip, whose metadata is null or of
the wrong type, or which has no instruction is skipped with one warning line naming it, each indexing ends with a
printed summary, and the readers hand the skipped episodes to a caller that reports them (`skipped=`). A dataset that
cannot be read at all raises DataError naming the file. Indexing reads only container headers (cheap at scale); a video whose
header looks fine but decodes to fewer frames than the metadata says is caught when decoding
(`VideoError`), and `ClipDataset` then samples another episode deterministically and counts it.
"""
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from checkpoint import CheckpointError, read_json, save_json

log = logging.getLogger("wvm.data")

# ----------------------------------------------------------------------------- episodes


@dataclass(slots=True)
class Episode:
    """One trajectory: frame i is the video frame shown at time `start + i / fps` of `video`."""
    source: str          # dataset name, for messages and ids
    video: str           # video file (v3.0 packs several episodes in one file)
    start: float         # seconds: time of frame 0 in the file
    end: float           # seconds: end of the episode's span in the file (start + T / fps)
    fps: float           # native frame rate
    T: int               # native number of frames
    instruction: str
    episode_index: int
    extra: dict = field(default_factory=dict)  # dataset-specific: tasks, annotation, hdf5 path, ...

    @property
    def id(self):
        return f"{self.source}/{self.episode_index}"


class VideoError(RuntimeError):
    """A video that cannot be opened or decodes to fewer frames than its metadata says."""


class DataError(ValueError):
    """A dataset that cannot be read at all (the message names the file and the problem)."""


class _Skips:
    """Counts skipped episodes by reason; one warning line per skipped item. `items` keeps (id, reason) of
    each, so a caller can report every skipped episode, not only a count."""

    def __init__(self, name):
        self.name, self.counts, self.items = name, Counter(), []

    def __call__(self, what, reason, detail="", id=None):
        log.warning("%s: skipping %s: %s%s", self.name, what, reason, f" ({detail})" if detail else "")
        self.counts[reason] += 1
        self.items.append((id or str(what), reason + (f" ({detail})" if detail else "")))

    def summary(self, kept):
        skipped = sum(self.counts.values())
        why = ", ".join(f"{n} {r}" for r, n in self.counts.most_common())
        print(f"{self.name}: {kept} episodes indexed, {skipped} skipped" + (f" ({why})" if why else ""))


def probe_video(path):
    """Container header only (no decoding) -> (fps, n_frames, start_s, end_s) of the first video stream."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            if fps <= 0:
                raise VideoError(f"{path}: unknown frame rate")
            start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
            if s.duration:
                dur = float(s.duration * s.time_base)
            elif c.duration:
                dur = c.duration / 1e6 - start
            else:
                dur = (s.frames or 0) / fps
            n = s.frames or int(round(dur * fps))
            return fps, n, start, start + dur
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot open ({e})") from None


# ----------------------------------------------------------------------------- readers


def _indexing(items, name):
    """Progress over the episodes being indexed: each one opens a video header, slow on network disks."""
    return tqdm(items, desc=f"{name}: indexing", unit="episode", leave=False, mininterval=1.0, disable=len(items) < 100)


def read_lerobot(root, camera=None, name=None, probe=True, skipped=None, state=None):
    """LeRobot dataset, v3.0 or v2.1 (from meta/info.json `codebase_version`) -> list[Episode].

    camera: video feature key (default: the first video key in info.json), or "all": one Episode per view.
    probe: open each video file's header once to check it exists, opens, runs at info.json's fps and covers its
    episodes.
    skipped: a list that receives (episode id, reason) of every episode left out.
    state: a per-frame float column of the data parquet files (e.g. observation.state, the robot's proprioception)
    read into Episode.extra["state"], float32 [T, d]; an episode whose rows are incomplete or not finite is skipped.
    Episode.extra["index_from"] is the dataset-wide `index` of the episode's frame 0 (LeRobot's global frame
    index, which progress files for LeRobot's trainers are keyed by).
    """
    root = Path(root)
    name = name or root.name
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise DataError(f"{info_path}: not found; is {root} a LeRobot dataset?")
    try:
        info = json.loads(info_path.read_text())
        version = str(info.get("codebase_version", ""))
        keys = [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]
        fps = float(info["fps"])
        video_path = str(info["video_path"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{info_path}: not a LeRobot info.json ({type(e).__name__}: {e})") from None
    except OSError as e:  # a folder, no permission
        raise DataError(f"{info_path}: cannot be read ({e.strerror or e})") from None
    if not (version.startswith("v3.") or version.startswith("v2.")):
        raise DataError(f"{info_path}: codebase_version {version!r} is not supported (v2.x, v3.x)")
    if not 0 < fps < math.inf:  # every time in the dataset is a frame count over it
        raise DataError(f"{info_path}: fps {info['fps']}: must be a positive number")
    if not keys:
        raise DataError(f"{info_path}: the dataset has no video features")
    dim = state_dim(info, info_path, state) if state else None
    if camera == "all":  # every view is an episode of its own (source name + [camera]): free training data
        return [e for k in keys for e in read_lerobot(root, k, name if len(keys) == 1 else f"{name}[{k}]", probe,
                                                      skipped, state)]
    camera = camera or keys[0]
    if camera not in keys:
        raise DataError(f"{info_path}: no video feature {camera!r}; available: {', '.join(keys)}")
    fields = dict(video_key=camera, chunk_index=0, file_index=0) if version.startswith("v3.") else dict(
        video_key=camera, episode_chunk=0, episode_index=0)
    try:  # a template that names no file is info.json's fault, not an episode's: checked once, here
        video_path.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"{info_path}: video_path {video_path!r} does not name a {version} video file "
                        f"({type(e).__name__}: {e}); its fields are {', '.join(fields)}") from None

    def video_file(**kw):  # a downloaded dataset reads its own videos, never the user's other files
        rel = video_path.format(**kw)
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise DataError(f"{info_path}: video_path {video_path!r} names {rel!r}, outside the dataset folder")
        return root / rel

    video_file(**fields)
    skip, eps, probed = _Skips(name), [], {}

    if version.startswith("v3."):
        files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DataError(f"{root / 'meta' / 'episodes'}: no episode metadata parquet files")
        v = f"videos/{camera}/"
        cols = ["episode_index", "tasks", "length", v + "chunk_index", v + "file_index", v + "from_timestamp",
                v + "to_timestamp"]
        rows = []
        for f in files:
            try:
                names = pq.read_schema(f).names
                missing = [c for c in cols if c not in names]
                if missing:
                    raise DataError(f"{f}: episode metadata lacks columns {missing}")
                index_col = ["dataset_from_index"] if "dataset_from_index" in names else []  # older v3 files lack it
                t = pq.read_table(f, columns=cols + index_col)
                tasks = t.schema.field("tasks").type
                if not (pa.types.is_list(tasks) or pa.types.is_large_list(tasks)):  # a string's letters: no tasks
                    raise DataError(f"{f}: column 'tasks' is {tasks}, not a list of strings")
                rows += t.to_pylist()
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{f}: unreadable episode metadata ({e})") from None
        index, seen = 0, {}
        for row, r in enumerate(_indexing(rows, name)):
            if whole(r.get("dataset_from_index")):  # else (absent, or null where pandas wrote it) the running count
                index = int(r["dataset_from_index"])
            where = [r[v + k] for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
            ep = r["episode_index"]
            if type(ep) is not int or ep in seen:  # an id must name one episode
                skip(f"episode metadata row {row}", "bad metadata", f"episode_index {ep!r}" + (
                    f" repeats row {seen[ep]}'s" if ep in seen else ": not an integer"))
            elif None in where:  # no file or no span to read the episode from
                skip(f"episode {ep}", "bad metadata", f"{v}chunk_index, file_index, from_timestamp or "
                     f"to_timestamp is null", id=f"{name}/{ep}")
            elif not (whole(where[0]) and whole(where[1])):  # pandas writes 3.0 in a column holding a null
                skip(f"episode {ep}", "bad metadata", f"{v}chunk_index {where[0]!r}, file_index {where[1]!r}: not "
                     f"whole numbers", id=f"{name}/{ep}")
            elif not whole(r["length"]):
                skip(f"episode {ep}", "bad metadata", f"length {r['length']!r}: not a whole number", id=f"{name}/{ep}")
            elif not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in where[2:]):  # (NaN: _add)
                skip(f"episode {ep}", "bad metadata", f"{v}from_timestamp {where[2]!r}, to_timestamp {where[3]!r}: "
                     f"not numbers", id=f"{name}/{ep}")
            else:
                video = video_file(video_key=camera, chunk_index=int(where[0]), file_index=int(where[1]))
                _add(eps, skip, probed, probe, name, video, ep, int(r["length"]), r["tasks"], fps,
                     float(where[2]), float(where[3]), index)
            if type(ep) is int:
                seen.setdefault(ep, row)
            index += int(r["length"]) if whole(r["length"]) else 0
        eps = _without_overlaps(eps, skip)
    else:
        path = root / "meta" / "episodes.jsonl"
        if not path.exists():
            raise DataError(f"{path}: not found (a v2.x LeRobot dataset lists its episodes there)")
        chunks = info.get("chunks_size", 1000)
        if type(chunks) is not int or chunks <= 0:
            raise DataError(f"{info_path}: chunks_size {chunks!r}: must be a positive integer (episodes per chunk)")
        index, seen = 0, {}  # v2.1 numbers frames through the episodes in order
        for line_no, line in enumerate(_indexing(read_text(path).splitlines(), name), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ep = r["episode_index"]
                if type(ep) is not int:
                    raise TypeError(f"episode_index {ep!r}: not an integer")
                if ep in seen:
                    raise ValueError(f"episode_index {ep} repeats line {seen[ep]}'s")
                if r.get("length") is not None and type(r["length"]) is not int:
                    raise TypeError(f"length {r['length']!r}: not an integer")
                if r.get("tasks") is not None and not isinstance(r["tasks"], list):  # a string's letters, a dict's keys
                    raise TypeError(f"tasks {r['tasks']!r}: "
                                    f"{'a string' if isinstance(r['tasks'], str) else type(r['tasks']).__name__}, "
                                    f"not a list of strings")
            except (ValueError, KeyError, TypeError) as e:
                skip(f"{path}:{line_no}", "bad metadata line", str(e))
                continue
            seen[ep] = line_no
            video = video_file(episode_chunk=ep // chunks, video_key=camera, episode_index=ep)
            _add(eps, skip, probed, probe, name, video, ep, r.get("length", 0), r.get("tasks"), fps, 0.0, None, index)
            index += r.get("length") or 0
    if state:
        eps = _attach_state(root, state, dim, eps, skip)
    multi = [e for e in eps if "tasks" in e.extra]
    if multi:  # one instruction per episode here; LeRobot lists an episode's tasks in no set order
        log.warning("%s: %d of %d episodes list several tasks, each read with the first listed (episode %d: %r of "
                    "%s)", name, len(multi), len(eps), multi[0].episode_index, multi[0].instruction,
                    multi[0].extra["tasks"])
    skip.summary(len(eps))
    if skipped is not None:
        skipped += skip.items
    return eps


def state_dim(info, info_path, column):
    """The width d of a LeRobot dataset's per-frame float feature `column` (its info.json entry: shape [d])."""
    ft = info["features"].get(column)
    if ft is None:
        others = [k for k, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") in
                  ("float32", "float64") and vector_width(f) > 1]
        raise DataError(f"{info_path}: no feature {column!r} (the robot's state); its vector features: "
                        f"{', '.join(others) or 'none'}")
    d = vector_width(ft) if isinstance(ft, dict) and ft.get("dtype") in ("float32", "float64") else 0
    if not d:
        what = f"{ft.get('dtype')} {ft.get('shape')}" if isinstance(ft, dict) else repr(ft)
        raise DataError(f"{info_path}: feature {column!r} is {what}, not a float vector [d]")
    return d


def vector_width(feature):
    """d of an info.json feature whose shape is [d] (a list of one positive int), else 0."""
    shape = feature.get("shape")
    ok = isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int) and not isinstance(shape[0], bool)
    return shape[0] if ok and shape[0] > 0 else 0


def _attach_state(root, column, dim, eps, skip):
    """Read `column` [d] of every frame from the data parquet files into each episode's extra["state"]; an episode
    whose rows do not number its frames 0..T-1 exactly, or hold a value that is not finite, is skipped."""
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise DataError(f"{root / 'data'}: no parquet files to read {column!r} from")
    ep_idx, frame, values = [], [], []
    for f in files:
        try:
            if column not in pq.read_schema(f).names:
                raise DataError(f"{f}: no column {column!r}")
            t = pq.read_table(f, columns=["episode_index", "frame_index", column])
            for k in ("episode_index", "frame_index"):  # the rows are matched to the frames by them
                if not pa.types.is_integer(t[k].type):
                    raise DataError(f"{f}: column {k!r} holds {t[k].type} values, not integers")
                if t[k].null_count:
                    raise DataError(f"{f}: column {k!r} has {t[k].null_count} null rows: each frame needs its {k}")
            col = t[column].combine_chunks()
            widths = set(pc.list_value_length(col).to_pylist()) - {dim, None} if pa.types.is_list(col.type) else ()
            if widths:  # the right total of values in rows of other widths would shift values between frames
                raise DataError(f"{f}: column {column!r} has rows of {', '.join(map(str, sorted(widths)))} values, "
                                f"not {dim} (meta/info.json)")
            flat = col.flatten() if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) else col
            if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):  # numpy would parse text
                raise DataError(f"{f}: column {column!r} holds {flat.type} values, not numbers")
            flat = flat.to_numpy(zero_copy_only=False)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{f}: unreadable column {column!r} ({e})") from None
        if flat.size != len(t) * dim:
            raise DataError(f"{f}: column {column!r} holds {flat.size} values for {len(t)} frames of width {dim} "
                            f"(meta/info.json)")
        ep_idx.append(t["episode_index"].to_numpy())
        frame.append(t["frame_index"].to_numpy())
        values.append(flat.reshape(len(t), dim).astype(np.float32))
    ep_idx, frame, values = np.concatenate(ep_idx), np.concatenate(frame), np.concatenate(values)
    order = np.lexsort((frame, ep_idx))
    ep_idx, frame, values = ep_idx[order], frame[order], values[order]
    ids = [ep.episode_index for ep in eps]
    lo, hi = np.searchsorted(ep_idx, ids, "left"), np.searchsorted(ep_idx, ids, "right")
    kept = []
    for ep, a, b in zip(eps, lo, hi):
        what = f"episode {ep.episode_index} ({ep.video})"
        if not np.array_equal(frame[a:b], np.arange(ep.T)):
            skip(what, f"{column} incomplete", f"{b - a} rows for {ep.T} frames", id=ep.id)
        elif not np.isfinite(values[a:b]).all():
            skip(what, f"{column} not finite", id=ep.id)
        else:
            ep.extra["state"] = values[a:b]
            kept.append(ep)
    return kept


def whole(x):
    """x is a whole number: an int, or a float such as 3.0 (pandas writes ints as floats in a column that holds a
    null), not a bool, None, NaN or a string."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and float(x).is_integer()


def lerobot_frame_base(root):
    """{episode_index: (the dataset-wide `index` of its frame 0, its number of rows)} from a LeRobot dataset's data
    parquet files, the rows LeRobot's trainers look frames up by ({} where they lack the columns). Metadata counts
    can be off: a skipped episodes.jsonl line, or a length that is not its episode's rows, would shift every later
    episode's. Episodes whose rows overlap in the index column are refused (DataError)."""
    out, rows = {}, {}
    for f in sorted((Path(root) / "data").rglob("*.parquet")):
        try:
            if not {"episode_index", "frame_index", "index"} <= set(pq.read_schema(f).names):
                continue
            t = pq.read_table(f, columns=["episode_index", "frame_index", "index"])
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{f}: unreadable frame index columns ({e})") from None
        null = next((c for c in ("episode_index", "frame_index", "index") if t[c].null_count), None)
        if null:
            raise DataError(f"{f}: {t[null].null_count} rows have no {null} (null): a LeRobot frame needs its "
                            f"episode_index, frame_index and index")
        ep, frame, index = (t[c].to_numpy() for c in ("episode_index", "frame_index", "index"))
        out |= {int(e): int(i) for e, i in zip(ep[frame == 0], index[frame == 0])}
        for e, n in zip(*np.unique(ep, return_counts=True)):
            rows[int(e)] = rows.get(int(e), 0) + int(n)
    spans = sorted((i, rows[e], e) for e, i in out.items())
    for (i, n, e), (j, _, f) in zip(spans, spans[1:]):  # said before any scoring: a trainer would mix their frames
        if j < i + n:
            raise DataError(f"{Path(root) / 'data'}: episode {f}'s frame 0 has index {j}, inside episode {e}'s "
                            f"{n} rows from index {i}: the index column gives two frames one index")
    return {e: (i, rows[e]) for e, i in out.items()}


def _probe_once(probed, video):
    """probe_video(video), or its VideoError, memoized in `probed`: one LeRobot v3.0 file holds many episodes."""
    if video not in probed:
        try:
            probed[video] = probe_video(video)
        except VideoError as e:
            probed[video] = e
    return probed[video]


def _without_overlaps(eps, skip):
    """eps less those whose frames in a shared v3.0 video file overlap another's: one of the two reads the other's
    frames, and the metadata cannot say which."""
    bad, by_file = {}, {}
    for e in eps:
        by_file.setdefault(e.video, []).append(e)
    for group in by_file.values():
        group.sort(key=lambda e: e.start)
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if b.start >= a.end - 0.5 / a.fps:
                    break
                bad.setdefault(a.id, (a, b))
                bad.setdefault(b.id, (b, a))
    for e, other in bad.values():
        skip(f"episode {e.episode_index} ({e.video})", "video span overlaps another episode's",
             f"{e.start:.3f}-{e.end:.3f}s, episode {other.episode_index}'s {other.start:.3f}-{other.end:.3f}s",
             id=e.id)
    return [e for e in eps if e.id not in bad]


def _add(eps, skip, probed, probe, name, video, ep_index, length, tasks, fps, start, end, index_from):
    """Check one LeRobot episode and append it to eps, or skip it with a reason. end: the end of the
    episode's span in a v3.0 file that packs several episodes (None: the episode has the file to itself)."""
    what, id = f"episode {ep_index} ({video})", f"{name}/{ep_index}"
    tasks = [t for t in (tasks or []) if isinstance(t, str) and t.strip()]
    if not length or length <= 0:
        return skip(what, "zero length", id=id)
    if not tasks:
        return skip(what, "no instruction", id=id)
    if end is not None and not 0 <= start < end < math.inf:  # NaN too: no frame could be found in it
        return skip(what, "bad video span", f"from_timestamp {start:g}, to_timestamp {end:g}", id=id)
    if end is not None and start + length / fps > end + 0.5 / fps:  # past the span: the next episode's frames
        return skip(what, "length runs past its video span",
                    f"{length} frames at {fps:g} fps from {start:.3f}s end after the span's end at {end:.3f}s", id=id)
    if not video.exists():
        return skip(what, "missing video", id=id)
    if probe:
        p = _probe_once(probed, video)
        if isinstance(p, VideoError):
            return skip(what, "unreadable video", str(p), id=id)
        if abs(p[0] - fps) > 0.01 * fps:  # frames are read at start + i / fps: a wrong rate repeats or drops them
            return skip(what, "frame rate differs", f"the video runs at {p[0]:g} fps, info.json says {fps:g}", id=id)
        have = max(0, int(round((p[3] - start) * fps)))
        if start + length / fps > p[3] + 0.5 / fps:
            return skip(what, "video shorter than metadata", f"{have} frames in the video, {length} in the metadata",
                        id=id)
        if end is None and have > length + 1:  # the episode's own file: its last frames would be left unread
            return skip(what, "video longer than metadata", f"{have} frames in the video, {length} in the metadata",
                        id=id)
    if end is not None and (end - start) * fps > length + 1.5:  # the span's last frames would be left unread
        return skip(what, "length ends before its video span",
                    f"{length} frames at {fps:g} fps from {start:.3f}s end before the span's end at {end:.3f}s", id=id)
    extra = {"index_from": int(index_from)} | ({"tasks": tasks} if len(tasks) > 1 else {})
    eps.append(Episode(name, str(video), start, start + length / fps, fps, int(length), tasks[0].strip(),
                       int(ep_index), extra))


def read_egodex(root, name=None, skipped=None):
    """EgoDex: `<part>/<task>/N.mp4` with `N.hdf5` whose attributes hold the description -> list[Episode].

    The instruction is `llm_description` (or `llm_description2` where `which_llm_description` is 2),
    else `description`; frame rate and length come from the mp4 header. An episode's index is its place among the
    sorted mp4 files and those an hdf5 names, so a file left out shifts no other episode's.
    """
    import h5py  # (here: only EgoDex needs it)

    root = Path(root)
    name = name or root.name
    skip, eps = _Skips(name), []
    # an hdf5 without its mp4 is an episode whose video is missing: said, and numbered as if the mp4 were there
    mp4s = {*root.rglob("*.mp4"), *(h.with_suffix(".mp4") for h in root.rglob("*.hdf5"))}
    if not mp4s:  # a mistyped path (encode_text.py --egodex) would add no instruction without a word
        raise DataError(f"{root}: not an EgoDex root: no <task>/N.mp4 + N.hdf5 files under it")
    for number, mp4 in enumerate(_indexing(sorted(mp4s), name)):  # a skipped one keeps its number
        h5 = mp4.with_suffix(".hdf5")
        if not mp4.exists():
            skip(mp4, "missing video", f"{h5.name} has no {mp4.name}")
            continue
        if not h5.exists():
            skip(mp4, "no instruction", f"{h5.name} not found")
            continue
        try:
            with h5py.File(h5, "r") as f:
                text = _egodex_text(f.attrs)
        except (OSError, ValueError) as e:
            skip(mp4, "unreadable hdf5", str(e))
            continue
        if not text:
            skip(mp4, "no instruction", f"{h5.name} has no llm_description/description text")
            continue
        try:
            fps, n, t0, t1 = probe_video(mp4)
        except VideoError as e:
            skip(mp4, "unreadable video", str(e))
            continue
        if n <= 0:
            skip(mp4, "zero length")
            continue
        rel = mp4.relative_to(root).with_suffix("")
        eps.append(Episode(name, str(mp4), t0, t0 + n / fps, fps, n, text, number,
                           {"path": str(rel), "task": mp4.parent.name, "hdf5": str(h5)}))
    skip.summary(len(eps))
    if skipped is not None:
        skipped += skip.items
    return eps


def _egodex_text(attrs):
    def get(k):  # text only: a number or an array is no instruction
        v = attrs.get(k)
        if isinstance(v, bytes):
            try:
                v = v.decode()
            except UnicodeDecodeError as e:
                raise ValueError(f"attribute {k} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return v.strip() if isinstance(v, str) and v.strip() else None
    which = attrs.get("which_llm_description")  # 2 or "2"
    first = ["llm_description2"] if str(which.decode(errors="replace") if isinstance(which, bytes) else which) == "2" \
        else []
    return next((get(k) for k in first + ["llm_description", "description"] if get(k)), None)


MANIFEST_KEYS = ("video", "instruction", "fps", "start", "end")


def read_manifest(path, name=None, skipped=None):
    """JSONL manifest -> list[Episode]. One line per episode:
    {"video": path (relative to the manifest), "instruction": str, "fps": native fps (optional: the video's own, checked
    against it), "start"/"end": seconds within the video (optional, default: the whole video), ...}; every other field
    (e.g. a Suboptimal-Value-Bench annotation) is kept in Episode.extra. An episode's index is its line's number
    from 0, so a line left out shifts no other episode's.
    """
    path = Path(path)
    name = name or path.stem
    skip, eps, probed = _Skips(name), [], {}
    for line_no, line in enumerate(_indexing(read_text(path).splitlines(), name), 1):
        if not line.strip():
            continue
        what = f"{path}:{line_no}"
        try:
            r = json.loads(line)
            video = path.parent / r["video"]
        except (ValueError, KeyError, TypeError) as e:
            skip(what, "bad manifest line", str(e))
            continue
        what = f"{what} ({video})"
        text = r.get("instruction")
        if not isinstance(text, str) or not text.strip():
            skip(what, "no instruction")
            continue
        if not video.exists():
            skip(what, "missing video")
            continue
        p = _probe_once(probed, video)
        if isinstance(p, VideoError):
            skip(what, "unreadable video", str(p))
            continue
        vfps, n, v0, v1 = p
        try:
            if isinstance(r.get("fps"), bool):  # float(True) is 1
                raise TypeError(f"fps {r['fps']}: not a number")
            fps = float(r.get("fps") or vfps)
            t0 = float(r.get("start", v0))
            t1 = float(r.get("end", v1))
            if not 0 < fps < math.inf:
                raise ValueError(f"fps {fps:g}: must be a positive number")
            if not (math.isfinite(t0) and math.isfinite(t1)):
                raise ValueError(f"start {t0:g}, end {t1:g}: not finite")
        except (ValueError, TypeError) as e:
            skip(what, "bad manifest line", str(e))
            continue
        if abs(fps - vfps) > 0.01 * vfps:  # frames are read at t0 + i / fps: a wrong rate repeats or drops them
            skip(what, "frame rate differs", f"the video runs at {vfps:g} fps, the manifest says {fps:g}")
            continue
        if t0 < v0 - 0.5 / fps or t1 > v1 + 0.5 / fps:  # cut to the video, the last frame would read as the end
            skip(what, "video shorter than metadata", f"span {t0:.3f}-{t1:.3f}s, the video's {v0:.3f}-{v1:.3f}s")
            continue
        t1 = min(t1, v1)
        T = max(0, math.ceil((t1 - t0) * fps - 1e-6))  # frames at t0 + i / fps that fall before t1
        if T <= 0:
            skip(what, "zero length", f"span {t0:.3f}-{t1:.3f}s")
            continue
        extra = {k: v for k, v in r.items() if k not in MANIFEST_KEYS}
        # the episode is its line (from 0): a skipped line shifts no other episode's number
        eps.append(Episode(name, str(video), t0, t0 + T / fps, fps, T, text.strip(), line_no - 1, extra))
    skip.summary(len(eps))
    if skipped is not None:
        skipped += skip.items
    return eps


def read_dataset(path, camera=None, name=None, skipped=None, state=None):
    """Any supported source by its layout: a .jsonl manifest, a LeRobot root (meta/info.json), or an
    EgoDex root (mp4 + hdf5 pairs) -> list[Episode]. skipped: a list that receives (id, reason) of every
    episode left out while indexing. state: a LeRobot column to read as each frame's state (read_lerobot)."""
    path = Path(path)
    if (path / "meta" / "info.json").exists():
        return read_lerobot(path, camera, name, skipped=skipped, state=state)
    if state:
        raise DataError(f"{path}: the state {state!r} is a column of a LeRobot dataset, and this is none")
    if path.is_file() and path.suffix == ".jsonl":
        return read_manifest(path, name, skipped)
    if path.is_dir() and next(path.rglob("*.hdf5"), None) is not None:
        return read_egodex(path, name, skipped)
    raise DataError(f"{path}: not a dataset: expected a .jsonl manifest, a LeRobot root (meta/info.json) "
                     f"or an EgoDex root (<part>/<task>/N.mp4 + N.hdf5)")


def fingerprint(episodes):
    """A short hash of what the episodes hold, not where they lie: names, lengths, frame rates, instructions, the
    sizes of their video files and their states. A run records it (train.py) so that a dataset regenerated or
    edited at the same path is not taken for the one its model was trained on; a moved copy keeps it."""
    sizes = {v: os.path.getsize(v) for v in {ep.video for ep in episodes}}
    h = hashlib.sha256()
    for ep in sorted(episodes, key=lambda ep: (ep.source, ep.episode_index)):
        h.update(json.dumps([ep.source, ep.episode_index, ep.T, round(ep.fps, 6), round(ep.start, 6),
                             ep.instruction, sizes[ep.video]]).encode())
        if "state" in ep.extra:
            h.update(np.ascontiguousarray(ep.extra["state"], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def read_text(path):
    """A text file's content (episodes.jsonl, a manifest, annotations.jsonl); bytes that are not UTF-8 are a
    DataError naming the file, the line and the column; so is a file that cannot be read (a folder, no permission)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        line, col = raw.count(b"\n", 0, e.start) + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at column {col})") from None


def load_json(path, what):
    """A JSON file's content; a missing or malformed file is a DataError naming it and `what` it should hold."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read {what}: {e}") from None


def read_paraphrases(path):
    """{instruction: [other wordings]} from a JSON file (`sim.py` writes one beside its splits; for a real dataset,
    e.g. an LLM's rewordings of its task strings), checked, with errors naming the file. A file mapping each
    instruction to one other (a string, as eval.py --instructions reads) gives each instruction that one wording."""
    d = load_json(path, "paraphrases")
    if isinstance(d, dict) and d and all(isinstance(v, str) for v in d.values()):
        return {k: [v] for k, v in check_instruction_map(d, path).items()}
    return check_paraphrases(d, path)


def check_paraphrases(d, path):
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, list) and v
                                          and all(isinstance(w, str) and w.strip() for w in v) for k, v in d.items()):
        raise DataError(f"{path}: paraphrases must be a JSON object mapping each instruction to a non-empty list of "
                        f"non-empty strings, e.g. {{\"open the drawer\": [\"pull the drawer open\"]}}, or each to "
                        f"one other (a string, as eval.py --instructions reads), not a mix of the two")
    return d


def read_instruction_map(path):
    """{instruction: another instruction} from a JSON file (eval.py --instructions: what to score each instruction's
    episodes with instead), checked, with errors naming the file."""
    return check_instruction_map(load_json(path, "instructions"), path)


def check_instruction_map(d, path):
    if not isinstance(d, dict) or not all(isinstance(v, str) and v.strip() for v in d.values()):
        raise DataError(f"{path}: instructions must be a JSON object mapping an instruction to another (a string)")
    return d


def check_names_some(path, table, instructions, what):
    """A file keyed by instruction (paraphrases, replacements) that names none of the data's instructions was written
    for other data: an error naming both, never a silent no-op."""
    used = sorted(set(instructions))
    if used and not set(used) & table.keys():
        raise DataError(f"{path}: none of the {len(used)} instructions of the data has {what} here (data: "
                        f"{used[0]!r}, ...; file: {next(iter(table), None)!r}, ...)")


# ----------------------------------------------------------------------------- frames


def warn_slow(episodes, target_fps, name):
    """Say where episodes were recorded at fewer frames per second than target_fps: resample never adds frames, so
    theirs are read at their own rate and a window of h frames spans more time than the model was trained on."""
    slow = [e for e in episodes if e.fps < target_fps * (1 - 1e-6)]
    if slow:
        log.warning("%s: %d of %d episodes run at fewer than %g fps (the slowest %g fps, episode %s) and are read at "
                    "their own rate: each window spans more time than at %g fps", name, len(slow), len(episodes),
                    target_fps, min(e.fps for e in slow), min(slow, key=lambda e: e.fps).id, target_fps)


def resample(T, native_fps, target_fps):
    """Native frame indices [T'] of a T-frame trajectory resampled to target_fps (no upsampling).

    Rule: T' = round((T - 1) * target / native) + 1 and resampled frame k is native frame
    round(k * (T - 1) / (T' - 1)) (rounding half up). So frame 0 and the last frame are always kept and
    the label k / (T' - 1) equals the native progress i / (T - 1) up to rounding; the spacing is
    within (T - 1) / (T' - 1) of native / target frames, i.e. within half a resampled step over the
    trajectory (exact when (T - 1) * target / native is an integer).
    """
    if T <= 0:
        return np.zeros(0, dtype=np.int64)
    if target_fps >= native_fps or T == 1:
        return np.arange(T, dtype=np.int64)
    n = int(math.floor((T - 1) * target_fps / native_fps + 0.5)) + 1
    if n == 1:
        return np.array([0, T - 1], dtype=np.int64) if T > 1 else np.zeros(1, dtype=np.int64)
    return np.floor(np.arange(n) * (T - 1) / (n - 1) + 0.5).astype(np.int64)


def decode_frames(episode, indices, size=None):
    """Frames `indices` (native, any order, repeats allowed) of an episode -> float32 [3, n, S, S] in [-1, 1].

    Each frame is resized (shorter side to `size`, area filter) and center-cropped to size x size;
    size=None keeps the native resolution. Only the span from the keyframe before the first needed
    frame to the last needed frame is decoded, and where keyframes are dense (LeRobot writes a
    keyframe every 2 frames) gaps between needed frames are skipped by seeking.
    Raises VideoError when the video cannot be read or lacks a requested frame.
    """
    x = torch.from_numpy(decode_uint8(episode, indices, size)).permute(3, 0, 1, 2)  # [n, H, W, 3] -> [3, n, H, W]
    return x.float().div_(127.5).sub_(1.0).contiguous()


def decode_uint8(episode, indices, size=None):
    """decode_frames' frames as the video holds them: uint8 [n, S, S, 3] (for writing them out again)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= episode.T:
        raise IndexError(f"{episode.video}: frame indices {idx.tolist()} outside [0, {episode.T}) of episode {episode.id}")
    uniq, inv = np.unique(idx, return_inverse=True)
    return _read_frames(episode.video, episode.start + uniq / episode.fps, episode.fps, size)[inv]


def _read_frames(path, times, fps, size):
    """uint8 [n, S, S, 3]: for each time (sorted, unique), the frame on screen at that time."""
    tol = 0.5 / fps  # frame k is the one whose timestamp lies within half a frame of the wanted time
    out, n, j = [None] * len(times), len(times), 0
    container = _open_video(path)
    stream = container.streams.video[0]
    tb = float(stream.time_base)
    gop, last_key = _GOP.get(str(path)), None  # smallest keyframe spacing seen in this file, in seconds
    try:
        while j < n:
            container.seek(max(0, int((times[j] - tol) / tb)), stream=stream)  # to the keyframe before
            sought, prev, conv = j, None, None
            for frame in container.decode(stream):
                t = frame.time
                if t is None:
                    raise VideoError(f"{path}: frame without timestamp")
                if frame.key_frame:
                    if last_key is not None and t > last_key:
                        gop = _GOP[str(path)] = min(gop or math.inf, t - last_key)
                    last_key = t
                while j < n and t > times[j] + tol:  # no frame within tol of times[j] (variable frame rate),
                    if prev is None:                 # so the previous one was on screen then
                        raise VideoError(f"{path}: no frame at {times[j]:.3f}s (first frame after seeking at {t:.3f}s)")
                    conv = conv if conv is not None and conv[0] is prev else (prev, _to_rgb(prev, size))
                    out[j] = conv[1]
                    j += 1
                while j < n and t >= times[j] - tol:  # this frame is the one at times[j]
                    conv = conv if conv is not None and conv[0] is frame else (frame, _to_rgb(frame, size))
                    out[j] = conv[1]
                    j += 1
                if j == n:
                    break
                if j != sought and gop is not None and times[j] - tol - t > gop:
                    break  # a keyframe lies between here and the next wanted frame: seek to it
                prev = frame
            else:
                end = f"{prev.time:.3f}s" if prev is not None else "before it"
                raise VideoError(f"{path}: video ends at {end}, no frame at {times[j]:.3f}s "
                                 f"(fewer frames than the metadata says)")
    except Exception as e:
        _OPEN.pop(str(path), None)  # its decoder state is unknown now
        container.close()
        if isinstance(e, av.FFmpegError):
            raise VideoError(f"{path}: decoding failed ({e})") from None
        raise
    return np.stack(out)


_OPEN, _OPEN_PID = {}, None  # this process's recently used videos, most recent last
_GOP = {}  # video -> smallest keyframe spacing seen (s), so later clips of a file seek from the start


def _open_video(path, keep=8):
    """An open container for path; reused because opening a large v3.0 mp4 re-parses its whole index."""
    global _OPEN_PID
    if _OPEN_PID != os.getpid():  # forked: never share a parent's file offsets
        _OPEN.clear()
        _OPEN_PID = os.getpid()
    path = str(path)
    c = _OPEN.pop(path, None)
    if c is None:
        try:
            c = av.open(path)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{path}: cannot open ({e})") from None
        if not c.streams.video:
            c.close()
            raise VideoError(f"{path}: no video stream")
        while len(_OPEN) >= keep:
            _OPEN.pop(next(iter(_OPEN))).close()
    _OPEN[path] = c
    return c


def _to_rgb(frame, size):
    if size is None:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) == (w, h) == (size, size):
        return frame.to_ndarray(format="rgb24")
    a = frame.to_ndarray(width=nw, height=nh, format="rgb24", interpolation="AREA")
    y, x = (nh - size) // 2, (nw - size) // 2
    return a[y:y + size, x:x + size]


# ----------------------------------------------------------------------------- training clips


def rewind(t, h, T, ratio, plateau, u):
    """Video rewinding (after ReWiND): the resampled frame indices [2h + 1] of the clip around the window ending at t
    of a T-frame trajectory, clamped to [0, T - 1], and the clip's mode, chosen by two uniform draws u:
      rising     (1 - ratio):               as recorded.
      descending (ratio * (1 - plateau)):   the whole clip played backwards, every frame keeping its own value, so
                 the values fall: prefix = frame t+h, current = t+h-1 .. t, future = t-1 .. t-h.
      plateau    (ratio * plateau):         all 2h + 1 frames are frame t, all values its label.
    The paper's ratios: rewind 0.5, plateau 0.1 (Table A.1)."""
    mode = ("plateau" if u[1] < plateau else "descending") if u[0] < ratio else "rising"
    k = np.clip(np.arange(t - h, t + h + 1), 0, T - 1)
    if mode == "descending":
        return k[::-1].copy(), mode
    if mode == "plateau":
        return np.full(2 * h + 1, t), mode
    return k, mode


def randomize_prefix(value, p, u):
    """Prefix randomization: the prefix value v_{t-h}, replaced with probability p (0.5 in Table A.1) by U[0, 1], so
    that the model does not lean on the chained prefix it is given at scoring time. u: two uniform draws.
    -> (prefix value, randomized)."""
    randomized = bool(u[0] < p)
    return (float(u[1]) if randomized else float(value)), randomized


@dataclass
class Source:
    """One dataset in the training mixture: drawn with probability weight / sum(weights), then one of
    its episodes uniformly; fps overrides the mixture's target fps (e.g. 3.0 for some robots)."""
    episodes: list
    weight: float = 1.0
    fps: float | None = None
    name: str | None = None


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset of the 9-frame training clips o_{t-h} .. o_{t+h}; sample i is a pure function of
    (seed, i), so resuming and sharding over GPUs give the same data.

    Sample i: pick a source (mixture weights), an episode (uniform), resample it to the target fps
    (T' frames, label of frame k = k / (T' - 1)), pick the window end t uniformly in [h-1, T'-1] (the
    windows that whole-trajectory inference scores) and take resampled frames k = t-h .. t+h: prefix
    t-h, current t-h+1..t, future t+1..t+h, clamped to [0, T'-1] (before the start frame 0 with value 0,
    past the end the last frame with value 1), rewound or not (`rewind`), with the prefix value
    randomized or not (`randomize_prefix`), read in one of its wordings (`paraphrases`: {instruction: [other
    wordings]}, one of the 1 + n drawn uniformly), with its instruction dropped or not (`text_dropout`: the
    trainer then gives it the empty, all-zero text context), mirrored left-right or not (`mirror`, the share of
    clips; not in the paper), turned by 180 degrees or not (`rotate`, the share of clips; not in the paper:
    Meta-World renders its corner views upside down, and a camera may be mounted either way up) and paired with
    another episode's instruction or not (`mismatch`, the share of clips whose instruction is not dropped: an
    instruction of the mixture other than the episode's, in one of its wordings, and every value 0, since the video
    does nothing for that task; ReWiND's mismatched video-language pairs, not in the paper). With `first_frame` (not
    in the paper) each clip is led by the episode's first frame o_0, the start the model then compares the window
    with: 2h + 2 frames, nothing else changed. With `state` (not in the paper; every episode then carries
    extra["state"], read_lerobot's state=) each sample also holds the robot's state at the frames of its 1 + h value
    tokens and at the episode's first frame, left out (`state_dropped`) in the share `state_dropout` of the clips.

    Returns {"frames": float32 [3, 9, S, S] in [-1, 1] ([3, 10, S, S] led by o_0), "values": float32 [5] = [prefix
    value, the h = 4 chunk (current-frame) targets], "text": str, "text_dropped": bool, "mismatched": bool, "mode": str,
    "prefix_randomized": bool, "seed": int (for the trainer's noise), "episode": "source/episode_index",
    "frame_index": int64 [9] (or [10]) native indices, "retries": int (bad episodes hit before this sample),
    "clip_key": str naming the exact frames (the key of a latent cache: episode, size, frame indices, video file,
    start and fps)}; with `state` also "state": float32 [1 + h, d] (the prefix frame's and the current frames'),
    "start_state": float32 [d] (frame 0's) and "state_dropped": bool.

    Episodes shorter than min_frames resampled frames (default h + 1: a prefix and one chunk) are
    skipped at construction. A decoding failure marks the episode bad (one warning), and the sample is
    redrawn from (seed, i, attempt + 1), so the result does not depend on which worker hit it first.
    """

    def __init__(self, sources, fps=2.0, size=256, h=4, length=None, seed=0, rewind=0.5, plateau=0.1,
                 prefix=0.5, text_dropout=0.0, paraphrases=None, mirror=0.0, rotate=0.0, mismatch=0.0,
                 first_frame=False, state=False, state_dropout=0.0, min_frames=None, max_tries=16):
        if size is not None and size % 32:
            raise ValueError(f"ClipDataset: size {size} must be a multiple of 32 (VAE stride 16 x patch 2)")
        if sources and isinstance(sources[0], Episode):
            sources = [Source(list(sources))]
        self.fps, self.size, self.h, self.seed = fps, size, h, seed
        self.rewind, self.plateau, self.prefix, self.max_tries = rewind, plateau, prefix, max_tries
        self.text_dropout, self.paraphrases, self.mirror = text_dropout, paraphrases or {}, mirror
        self.rotate, self.mismatch, self.first_frame = rotate, mismatch, first_frame
        self.state, self.state_dropout = state, state_dropout
        min_frames = min_frames or h + 1
        self.sources, unweighted = [], []
        for n, src in enumerate(sources):
            name = src.name or (src.episodes[0].source if src.episodes else f"source {n}")
            tfps = src.fps or fps
            skip, keep = _Skips(f"{name} @ {tfps:g} fps"), []
            for ep in src.episodes:
                if state and "state" not in ep.extra:
                    raise DataError(f"ClipDataset: episode {ep.id} ({ep.video}) has no state; read its dataset with "
                                    f"state=<column> (train.py --state)")
                Tr = len(resample(ep.T, ep.fps, tfps))
                if Tr < min_frames:
                    skip(f"episode {ep.id} ({ep.video})", "too short", f"{Tr} frames at {tfps:g} fps < {min_frames}")
                else:
                    keep.append(ep)
            if skip.counts:
                skip.summary(len(keep))
            warn_slow(keep, tfps, name)
            if keep and src.weight > 0:
                self.sources.append(Source(keep, src.weight, tfps, name))
            elif keep:
                unweighted.append(name)
            elif src.weight > 0 and len(sources) > 1:  # left out, the others' weights would share its part unsaid
                raise DataError(f"ClipDataset: {name} (weight {src.weight:g} of the mixture) has no usable episodes "
                                f"at {tfps:g} fps (see the skipped episodes above); fix it, or leave it out of the "
                                f"mixture")
        if not self.sources and unweighted:
            raise DataError(f"ClipDataset: no source of weight > 0 has usable episodes ({', '.join(unweighted)}: "
                            f"weight 0)")
        if not self.sources:
            raise DataError("ClipDataset: no usable episodes in any source (see the skipped episodes above)")
        self.instructions = sorted({ep.instruction for src in self.sources for ep in src.episodes})
        if mismatch and len(self.instructions) < 2:
            raise DataError(f"ClipDataset: mismatch={mismatch} needs episodes of at least two instructions; all "
                            f"read {self.instructions[0]!r}")
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        self.length = length or sum(len(s.episodes) for s in self.sources)
        self.latent_cache = None  # a LatentCache to read encoded clips from instead of decoding them
        self.bad = set()      # bad_key of the episodes that failed to decode in this process
        self.failures = 0     # decoding failures seen by this process

    def __len__(self):
        return self.length

    def plan(self, i, attempt=0):
        """Everything about sample i except the pixels (cheap; used by tests and for statistics)."""
        h = self.h
        rng = np.random.default_rng([self.seed, i, attempt])
        u = rng.random(7)  # fixed number of draws so every choice is reproducible on its own
        sample_seed = int(rng.integers(2**31 - 1))
        # the text's draws come last, so the clips and their values are those of a run without them
        text_dropped = bool(rng.random() < self.text_dropout)
        u_text = rng.random()
        mirrored = bool(rng.random() < self.mirror)  # drawn last: the rest is that of a run without mirroring
        u_mismatch = rng.random(3)  # and then these, so that a run without mismatched pairs is a run with none
        rotated = bool(rng.random() < self.rotate)  # then this, for the same reason
        state_dropped = bool(rng.random() < self.state_dropout)  # last of all, for the same reason
        src = self.sources[min(int(np.searchsorted(self.cum, u[0], side="right")), len(self.sources) - 1)]
        ep = src.episodes[int(u[1] * len(src.episodes))]
        native = resample(ep.T, ep.fps, src.fps)
        Tr = len(native)
        lo = min(h - 1, Tr - 1)
        t = lo + int(u[2] * (Tr - lo))
        k, mode = rewind(t, h, Tr, self.rewind, self.plateau, u[3:5])
        values = k / (Tr - 1)
        instruction = ep.instruction
        mismatched = not text_dropped and bool(u_mismatch[0] < self.mismatch)
        if mismatched:  # another task's instruction: this video makes no progress on it
            others = [x for x in self.instructions if x != ep.instruction]
            instruction = others[int(u_mismatch[1] * len(others))]
            values = np.zeros_like(values)
        prefix, randomized = randomize_prefix(values[0], self.prefix, u[5:7])
        wordings = [instruction, *self.paraphrases.get(instruction, ())]
        u_word = u_mismatch[2] if mismatched else u_text
        frames = np.concatenate([native[:1], native[k]]) if self.first_frame else native[k]
        return {"episode": ep, "t": t, "k": k, "frame_index": frames, "values9": values, "mode": mode,
                "prefix_randomized": randomized, "values": np.array([prefix, *values[1:h + 1]], dtype=np.float32),
                "seed": sample_seed, "text": wordings[int(u_word * len(wordings))], "text_dropped": text_dropped,
                "mirrored": mirrored, "rotated": rotated, "mismatched": mismatched, "state_dropped": state_dropped}

    def clip_key(self, ep, frame_index):
        """The exact clip: episode, size, native frames, and the video file by its real path (so that a relative
        and an absolute path meet the same latents), size and modification time (so that a corpus written again in
        place never meets the latents of the old one)."""
        st = os.stat(ep.video)
        return (f"{ep.id}:{self.size}:{','.join(map(str, frame_index))}|{os.path.realpath(ep.video)}"
                f"@{float(ep.start)!r}/{float(ep.fps)!r}#{st.st_size}:{st.st_mtime_ns}")  # exact: 10000.46 is not .54

    def sample_key(self, p):
        """The latent cache's key of a planned sample's clip: clip_key, and how its frames are turned."""
        return (self.clip_key(p["episode"], p["frame_index"]) + ("|mirrored" if p["mirrored"] else "")
                + ("|rotated" if p["rotated"] else ""))

    @staticmethod
    def bad_key(ep):
        """An episode's id and video: two sources of one name (/a/train, /b/train) give their episodes the same ids,
        and one's failure must not leave out the other's."""
        return f"{ep.id} ({ep.video})"

    def __getitem__(self, i):
        for attempt in range(self.max_tries):
            p = self.plan(i, attempt)
            ep = p["episode"]
            if self.bad_key(ep) in self.bad:
                continue
            try:
                key = self.sample_key(p)
                # a clip encoded before needs no decoding (train.py sets latent_cache with --latent_cache)
                latents = self.latent_cache.load(key) if self.latent_cache else None
                frames = decode_frames(ep, p["frame_index"], self.size) if latents is None else None
                if frames is not None and p["mirrored"]:  # left-right: the same progress in a mirrored scene
                    frames = frames.flip(-1)
                if frames is not None and p["rotated"]:  # upside down: the same progress, the camera turned
                    frames = frames.flip(-2, -1)
            except (VideoError, av.FFmpegError, OSError) as e:
                self.bad.add(self.bad_key(ep))
                self.failures += 1
                log.warning("skipping episode %s (%s): %s; sampling another episode", ep.id, ep.video, e)
                continue
            out = {"frames": frames, "latents": latents, "values": torch.from_numpy(p["values"]),
                   "text": p["text"], "text_dropped": p["text_dropped"], "mismatched": p["mismatched"],
                   "mode": p["mode"], "prefix_randomized": p["prefix_randomized"], "seed": p["seed"], "episode": ep.id,
                   "frame_index": torch.from_numpy(p["frame_index"]), "retries": attempt, "clip_key": key, "index": i}
            if self.state:  # the frames of the value tokens: the prefix and the current ones (after o_0, if it leads)
                lead = 1 if self.first_frame else 0
                out |= {"state": torch.from_numpy(ep.extra["state"][p["frame_index"][lead:lead + self.h + 1]]),
                        "start_state": torch.from_numpy(ep.extra["state"][0]), "state_dropped": p["state_dropped"]}
            return out
        raise DataError(f"ClipDataset: sample {i}: {self.max_tries} episodes in a row failed to decode; "
                        f"bad episodes so far: {sorted(self.bad)[:10]}")


def collate(samples):
    """List of ClipDataset samples -> batch: values [B, 5], lists for strings; frames [B', 3, 9, S, S] of the B'
    samples whose latents were not cached (None if all were), latents: list of cached latents or None, or one
    stacked tensor when every sample's was cached (a worker then hands one tensor to the trainer, not B)."""
    frames = [s["frames"] for s in samples if s["frames"] is not None]
    cached = [s["latents"] for s in samples]
    return {
        "frames": torch.stack(frames) if frames else None,
        "latents": torch.stack(cached) if not frames else cached,
        "values": torch.stack([s["values"] for s in samples]),
        "text": [s["text"] for s in samples],
        "text_dropped": [s["text_dropped"] for s in samples],
        "mode": [s["mode"] for s in samples],
        "prefix_randomized": torch.tensor([s["prefix_randomized"] for s in samples]),
        "seed": torch.tensor([s["seed"] for s in samples], dtype=torch.int64),
        "episode": [s["episode"] for s in samples],
        "frame_index": torch.stack([s["frame_index"] for s in samples]),
        "retries": torch.tensor([s["retries"] for s in samples]),
        "clip_key": [s["clip_key"] for s in samples],
    } | ({"state": torch.stack([s["state"] for s in samples]),
          "start_state": torch.stack([s["start_state"] for s in samples]),
          "state_dropped": torch.tensor([s["state_dropped"] for s in samples])} if "state" in samples[0] else {})


# ----------------------------------------------------------------------------- latents of clips, cached


class LatentCache:
    """The latents of training clips on disk, each clip encoded once: root/clips-<vae id>/<clip key>.safetensors holds
    the clip's [current | future] latents [C, 2, h, w] (wvm.clip_latents; [C, 3, h, w] led by o_0's), for the VAE
    whose id (wan_vae.vae_fingerprint) names the folder.

    The VAE is frozen, so a stored latent is exactly what encoding again would give, and a different VAE (weights,
    dtype or config) gets its own folder. The key (ClipDataset's clip_key) names the clip's episode, its exact native
    frames (rewinding and plateaus included) and its size. Files are written to a temporary name and renamed, so a
    crash or two processes encoding the same clip never leave a partial file behind.
    """

    def __init__(self, root, vae_id, weights=None):
        self.dir = os.path.join(root, f"clips-{vae_id}")
        os.makedirs(self.dir, exist_ok=True)
        if weights:  # wan_vae.vae_ids' digest: the id reads a few tensors, and a VAE fine-tuned inside shares it
            record = os.path.join(self.dir, "vae.json")
            try:
                saved = read_json(record)
                if saved is None:  # a new folder, or one made before the record (its id matched: taken at its word)
                    # never over another process's record, made meanwhile (read back); a folder shared read-only
                    # (another user's) is used unrecorded, as before the record
                    with contextlib.suppress(CheckpointError, OSError):
                        save_json({"weights": weights}, record, replace=False)
                    saved = read_json(record) or {"weights": weights}
            except CheckpointError as e:
                raise DataError(f"{e}; delete it") from None
            if not isinstance(saved, dict):
                raise DataError(f"{record}: not a VAE's record ({saved!r}); delete it")
            if saved.get("weights") != weights:
                raise DataError(f"{self.dir}: latents of another VAE of the same id {vae_id} (weights "
                                f"{saved.get('weights')}, this one's {weights}): pass another --latent_cache, or "
                                f"delete the folder")
        umask = os.umask(0o22)  # read it (only by setting it) and put it back
        os.umask(umask)
        self.mode = 0o666 & ~umask  # files as the umask makes them (mkstemp's are the owner's alone): a team shares one
        for f in os.listdir(self.dir):  # what a process killed while writing left (each as large as a clip's file)
            tmp = os.path.join(self.dir, f)
            try:
                if f.endswith(".tmp") and time.time() - os.path.getmtime(tmp) > 3600:  # not another one's, writing
                    os.remove(tmp)
            except OSError:  # removed meanwhile by another process
                pass

    def path(self, key):
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:100]
        return os.path.join(self.dir, f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.safetensors")

    def load(self, key):
        """The cached latents of clip `key`, or None (ClipDataset reads them in its loader workers)."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            return load_file(path)["latents"]
        except Exception as e:
            raise DataError(f"{path}: unreadable latent cache file ({type(e).__name__}: {e}); delete it") from None

    def put(self, key, z):
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"latents": z.cpu().contiguous()}, tmp, metadata={"key": key})
            os.chmod(tmp, self.mode)
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

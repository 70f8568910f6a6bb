"""Clip loading speed: ClipDataset clips/s in one process (= one DataLoader worker) vs bare PyAV
decoding of the very same frames, on a LeRobot v3.0 AV1 dataset (goal: >= 0.8x of bare decode).

    python bench/bench_data.py                       # builds a synthetic dataset in a temp folder
    python bench/bench_data.py --root /data/lerobot_ds --camera observation.images.top

Bare decode = open the file, seek, decode, convert the needed frames to RGB at native size; two
variants, both given the frame times ClipDataset picked: "sequential" (one seek, decode through the
clip's 4 s span) and "per-frame seek" (seek to every needed frame: the least decoding PyAV can do on
LeRobot's gop-2 files). ClipDataset additionally resizes/crops to --size and builds float tensors.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import sim  # noqa: E402


def synthetic_episodes(n, T, H, W, seed=0):
    """Textured frames with camera-like motion, so the encoder and decoder do real work."""
    rng = np.random.default_rng(seed)
    for e in range(n):
        tex = rng.integers(0, 255, (H // 2, W // 2, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # 4-px blobs
        ys, xs = (np.sin(np.arange(T) / 20 + e) * H / 2 + H / 2).astype(int), (np.arange(T) * W // T).astype(int)
        frames = np.stack([tex[y:y + H, x:x + W] for y, x in zip(ys, xs)])
        yield {"frames": frames, "task": f"task {e % 3}"}


def bare_decode(path, times, fps, per_frame_seek):
    tol = 0.5 / fps
    out = []
    with av.open(path) as c:
        s = c.streams.video[0]
        tb = float(s.time_base)
        if per_frame_seek:
            for t in times:
                c.seek(max(0, int((t - tol) / tb)), stream=s)
                for f in c.decode(s):
                    if f.time >= t - tol:
                        out.append(f.to_ndarray(format="rgb24"))
                        break
        else:
            c.seek(max(0, int((times[0] - tol) / tb)), stream=s)
            j = 0
            for f in c.decode(s):
                while j < len(times) and abs(f.time - times[j]) <= tol:
                    out.append(f.to_ndarray(format="rgb24"))
                    j += 1
                if j == len(times):
                    break
    assert len(out) == len(times), (path, len(out), len(times))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="an existing LeRobot v3.0 dataset (default: build a synthetic one)")
    p.add_argument("--camera")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=240, help="native frames per synthetic episode")
    p.add_argument("--native", type=int, nargs=2, default=[256, 256], metavar=("H", "W"), help="synthetic frame size")
    p.add_argument("--fps", type=int, default=30, help="synthetic native fps")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if min(a.episodes, a.frames, a.fps, a.size, a.clips, a.repeats, *a.native) < 1:
        p.error("--episodes, --frames, --native, --fps, --size, --clips and --repeats must be at least 1")
    if a.size % 32 or any(n % 2 for n in a.native):  # training's crops; yuv420p video
        p.error("--size must be a multiple of 32 and --native even")
    root = a.root
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="wvm_bench_")  # removed when the run ends, as it ends
        root = Path(tmp.name) / "ds"
        t0 = time.time()
        sim.write_lerobot(root, synthetic_episodes(a.episodes, a.frames, *a.native), a.fps, codec="libsvtav1")
        mb = sum(f.stat().st_size for f in root.rglob("*.mp4")) / 2**20
        print(f"built {root}: {a.episodes} x {a.frames} frames {a.native[0]}x{a.native[1]} @ {a.fps} fps, AV1 gop 2, "
              f"{mb:.1f} MiB, {time.time() - t0:.1f}s")
    try:
        eps = data.read_lerobot(root, camera=a.camera)
        ds = data.ClipDataset(eps, fps=2.0, size=a.size, length=a.clips)
    except data.DataError as e:  # not a dataset, or nothing long enough in it: its message, not a traceback
        raise SystemExit(str(e)) from None
    plans = [ds.plan(i) for i in range(a.clips)]
    jobs = [(p["episode"].video, p["episode"].start + np.unique(p["frame_index"]) / p["episode"].fps, p["episode"].fps)
            for p in plans]
    print(f"{a.clips} clips, {np.mean([len(j[1]) for j in jobs]):.1f} distinct frames each, "
          f"PyAV {av.__version__}")

    def rate(fn):
        best = 0.0
        for _ in range(a.repeats):  # best of repeats: the machine is shared
            t0 = time.perf_counter()
            fn()
            best = max(best, a.clips / (time.perf_counter() - t0))
        return best

    ours = rate(lambda: [ds[i] for i in range(a.clips)])
    seq = rate(lambda: [bare_decode(v, t, f, False) for v, t, f in jobs])
    seek = rate(lambda: [bare_decode(v, t, f, True) for v, t, f in jobs])
    print(f"ClipDataset ({a.size}x{a.size} float tensors): {ours:7.1f} clips/s")
    print(f"bare PyAV, sequential:                 {seq:7.1f} clips/s   ratio {ours / seq:.2f}x")
    print(f"bare PyAV, per-frame seek:             {seek:7.1f} clips/s   ratio {ours / seek:.2f}x")
    print(f"ratio vs the faster bare decode: {ours / max(seq, seek):.2f}x (goal >= 0.8)")


if __name__ == "__main__":
    main()

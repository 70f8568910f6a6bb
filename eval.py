"""Evaluate WVM (SPEC.md §7-8): VOC metrics, the Suboptimal-Value-Bench and Expert-VOC tables,
whole-trajectory scoring, plots, and the per-frame values / weights export for policy training.

    python eval.py --bench suboptimal          # after `python demo.py`: its held-out split and its run
    python eval.py --bench suboptimal --data data/metaworld/heldout_unseen --ckpt runs/demo --per_task
    python eval.py --bench expert --data data/metaworld/heldout_seen --ckpt runs/demo --json out.json --plots plots/
    python eval.py --score /data/my_lerobot_dataset --out scores/ --ckpt runs/demo --chunk 10

--ckpt is a train.py run folder (wvm.safetensors + config.json: VAE, text cache, fps, resolution) or
a wvm.safetensors file with --vae and --text_cache. Every table has the `time` (t / (T - 1)) and
`constant` (0.5) baselines as reference rows.
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

DEMO_DATA, DEMO_RUN = "data/metaworld/heldout_seen", "runs/demo"  # what `python demo.py` leaves behind

# ----------------------------------------------------------------------------------------------
# metrics


def rank(x):
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    xs = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or xs[end] != xs[start]:
            ranks[order[start:end]] = (start + end - 1) / 2
            start = end
    return ranks


def spearman(a, b):
    """Spearman rank correlation; 0.0 when either side is constant (the GVL convention for VOC)."""
    ra, rb = rank(a), rank(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def voc(values):
    """Value-Order Correlation: Spearman correlation of chronological values with the frame index."""
    return spearman(values, np.arange(len(values)))


def check_annotation(kind, m, n, T):
    if kind not in ("expert", "hesitation", "retry", "failure"):
        raise ValueError(f"annotation kind {kind!r}: expected expert, hesitation, retry or failure")
    if kind in ("expert", "failure"):
        if T < 2:
            raise ValueError(f"T = {T}: a trajectory needs at least 2 frames")
        return
    if T < 4:
        raise ValueError(f"T = {T}: too short for a {kind} segment (0 < m < n < T - 1 needs T >= 4)")
    if not 0 < m < n < T - 1:
        raise ValueError(f"{kind} segment m = {m}, n = {n} with T = {T}: needs 0 < m < n < T - 1")
    x = n - m
    if kind == "retry" and T - 2 * x <= 0:  # a retry with m > T - 2x is fine: its curve peaks above 1 (App. B.3)
        raise ValueError(f"retry segment m = {m}, n = {n} with T = {T}: undoing x = {x} frames leaves "
                         f"T - 2x = {T - 2 * x} <= 0 frames of progress")


def gt_curve(kind, m=None, n=None, T=None):
    """The benchmark's ground-truth progress over native frames 0..T-1 (SPEC.md §7): piecewise linear
    through (0, 0), (m, v_m), (n, v_n), (T - 1, 1); `expert` is t / (T - 1)."""
    check_annotation(kind, m, n, T)
    if kind == "failure":
        raise ValueError("a failure has no ground-truth curve, only the fraction achieved at its end")
    if kind == "expert":
        return np.arange(T) / (T - 1)
    x = n - m
    if kind == "hesitation":
        v_m = v_n = m / (T - 1 - x)
    else:
        v_m, v_n = m / (T - 2 * x), max(0.0, (m - x) / (T - 2 * x))
    return np.interp(np.arange(T), [0, m, n, T - 1], [0.0, v_m, v_n, 1.0])


def _segment(pred, kind, m, n, T, index):
    """Predictions and ground truth on the scored frames whose native index lies in [m, n]."""
    pred = np.asarray(pred, dtype=np.float64)
    index = np.arange(len(pred)) if index is None else np.asarray(index)
    if len(index) != len(pred) or index.min() < 0 or index.max() >= T:
        raise ValueError(f"{len(pred)} predictions at native frames {index.min()}..{index.max()} do not fit T = {T}")
    sel = (index >= m) & (index <= n)
    return pred[sel], gt_curve(kind, m, n, T)[index[sel]]


def hesitation_rmse(pred, m, n, T, index=None):
    """RMSE to the ground truth over the hesitation segment [m, n]; pred at native frames `index` (default all)."""
    p, g = _segment(pred, "hesitation", m, n, T, index)
    return float(np.sqrt(np.mean((p - g) ** 2))) if len(p) else float("nan")


def retry_voc(pred, m, n, T, index=None):
    """Spearman correlation of prediction and (falling) ground truth over the retry segment [m, n]."""
    p, g = _segment(pred, "retry", m, n, T, index)
    return spearman(p, g) if len(p) >= 2 else float("nan")


# ----------------------------------------------------------------------------------------------
# data weighting (Appendix E)

def chunk_delta(values, H):
    """Δ(t) = V(min(t + H - 1, T - 1)) - V(t): the progress an action chunk of length H starting at t makes."""
    v = np.asarray(values, dtype=np.float64)
    return v[np.minimum(np.arange(len(v)) + H - 1, len(v) - 1)] - v


def awr_weight(delta, tau=10.0, delta_max=2.0):
    """AWR weight min(exp(tau Δ), δ); a policy trainer renormalizes to mean 1 per batch."""
    return np.minimum(np.exp(tau * np.asarray(delta, dtype=np.float64)), delta_max)


# ----------------------------------------------------------------------------------------------
# whole-trajectory scoring

@dataclass
class Trajectory:
    """An episode to score: its resampled native frame indices and instruction."""
    episode: object          # data.Episode
    index: np.ndarray        # native frame index of each scored frame


class TimeScorer:
    """Baseline: progress = t / (T - 1). Perfect on experts, blind to hesitations and retries."""
    name = "time"

    def score(self, trajs):
        return [(np.arange(len(t.index)) / max(1, len(t.index) - 1), np.zeros(len(t.index))) for t in trajs]


class ConstantScorer:
    name = "constant"

    def score(self, trajs):
        return [(np.full(len(t.index), 0.5), np.zeros(len(t.index))) for t in trajs]


def window_ends(T, h, stride):
    """Ends t of the scored windows [t-h+1, t]: from h-1 every `stride` frames, plus the last frame."""
    ends = list(range(h - 1, T, stride))
    if ends[-1] != T - 1:
        ends.append(T - 1)
    return ends


class WVMScorer:
    """Slides windows of h frames with stride s over each trajectory, chaining each window's prefix value
    from the windows already scored (0 before the start), and averages every frame over the windows
    covering it (SPEC.md §7). Windows are batched across trajectories: round k scores window k of
    every trajectory in the batch, so the chain of one trajectory runs in order."""
    name = "wvm"

    def __init__(self, model, vae, text_cache, size, stride=1, samples=1, steps=1, batch=16, device="cpu", seed=0):
        self.model, self.vae, self.text_cache = model.eval(), vae.eval(), text_cache
        self.size, self.stride, self.samples, self.steps, self.batch = size, stride, samples, steps, batch
        self.device, self.seed, self.h = torch.device(device), seed, model.chunk
        if not 1 <= stride <= self.h:
            raise ValueError(f"stride {stride}: must be in [1, h = {self.h}] so every prefix frame is scored first")

    @torch.no_grad()
    def score(self, trajs, progress=True):
        """[(values [T'], spread [T'])] per trajectory, or None for one whose video cannot be decoded."""
        from data import VideoError, decode_frames

        out = []
        bar = tqdm(total=sum(len(window_ends(len(t.index), self.h, self.stride)) for t in trajs),
                   desc="windows", disable=not progress, dynamic_ncols=True)
        g = torch.Generator(device=self.device).manual_seed(self.seed)
        for b0 in range(0, len(trajs), self.batch):
            group, frames = [], []
            for t in trajs[b0:b0 + self.batch]:
                try:
                    frames.append(decode_frames(t.episode, t.index, self.size))  # [3, T', S, S]
                    group.append(t)
                except VideoError as e:
                    print(f"skipped: episode {t.episode.id}: {e}", file=sys.stderr)
                    bar.update(len(window_ends(len(t.index), self.h, self.stride)))
            results = dict(zip(map(id, group), self.score_decoded(group, frames, g, bar)))
            out += [results.get(id(t)) for t in trajs[b0:b0 + self.batch]]
        bar.close()
        return out

    def score_decoded(self, group, frames, g, bar):
        ctx = [self.text_cache.get(t.episode.instruction) for t in group]
        ends = [window_ends(len(t.index), self.h, self.stride) for t in group]
        sums, spread, counts = ([np.zeros(len(t.index)) for t in group] for _ in range(3))
        for k in range(max((len(e) for e in ends), default=0)):
            live = [i for i in range(len(group)) if k < len(ends[i])]
            clips, prefix = [], []
            for i in live:
                t = ends[i][k]
                p = t - self.h  # prefix frame; -1 (before the start) is frame 0 with value 0
                clips.append(frames[i][:, [max(p, 0)] + list(range(t - self.h + 1, t + 1))])
                prefix.append(0.0 if p < 0 else float(np.clip(sums[i][p] / counts[i][p], 0, 1)))
            lat = self.vae.encode(torch.stack(clips).to(self.device))[:, :, 1:]  # the current latent
            L = max(ctx[i].shape[0] for i in live)
            context = torch.stack([torch.nn.functional.pad(ctx[i], (0, 0, 0, L - ctx[i].shape[0])) for i in live])
            vals = self.model.predict_values(lat.float(), context.to(self.device), torch.tensor(prefix),
                                             steps=self.steps, samples=self.samples, generator=g).cpu().numpy()
            for j, i in enumerate(live):
                sl = slice(ends[i][k] - self.h + 1, ends[i][k] + 1)
                sums[i][sl] += np.clip(vals[j], 0, 1).mean(0)
                spread[i][sl] += vals[j].std(0)
                counts[i][sl] += 1
            bar.update(len(live))
        return [(s / c, sp / c) for s, sp, c in zip(sums, spread, counts)]


def load_scorer(args):
    """WVMScorer from a train.py run folder or a wvm.safetensors file (+ --vae, --text_cache)."""
    from encode_text import TextCache
    from model import load_wvm
    from wan_vae import load_wan_vae

    run = {}
    path = args.ckpt
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            run = json.load(f)
        path = os.path.join(path, "wvm.safetensors")
    model = load_wvm(path, device=args.device)
    vae_path = args.vae or run.get("vae") or os.path.join(os.path.dirname(path), "vae.safetensors")
    if not os.path.exists(vae_path):
        raise SystemExit(f"{vae_path}: no VAE; pass --vae")
    vae = load_wan_vae(vae_path, device=args.device)  # a demo run saves its random VAE as vae.safetensors
    text = TextCache(args.text_cache or run.get("text_cache"))
    size = args.resolution or run.get("resolution", 256)
    if args.fps is None and run.get("fps"):
        args.fps = run["fps"]
    return WVMScorer(model, vae, text, size, stride=args.stride, samples=args.samples, steps=args.steps,
                     batch=args.batch, device=args.device, seed=args.seed)


# ----------------------------------------------------------------------------------------------
# benchmarks

def load_annotated(path, fps, camera=None, min_frames=4):
    """Episodes of a LeRobot dataset (+ its annotations.jsonl) or a manifest, with their annotation.

    Returns (items, problems): items are (Trajectory, annotation dict); problems are messages for
    annotations that are unusable (reported and counted by the caller, never silently dropped)."""
    from data import read_dataset, resample

    episodes = read_dataset(path, camera=camera)
    ann_file = os.path.join(path, "annotations.jsonl") if os.path.isdir(path) else None
    by_episode = {}
    if ann_file and os.path.exists(ann_file):
        with open(ann_file) as f:
            for line in f:
                if line.strip():
                    a = json.loads(line)
                    by_episode[int(a["episode_index"] if "episode_index" in a else a["episode"])] = a
    items, problems = [], []
    for ep in episodes:
        a = by_episode.get(ep.episode_index, ep.extra if "kind" in ep.extra else {"kind": "expert", "T": ep.T})
        try:
            T = int(a.get("T", ep.T))
            if T != ep.T:
                raise ValueError(f"annotation T = {T} but the video has {ep.T} frames")
            check_annotation(a["kind"], a.get("m"), a.get("n"), T)
            index = resample(ep.T, ep.fps, fps)
            if len(index) < min_frames:
                raise ValueError(f"{len(index)} frames at {fps:g} fps, fewer than one window of {min_frames}")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"episode {ep.id}: {e}")
            continue
        items.append((Trajectory(ep, index), a))
    return items, problems


def run_bench(kind, items, scorers, per_task=False):
    """Score every trajectory with every scorer -> (table rows, per-trajectory results, skipped episode ids).
    A trajectory some scorer cannot score (unreadable video) is left out of every row, so rows compare alike."""
    preds = {s.name: s.score([t for t, _ in items]) for s in scorers}
    skipped = [t.episode.id for n, (t, _) in enumerate(items) if any(p[n] is None for p in preds.values())]
    results = []
    for scorer in scorers:
        for (traj, a), pred in zip(items, preds[scorer.name]):
            if traj.episode.id in skipped:
                continue
            v, spread = pred
            r = {"method": scorer.name, "episode": traj.episode.id, "kind": a["kind"], "task": a.get("task", traj.episode.instruction),
                 "embodiment": a.get("embodiment", traj.episode.source), "T": traj.episode.T,
                 "index": traj.index.tolist(), "values": v.tolist(), "spread": spread.tolist(), "m": a.get("m"), "n": a.get("n")}
            if a["kind"] == "hesitation":
                r["hesitation_rmse"] = hesitation_rmse(v, a["m"], a["n"], traj.episode.T, traj.index)
            elif a["kind"] == "retry":
                r["retry_voc"] = retry_voc(v, a["m"], a["n"], traj.episode.T, traj.index)
            else:
                r["voc"] = voc(v)
            results.append(r)
    metrics = {"suboptimal": ("hesitation_rmse", "retry_voc"), "expert": ("voc",)}[kind]
    group_key = "task" if per_task else "embodiment"
    rows = []
    for scorer in scorers:
        mine = [r for r in results if r["method"] == scorer.name]
        groups = sorted({r[group_key] for r in mine})
        for g in groups + ["average"]:
            sel = [r for r in mine if g == "average" or r[group_key] == g]
            row = {"method": scorer.name, group_key: g}
            for mkey in metrics:
                vals = [r[mkey] for r in sel if mkey in r and not math.isnan(r[mkey])]
                row[mkey] = float(np.mean(vals)) if vals else float("nan")
                row[f"n_{mkey}"] = len(vals)
            rows.append(row)
    return rows, results, skipped


NAMES = {"hesitation_rmse": "Hesitation-RMSE ↓", "retry_voc": "Retry-VOC ↑", "voc": "Expert-VOC ↑"}


def format_table(rows):
    keys = [k for k in rows[0] if not k.startswith("n_")]
    head = [NAMES.get(k, k) for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f} (n={r['n_' + k]})" if k in NAMES else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results, items, plots_dir, size=64):
    """One PNG per trajectory (frame strip, predictions with spread band, ground truth) + a summary figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from data import decode_frames

    os.makedirs(plots_dir, exist_ok=True)
    by_ep = {t.episode.id: t for t, _ in items}
    for ep_id in sorted({r["episode"] for r in results}):
        rs = [r for r in results if r["episode"] == ep_id]
        traj, r0 = by_ep[ep_id], rs[0]
        fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5), gridspec_kw={"height_ratios": [1, 2]})
        strip_idx = np.linspace(0, len(traj.index) - 1, min(8, len(traj.index))).round().astype(int)
        strip = decode_frames(traj.episode, traj.index[strip_idx], size)
        ax0.imshow(((strip.permute(2, 1, 3, 0).reshape(size, -1, 3) + 1) * 127.5).clamp(0, 255).byte().numpy())
        ax0.axis("off")
        x = np.asarray(r0["index"])
        gt = gt_curve(r0["kind"], r0["m"], r0["n"], r0["T"])
        ax1.plot(np.arange(r0["T"]), gt, "k--", label="ground truth")
        for r in rs:
            v, s = np.asarray(r["values"]), np.asarray(r["spread"])
            ax1.plot(x, v, marker=".", label=r["method"])
            if s.any():
                ax1.fill_between(x, v - s, v + s, alpha=0.2)
        if r0["kind"] != "expert":
            ax1.axvspan(r0["m"], r0["n"], color="orange", alpha=0.15, label=r0["kind"])
        ax1.set(xlabel="native frame", ylabel="progress", ylim=(-0.05, 1.05), title=f"{ep_id}: {r0['task']}")
        ax1.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(plots_dir, ep_id.replace("/", "_") + ".png"), dpi=80)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    methods = sorted({r["method"] for r in results})
    for key in ("hesitation_rmse", "retry_voc", "voc"):
        vals = [[r[key] for r in results if r["method"] == m and key in r and not math.isnan(r[key])] for m in methods]
        if any(vals):
            ax.bar([f"{m}\n{NAMES[key].split()[0]}" for m in methods], [np.mean(v) if v else 0 for v in vals])
    ax.set_title("per-method averages")
    fig.tight_layout()
    fig.savefig(os.path.join(plots_dir, "summary.png"), dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# data weighting export

def export_scores(path, scorer, out_dir, fps, H=10, kappa=0.0, keep_top=None, tau=10.0, delta_max=2.0, camera=None):
    """Per-frame progress of every episode of a dataset at its native fps (interpolated from the
    benchmark fps) and, for action chunks of length H, Δ, the Filtered-BC keep flag and the AWR weight,
    written to out_dir/values.parquet keyed by (episode_index, frame_index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import read_dataset, resample

    trajs = [Trajectory(ep, resample(ep.T, ep.fps, fps)) for ep in read_dataset(path, camera=camera)]
    short = [t.episode.id for t in trajs if len(t.index) < scorer.h]
    trajs = [t for t in trajs if len(t.index) >= scorer.h]
    preds = scorer.score(trajs)
    cols = {k: [] for k in ("episode_index", "frame_index", "progress", "spread", "delta")}
    skipped = short + [t.episode.id for t, p in zip(trajs, preds) if p is None]
    for traj, pred in zip(trajs, preds):
        if pred is None:
            continue
        v, s = pred
        T = traj.episode.T
        native = np.interp(np.arange(T), traj.index, v)
        cols["episode_index"].append(np.full(T, traj.episode.episode_index, dtype=np.int64))
        cols["frame_index"].append(np.arange(T, dtype=np.int64))
        cols["progress"].append(native)
        cols["spread"].append(np.interp(np.arange(T), traj.index, s))
        cols["delta"].append(chunk_delta(native, H))
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    threshold = float(np.quantile(cols["delta"], 1 - keep_top)) if keep_top else kappa
    cols["keep"] = cols["delta"] >= threshold
    cols["awr_weight"] = awr_weight(cols["delta"], tau, delta_max)
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.table(cols), os.path.join(out_dir, "values.parquet"))
    meta = {"dataset": os.path.abspath(path), "scorer": scorer.name, "benchmark_fps": fps, "chunk_length": H,
            "kappa": threshold, "keep_top": keep_top, "tau": tau, "delta_max": delta_max,
            "kept_fraction": float(cols["keep"].mean()), "frames": int(len(cols["keep"])),
            "skipped_episodes": skipped}
    with open(os.path.join(out_dir, "values.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# ----------------------------------------------------------------------------------------------

def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", choices=["suboptimal", "expert"])
    p.add_argument("--data", help=f"LeRobot dataset (+ annotations.jsonl) or manifest .jsonl (with neither --data "
                   f"nor --ckpt: {DEMO_DATA} and {DEMO_RUN}, if demo.py made them)")
    p.add_argument("--score", metavar="DATASET", help="write per-frame values and weights for a dataset")
    p.add_argument("--out", default="scores", help="output folder of --score")
    p.add_argument("--ckpt", help="train.py run folder or wvm.safetensors (omit: baselines only)")
    p.add_argument("--vae")
    p.add_argument("--text_cache")
    p.add_argument("--camera")
    p.add_argument("--fps", type=float, default=None, help="benchmark fps (default: the run's, else 2.0)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--samples", type=int, default=1, help="noise samples per window (spread)")
    p.add_argument("--steps", type=int, default=1, help="Euler steps")
    p.add_argument("--batch", type=int, default=16, help="trajectories scored together")
    p.add_argument("--per_task", action="store_true")
    p.add_argument("--json")
    p.add_argument("--plots")
    p.add_argument("--chunk", type=int, default=10, help="action chunk length H for the weights")
    p.add_argument("--kappa", type=float, default=0.0)
    p.add_argument("--keep_top", type=float, default=None, help="keep this top fraction of chunks by Δ (e.g. 0.7)")
    p.add_argument("--tau", type=float, default=None, help="AWR temperature (default 10 for H = 10, 2 for H = 50)")
    p.add_argument("--delta_max", type=float, default=2.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.bench or args.score):
        p.error("give --bench suboptimal|expert (with --data) or --score DATASET")
    if args.bench and not args.data and not args.ckpt and os.path.isdir(DEMO_DATA):
        args.data, args.ckpt = DEMO_DATA, DEMO_RUN if os.path.isdir(DEMO_RUN) else None
        print(f"--data {args.data} --ckpt {args.ckpt} (the demo's; pass --data to choose)", file=sys.stderr)

    scorers = [load_scorer(args)] if args.ckpt else []
    fps = args.fps or 2.0
    scorers += [TimeScorer(), ConstantScorer()]
    if args.score:
        if not args.ckpt:
            p.error("--score needs --ckpt")
        tau = args.tau if args.tau is not None else (2.0 if args.chunk >= 50 else 10.0)
        meta = export_scores(args.score, scorers[0], args.out, fps, args.chunk, args.kappa, args.keep_top, tau,
                             args.delta_max, args.camera)
        print(json.dumps(meta, indent=1))
        return
    if not args.data:
        p.error("--bench needs --data")
    items, problems = load_annotated(args.data, fps, args.camera)
    wanted = ("hesitation", "retry") if args.bench == "suboptimal" else ("expert",)
    items = [(t, a) for t, a in items if a["kind"] in wanted]
    for msg in problems:
        print(f"skipped: {msg}", file=sys.stderr)
    if not items:
        raise SystemExit(f"{args.data}: no usable {'/'.join(wanted)} trajectories ({len(problems)} skipped)")
    rows, results, unreadable = run_bench(args.bench, items, scorers, args.per_task)
    problems += [f"episode {e}: video could not be decoded" for e in unreadable]
    print(f"\n{args.bench} bench on {args.data}: {len(items) - len(unreadable)} trajectories at {fps:g} fps"
          + (f", {len(problems)} skipped (bad annotations or videos)" if problems else ""))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": args.bench, "data": args.data, "fps": fps, "skipped": problems, "table": rows,
                       "trajectories": results}, f, indent=1)
    if args.plots:
        plot_results(results, items, args.plots)


if __name__ == "__main__":
    main(sys.argv[1:])

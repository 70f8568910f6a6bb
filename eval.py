"""Evaluate WVM: VOC metrics, the Suboptimal-Value-Bench (Appendix B.3) and Expert-VOC tables,
whole-trajectory scoring, plots, and the per-frame values / weights export for policy training.

    python eval.py --bench suboptimal          # after `python demo.py`: its held-out split and its run
    python eval.py --bench all --data data/metaworld/heldout_unseen --ckpt runs/demo-prior-s0 --by task
    python eval.py --bench expert --data data/metaworld/heldout_seen --ckpt runs/demo-prior-s0 --json out.json --plots plots/
    python eval.py --score /data/my_lerobot_dataset --out scores/ --ckpt runs/demo-prior-s0 --chunk 10
    python eval.py --bench expert --data data/metaworld/heldout_seen --ckpt runs/demo-prior-s0 --instructions swap.json

--ckpt is a train.py run folder (wvm.safetensors + config.json naming the VAE and text cache) or a
wvm.safetensors file (with --vae and --text_cache where no config.json lies beside it). The model file
records the resolution and fps it was trained at (and the fps of each source trained at its own) and the ids
of its VAE and text encoder: scoring uses them, scores a training source at its own fps, and refuses a VAE or
text cache other than the training one. Every table has the `time`
(t / (T - 1)) and `constant` (0.5) baselines as reference rows. --instructions FILE (JSON {instruction:
replacement}) scores the episodes with another instruction: a rewording, or another task's, which shows how much
the values read it.

--score writes values.parquet (per-frame progress, Δ, Filtered-BC keep flag, AWR weight),
sarm_progress.parquet (the progress file LeRobot's RA-BC weighting reads: point its rabc_progress_path
at it) and values.json (settings, skipped episodes, and the sha256 of both tables, written last), and with
--overlay N a video per episode for the first N: its frames over the value curve and the current value.
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import textwrap
import zlib
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from checkpoint import CheckpointError, device_here, inside, out_file_problem, read_json, save_json
from data import (DataError, VideoError, check_names_some, decode_frames, decode_uint8, lerobot_frame_base,
                  read_dataset, read_instruction_map, read_text, resample, warn_slow)
from encode_text import TextCache, TextCacheError, describe, encoder_id, pad_text
from sim import Mp4Writer
from wan_vae import load_wan_vae, other_vae, vae_ids
from wvm import clip_latents, load_wvm

DEMO_DATA, DEMO_RUN = "data/metaworld/heldout_unseen", "runs/demo-prior-s0"  # what `python demo.py` leaves behind

# ----------------------------------------------------------------------------------------------
# metrics


def rank(x):
    """Ranks 0..n-1 with ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():  # each NaN would rank apart, last: a curve of NaN would score a perfect VOC
        raise ValueError(f"NaN among {len(x)} values to rank")
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


def is_int(x):
    """An integer (numpy's too), not a bool: what an annotation's m, n and T must be."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_annotation(kind, m, n, T):
    if kind not in ("expert", "hesitation", "retry", "failure"):
        raise ValueError(("no annotation kind" if kind is None else f"annotation kind {kind!r}")
                         + ": expected expert, hesitation, retry or failure")
    if kind in ("expert", "failure"):
        if T < 2:
            raise ValueError(f"T = {T}: a trajectory needs at least 2 frames")
        return
    if T < 4:
        raise ValueError(f"T = {T}: too short for a {kind} segment (0 < m < n < T - 1 needs T >= 4)")
    if not all(is_int(x) for x in (m, n)):
        raise ValueError(f"{kind} segment m = {m!r}, n = {n!r}: m and n must be integer frame indices")
    if not 0 < m < n < T - 1:
        raise ValueError(f"{kind} segment m = {m}, n = {n} with T = {T}: needs 0 < m < n < T - 1")
    x = n - m
    if kind == "retry" and T - 2 * x <= 0:  # a retry with m > T - 2x is fine: its curve peaks above 1 (App. B.3)
        raise ValueError(f"retry segment m = {m}, n = {n} with T = {T}: undoing x = {x} frames leaves "
                         f"T - 2x = {T - 2 * x} <= 0 frames of progress")


def gt_curve(kind, m=None, n=None, T=None):
    """The benchmark's ground-truth progress over native frames 0..T-1 (Appendix B.3): piecewise linear
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


def auroc(scores, labels):
    """Area under the ROC curve: the chance that a random positive (label 1) scores above a random negative, ties
    counted half (the Mann-Whitney U statistic / (n_pos n_neg)); NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def kendall_tau_a(a, b):
    """Kendall's tau_a: (concordant - discordant pairs) / all n(n-1)/2 pairs; a pair tied on either side counts as
    neither, so a constant prediction scores 0 (tau_b would divide the ties away)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, 1)
    return float((np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])).sum() / (n * (n - 1) / 2))


# ----------------------------------------------------------------------------------------------
# data weighting (Appendix E)

def chunk_delta(values, H):
    """Δ(t) = V(min(t + H - 1, T - 1)) - V(t): the progress an action chunk of length H starting at t makes."""
    v = np.asarray(values, dtype=np.float64)
    return v[np.minimum(np.arange(len(v)) + H - 1, len(v) - 1)] - v


def filtered_bc_keep(delta, kappa=0.0, keep_top=None):
    """Filtered BC's keep flags for chunk advantages delta [N] -> (flags [N], threshold): the chunks with a positive
    advantage Δ > κ (Appendix E; κ = 0 drops every chunk that makes no progress, including each episode's last
    frame, whose clamped chunk has Δ = 0), or, with keep_top, the top fraction by Δ (Δ at or above its quantile)."""
    delta = np.asarray(delta, dtype=np.float64)
    if keep_top:
        threshold = float(np.quantile(delta, 1 - keep_top))
        return delta >= threshold, threshold
    return delta > kappa, kappa


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


NOISE = "zero"  # where scoring starts each window's flow by default (docs/experiments.md, "Scoring from zero noise")


def scored_from_default_noise(path):
    """Whether a results file (--json's, or --score's values.json) was scored from the default noise, without
    guidance; files from before it record none, and demo.py and policy.py score those again (so too one cut short)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (ValueError, OSError):
        return False
    return isinstance(saved, dict) and saved.get("noise") == NOISE and saved.get("guidance") is None


class WVMScorer:
    """Slides windows of h frames with stride s over each trajectory, chaining each window's prefix value
    from the windows already scored (0 at frame 0 and before it, as in training). combine: how a frame's value comes
    from the windows covering it: "first" (the default with stride 1): the first slot of the window that starts at
    the frame, the one that has seen the most frames after it, so the chain moves one frame at a time (the last h - 1
    frames, where no window starts, take the mean); "mean" over them (the default with a larger stride). The mean
    lags undone work by a frame or two and averages it away (docs/experiments.md, "Reading a frame's value from the
    windows").
    Windows are batched across trajectories: round k scores window k of every trajectory in the batch, so the
    chain of one trajectory runs in order."""
    name = "wvm"

    def __init__(self, model, vae, text_cache, size, stride=1, samples=1, steps=1, batch=16, device="cpu", seed=0,
                 trained=None, combine=None, rotate=False, noise=NOISE, ckpt="the model", guidance=None):
        """noise: "zero" starts each window's flow from the noise's mean (one value per window, whatever the seed;
        not in the paper, which draws it), "draw" from a draw of a trajectory's own generator, seeded by (seed,
        episode id), so its values do not depend on which trajectories share its batch. trained: the run's record of
        its training (resolution, fps, source_fps, ...; load_scorer). rotate: turn every frame by 180 degrees first (a
        camera mounted the other way up). guidance: classifier-free guidance's weight w on the instruction (None: the
        instruction alone; WVM.predict_values)."""
        self.model, self.vae, self.text_cache = model.eval(), vae.eval(), text_cache
        self.size, self.stride, self.samples, self.steps, self.batch = size, stride, samples, steps, batch
        self.device, self.seed, self.h, self.trained = torch.device(device), seed, model.chunk, trained or {}
        self.lead = [0] if self.trained.get("first_frame") else []  # o_0 leads every window of a model trained so
        if not 1 <= stride <= self.h:
            raise ValueError(f"stride {stride}: must be in [1, h = {self.h}] so every prefix frame is scored first")
        combine = combine or ("first" if stride == 1 else "mean")
        if combine not in ("mean", "first") or (combine == "first" and stride != 1):
            raise ValueError(f"combine {combine!r} with stride {stride}: expected mean, or first with stride 1")
        if noise not in ("zero", "draw") or (noise == "zero" and samples > 1):
            raise ValueError(f"noise {noise!r} with {samples} samples: expected draw, or zero with one sample")
        self.combine, self.rotate, self.noise, self.ckpt, self.guidance = combine, rotate, noise, ckpt, guidance

    def require_texts(self, texts, datasets):
        """TextCacheError unless the cache holds every text, as features this model reads (its encoder's width)."""
        self.text_cache.require(texts, datasets)
        c = self.model.video.cfg
        self.text_cache.check_fits(set(texts), c.text_len, c.text_dim, self.ckpt or "the model")

    @torch.no_grad()
    def score(self, trajs, progress=True):
        """[(values [T'], spread [T'])] per trajectory, or None for one whose video cannot be decoded."""
        out = []
        bar = tqdm(total=sum(len(window_ends(len(t.index), self.h, self.stride)) for t in trajs),
                   desc="windows", disable=not progress, dynamic_ncols=True)
        for b0 in range(0, len(trajs), self.batch):
            group, frames = [], []
            for t in trajs[b0:b0 + self.batch]:
                try:
                    x = decode_frames(t.episode, t.index, self.size)  # [3, T', S, S]
                    frames.append(x.flip(-2, -1) if self.rotate else x)
                    group.append(t)
                except VideoError as e:
                    print(f"skipped: episode {t.episode.id}: {e}", file=sys.stderr)
                    bar.update(len(window_ends(len(t.index), self.h, self.stride)))
            results = dict(zip(map(id, group), self.score_decoded(group, frames, bar)))
            out += [results.get(id(t)) for t in trajs[b0:b0 + self.batch]]
        bar.close()
        return out

    def score_decoded(self, group, frames, bar):
        ctx = [self.text_cache.get(t.episode.instruction) for t in group]
        # CPU generators: the same noise, and the same values, on any device (randn_rows)
        gens = [torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{t.episode.id}".encode())) for t in group]
        ends = [window_ends(len(t.index), self.h, self.stride) for t in group]
        sums, spread, counts, first, first_spread = ([np.zeros(len(t.index)) for t in group] for _ in range(5))
        has_first = [np.zeros(len(t.index), bool) for t in group]

        def read(i, f):  # frames f of trajectory i as `combine` reads them: (values, spread)
            return (np.where(has_first[i][f], first[i][f], sums[i][f] / counts[i][f]),
                    np.where(has_first[i][f], first_spread[i][f], spread[i][f] / counts[i][f]))

        # the robot's state, for a model that reads it, where the dataset was read with it (state_column)
        states = [t.episode.extra.get("state") for t in group] if self.trained.get("state") else []
        use_state = bool(states) and all(s is not None for s in states)
        for k in range(max((len(e) for e in ends), default=0)):
            live = [i for i in range(len(group)) if k < len(ends[i])]
            clips, prefix, state = [], [], []
            for i in live:
                t = ends[i][k]
                p = t - self.h  # prefix frame; frame 0 (or -1, before the start: frame 0 again) has value 0
                window = [max(p, 0)] + list(range(t - self.h + 1, t + 1))  # the value tokens' frames
                clips.append(frames[i][:, self.lead + window])
                prefix.append(0.0 if p <= 0 else float(np.clip(read(i, p)[0], 0, 1)))
                if use_state:
                    state.append(torch.from_numpy(states[i][np.asarray(group[i].index)[window]]))
            lat = clip_latents(self.vae, torch.stack(clips).to(self.device), self.h)  # the current latent
            context = pad_text([ctx[i] for i in live])
            st = dict(state=torch.stack(state), start_state=torch.from_numpy(np.stack([states[i][0] for i in live]))) \
                if use_state else {}
            vals = self.model.predict_values(lat.float(), context.to(self.device), torch.tensor(prefix), steps=self.steps,
                                             samples=self.samples, generator=[gens[i] for i in live],
                                             zero_noise=self.noise == "zero", guidance=self.guidance, **st).cpu().numpy()
            bad = np.flatnonzero(~np.isfinite(vals).reshape(len(live), -1).all(1))
            if len(bad):  # NaN would rank as a rising curve and pass np.clip into the weights
                raise CheckpointError(f"{self.ckpt}: its values are not finite (NaN or inf) on "
                                      f"{group[live[bad[0]]].episode.id}: the weights have diverged or are damaged "
                                      f"(see the run's log.jsonl losses)")
            for j, i in enumerate(live):
                f = ends[i][k] - self.h + 1
                v, sd = np.clip(vals[j], 0, 1).mean(0), vals[j].std(0)
                sums[i][f:f + self.h] += v
                spread[i][f:f + self.h] += sd
                counts[i][f:f + self.h] += 1
                if self.combine == "first":
                    first[i][f], first_spread[i][f], has_first[i][f] = v[0], sd[0], True
            bar.update(len(live))
        return [read(i, slice(None)) for i in range(len(group))]


def load_scorer(args):
    """WVMScorer from a train.py run folder or a wvm.safetensors file, with the record of its training (.trained).

    The model file's own record of its training (resolution, fps and per-source fps, VAE and text-encoder ids)
    decides how frames are fed; an older file without it falls back on the run's config.json. A config.json beside
    the model names the VAE and text cache (paths absolute, or relative to the run folder)."""
    path = args.ckpt
    run_dir = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if os.path.isdir(path):
        path = os.path.join(path, "wvm.safetensors")
    run = read_run_config(run_dir)
    model = load_wvm(path, device=args.device)
    trained = {k: run.get(k) for k in ("resolution", "fps")} | model.run
    if trained.get("stage") == "video":
        raise SystemExit(f"{path}: saved by a --stage=video run, which trains the video stream alone: its value "
                         f"stream was never trained. Score a value-stage run (train.py --wan {run_dir}/wan ...)")
    if args.resolution and trained.get("resolution") and args.resolution != trained["resolution"]:
        raise SystemExit(f"--resolution {args.resolution}: the model was trained at {trained['resolution']} ({path})")
    for k, what in (("resolution", "a positive multiple of 32"), ("fps", "a positive number")):
        v = trained.get(k)  # an older model's come from the run's config.json, which may have been edited
        if v is not None and not (type(v) in (int, float) and 0 < v < math.inf and (k == "fps" or v % 32 == 0)):
            raise SystemExit(f"{path if k in model.run else os.path.join(run_dir, 'config.json')}: {k} {v!r}: must "
                             f"be {what}")
    size = args.resolution or trained.get("resolution")
    if not size:
        raise SystemExit(f"{path}: records no training resolution (an older checkpoint); pass --resolution")
    if args.fps is None and not trained.get("fps"):
        raise SystemExit(f"{path}: records no training fps (an older checkpoint); pass --fps")
    if args.guidance is not None and not (trained.get("text_dropout") or run.get("text_dropout")):
        raise SystemExit(f"--guidance {args.guidance:g}: {path} was trained without the empty instruction "
                         f"(train.py --text_dropout), which guidance reads beside the given one")
    if args.stride > model.chunk:
        raise SystemExit(f"--stride {args.stride}: at most the value chunk h = {model.chunk}, so every prefix frame "
                         f"is scored before it is used")
    vae_path = args.vae or in_run(run_dir, run.get("vae")) or os.path.join(run_dir, "vae.safetensors")
    if not os.path.exists(vae_path):
        raise SystemExit(f"{vae_path}: no VAE; pass --vae")
    vae = load_wan_vae(vae_path, device=args.device)  # a demo run saves its random VAE as vae.safetensors
    ours = vae_ids(vae)
    if other_vae(trained, ours):
        raise SystemExit(f"{vae_path}: is not the VAE the model was trained with (id {' / '.join(ours.values())}; "
                         f"{path} records {' / '.join(str(trained.get(k)) for k in ours)})")
    text_path = args.text_cache or in_run(run_dir, run.get("text_cache"))
    if not text_path:
        raise SystemExit(f"{path}: no config.json beside it names the text cache; pass --text_cache")
    text = TextCache(text_path)
    if trained.get("text_encoder") and encoder_id(text.encoder) != trained["text_encoder"]:
        raise SystemExit(f"{text_path}: made by {describe(text.encoder)}, not the text encoder the model was trained "
                         f"with (id {trained['text_encoder']})")
    return WVMScorer(model, vae, text, size, stride=args.stride, samples=args.samples, steps=args.steps,
                     batch=args.batch, device=args.device, seed=args.seed, trained=trained, combine=args.combine,
                     rotate=args.rotate, noise=args.noise, ckpt=path, guidance=args.guidance)


def state_column(scorer, path):
    """The column of the robot's state to read from the dataset at `path` for this scorer's model: the one it trained
    on (train.py --state), or None for a model that reads no state. A dataset without it (or of another width) is
    scored from the video and language alone if training left the state out of some clips (state_dropout), with a
    warning; otherwise it is an error."""
    trained = getattr(scorer, "trained", None) or {}  # (a scorer without a model reads no state)
    column, dim = trained.get("state"), trained.get("state_dim")
    if not column or not os.path.exists(path):  # no such dataset: reading it says so, first
        return None
    info = os.path.join(path, "meta", "info.json")
    try:
        with open(info) as f:
            spec = json.load(f)["features"].get(column)
    except (FileNotFoundError, NotADirectoryError):  # EgoDex, or a manifest (a file): no LeRobot columns
        spec = None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a broken info.json: the reader names it
        return None
    width = spec.get("shape") if isinstance(spec, dict) else None
    if width == [dim]:
        return column
    what = f"{path}: no {column} [{dim}]" + (f" (its {column} is {width})" if width else "")
    if not trained.get("state_dropout"):
        raise SystemExit(f"{what}, the robot's state the model reads beside the video, and it never trained "
                         f"without it")
    print(f"{what}: scored from the video and language alone, as the model was trained on "
          f"{trained['state_dropout']:.0%} of its clips", file=sys.stderr)
    return None


def dataset_fps(trained, path):
    """The fps at which a run's model scores the dataset at `path`: that of its training source when the run trained
    on that path at an fps of its own (train.py --data=path:weight:fps), else the run's. trained: the run's record."""
    return trained.get("source_fps", {}).get(os.path.realpath(path)) or trained["fps"]


def read_run_config(run_dir):
    """A run folder's config.json, or {} where there is none."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            run = json.load(f)
    except (ValueError, OSError) as e:
        raise SystemExit(f"{path}: unreadable run config ({e})") from None
    if not isinstance(run, dict):
        raise SystemExit(f"{path}: a run config is a JSON object, not {type(run).__name__}")
    return run


def in_run(run_dir, p):
    """A path from a run's config.json: absolute, relative to the run folder, or (older runs) to where it ran."""
    if p and not isinstance(p, str):  # edited by hand
        raise SystemExit(f"{os.path.join(run_dir, 'config.json')}: {p!r} where a path belongs")
    if not p or os.path.isabs(p):
        return p or None
    return next((q for q in (os.path.join(run_dir, p), p) if os.path.exists(q)), os.path.join(run_dir, p))


# ----------------------------------------------------------------------------------------------
# benchmarks

METRIC_NAMES = {"hesitation": "Hesitation-RMSE", "retry": "Retry-VOC"}


def load_annotated(path, fps, camera=None, min_frames=4, state=None):
    """Episodes of a LeRobot dataset (+ its annotations.jsonl) or a manifest, with their annotation.

    Returns (items, problems): items are (Trajectory, annotation dict); problems are messages for every
    episode left out (while indexing, unannotated where an annotations file exists, unusable annotation)
    and every annotation of an episode the dataset lacks: reported and counted, never silently dropped. Each is said
    once on stderr: the dataset's reader says those it leaves out while indexing, this function the rest.
    Without an annotations file (and without a `kind` on any manifest line), every episode is an expert. A failure's
    `achieved` (the fraction of the task done at its end, in [0, 1]) may be missing: it still counts for the AUROC,
    and the tasks whose tau_a it leaves undefined are named. state: the column of the robot's state to read with each
    episode (state_column)."""
    skipped = []
    episodes = read_dataset(path, camera=camera, skipped=skipped, state=state)
    warn_slow(episodes, fps, path)
    problems = [f"episode {id}: {reason}" for id, reason in skipped]

    def left_out(msg):
        print(f"skipped: {msg}", file=sys.stderr)
        problems.append(msg)

    ann_file = os.path.join(path, "annotations.jsonl") if os.path.isdir(path) else None
    annotations = read_annotations(ann_file) if ann_file and os.path.exists(ann_file) else None
    kinds = any("kind" in ep.extra for ep in episodes)  # a manifest that annotates: every line must
    if annotations is None and not kinds:
        print(f"{path}: no annotations.jsonl; every episode counts as an expert", file=sys.stderr)
    items = []
    for ep in episodes:
        if annotations is not None:
            if ep.episode_index not in annotations:
                left_out(f"episode {ep.id}: no line in {ann_file}")
                continue
            line, a = annotations[ep.episode_index]
            where = f"{ann_file}:{line}: "
        else:
            a = ep.extra if kinds else {"kind": "expert", "T": ep.T}
            where = f"{path}: " if kinds else ""
        try:
            T = a.get("T", ep.T)
            if not is_int(T):
                raise ValueError(f"annotation T = {T!r}: the number of frames must be an integer")
            if T != ep.T:
                raise ValueError(f"annotation T = {T} but the video has {ep.T} frames")
            check_annotation(a.get("kind"), a.get("m"), a.get("n"), T)
            for k in ("task", "embodiment", "mechanism"):  # the bench's rows group by them
                if not isinstance(a.get(k, ""), (str, type(None))):
                    raise ValueError(f"annotation {k} = {a[k]!r}: expected a string")
            f = a.get("achieved")
            if a["kind"] == "failure" and f is not None and not (
                    isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1):
                raise ValueError(f"achieved = {f!r}: the fraction of the task a failure achieved must be a number "
                                 f"in [0, 1]")
        except (ValueError, TypeError) as e:
            left_out(f"episode {ep.id}: {where}{e}")
            continue
        # a null field is one not given: a null task is the episode's instruction (not one task "None" that ranks
        # every such episode together), a null embodiment its dataset
        a = {k: v for k, v in a.items() if v is not None}
        index = resample(ep.T, ep.fps, fps)
        if len(index) < min_frames:
            left_out(f"episode {ep.id}: {len(index)} frames at {fps:g} fps, fewer than one window of {min_frames}")
            continue
        need = {"hesitation": 1, "retry": 2}.get(a["kind"], 0)  # Hesitation-RMSE needs a frame, a correlation two
        inside = int(((index >= a["m"]) & (index <= a["n"])).sum()) if need else 0
        if inside < need:  # still an episode that succeeds, for the other benches
            left_out(f"episode {ep.id}: {where}{a['kind']} segment [{a['m']}, {a['n']}] holds {inside} of the frames "
                     f"scored at {fps:g} fps (the video's {ep.fps:g} fps resampled), fewer than the {need} its metric "
                     f"needs: left out of {METRIC_NAMES[a['kind']]}")
        items.append((Trajectory(ep, index), a))
    unknown = sorted({a.get("task", t.episode.instruction) for t, a in items
                      if a["kind"] == "failure" and a.get("achieved") is None})
    if unknown:
        print(f"{path}: failures without `achieved` (the fraction of the task done): the ranking bench's Kendall "
              f"tau_a leaves out their tasks ({', '.join(map(str, unknown))})", file=sys.stderr)
    present = {ep.episode_index for ep in episodes} | {int(i.rsplit("/", 1)[1]) for i, _ in skipped
                                                       if i.rsplit("/", 1)[-1].isdigit()}
    for e, (line, _) in sorted((annotations or {}).items()):
        if e not in present:
            left_out(f"{ann_file}:{line}: an annotation of episode {e}, which the dataset does not have")
    return items, problems


def read_annotations(path):
    """annotations.jsonl -> {episode index: (line number, annotation)}; LeRobot's `episode_index` or `episode`
    names the episode. A line that is not an annotation stops with its file and line named."""
    out = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            a = json.loads(line.strip())
        except ValueError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
        try:
            if not isinstance(a, dict):
                raise ValueError(f"a JSON {type(a).__name__}, not an object")
            key = a.get("episode_index", a.get("episode"))
            if type(key) is not int:
                raise ValueError(f"no integer episode_index (or episode): {key!r}")
        except ValueError as e:
            raise DataError(f"{path}:{n}: not an annotation ({e})") from None
        if key in out:
            raise DataError(f"{path}:{n}: a second annotation of episode {key} (the first is on line {out[key][0]})")
        out[key] = (n, a)
    return out


def reword(items, path):
    """--instructions: each trajectory whose instruction the JSON file {instruction: replacement} names is scored
    with the replacement; its annotation (task, kind) stays. A file that names none of them is an error."""
    table = read_instruction_map(path)
    check_names_some(path, table, [t.episode.instruction for t, _ in items], "a replacement")
    return [(Trajectory(replace(t.episode, instruction=table.get(t.episode.instruction, t.episode.instruction)),
                        t.index), {**a, "task": a.get("task", t.episode.instruction)}) for t, a in items]


BENCHES = {"suboptimal": ("hesitation", "retry"), "expert": ("expert",),
           "ranking": ("expert", "hesitation", "retry", "failure")}
SUCCEEDS = ("expert", "hesitation", "retry")  # every kind of trajectory but a failure ends with the task done


def score_items(items, scorers):
    """Score every trajectory once with every scorer -> (per-trajectory results, skipped episode ids). A trajectory
    some scorer cannot score (unreadable video) is left out for all of them, so rows compare alike."""
    preds = {s.name: s.score([t for t, _ in items]) for s in scorers}
    skipped = [t.episode.id for n, (t, _) in enumerate(items) if any(p[n] is None for p in preds.values())]
    results = []
    for scorer in scorers:
        for (traj, a), pred in zip(items, preds[scorer.name]):
            if traj.episode.id in skipped:
                continue
            v, spread = pred
            T = traj.episode.T
            r = {"method": scorer.name, "episode": traj.episode.id, "kind": a["kind"], "mechanism": a.get("mechanism"),
                 "task": a.get("task", traj.episode.instruction), "instruction": traj.episode.instruction,
                 "embodiment": a.get("embodiment", traj.episode.source),
                 "T": T, "index": traj.index.tolist(), "values": v.tolist(), "spread": spread.tolist(),
                 "m": a.get("m"), "n": a.get("n"), "final": float(v[-1]), "voc": voc(v),
                 "achieved": 1.0 if a["kind"] in SUCCEEDS else float("nan" if a.get("achieved") is None
                                                                     else a["achieved"])}
            if a["kind"] == "hesitation":
                r["hesitation_rmse"] = hesitation_rmse(v, a["m"], a["n"], T, traj.index)
            elif a["kind"] == "retry":
                r["retry_voc"] = retry_voc(v, a["m"], a["n"], T, traj.index)
            results.append(r)
    return results, skipped


def bench_rows(bench, results, group_key="embodiment"):
    """One table: a row per method and group (task, embodiment, mechanism ...) and an `average` row.

    suboptimal: Hesitation-RMSE and Retry-VOC (Appendix B.3); expert: Expert-VOC; each a mean over trajectories.
    ranking, over all trajectories of a task: AUROC of the final value, successes vs failures, and the gap of their
    mean final values; Kendall tau_a of the final value with the fraction achieved (1 for a success), and the tau_a
    a perfect score gets (below 1 wherever two trajectories achieved the same: every pair of successes); VOC per kind,
    so a curve that rises through a failure shows; the mean final value of failures. Ranking metrics are computed
    per task, then averaged over the tasks of a group."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == method and r["kind"] in BENCHES[bench]]
        successes = {}  # per task, for the groups that have none of their own
        for r in mine:
            if r["kind"] in SUCCEEDS:
                successes.setdefault(r["task"], []).append(r)
        for g in sorted({r[group_key] for r in mine}, key=str) + ["average"]:
            sel = [r for r in mine if g == "average" or r[group_key] == g]
            row = {"method": method, group_key: g}
            if bench == "ranking":
                per_task = [ranking_metrics([r for r in sel if r["task"] == t], successes.get(t, ()))
                            for t in sorted({r["task"] for r in sel})]
                for k in RANKING:
                    vals = [m[k] for m in per_task if not math.isnan(m[k])]
                    row[k], row[f"n_{k}"] = (float(np.mean(vals)) if vals else float("nan")), len(vals)
            else:
                for k in {"suboptimal": ("hesitation_rmse", "retry_voc"), "expert": ("voc",)}[bench]:
                    vals = [r[k] for r in sel if k in r and not math.isnan(r[k])]
                    row[k], row[f"n_{k}"] = (float(np.mean(vals)) if vals else float("nan")), len(vals)
            rows.append(row)
    return rows


RANKING = ("auroc", "gap", "tau_a", "tau_a_max", "voc_expert", "voc_hesitation", "voc_retry", "voc_failure",
           "final_failure")


def ranking_metrics(sel, successes=()):
    """The ranking bench's metrics over the trajectories of one task. A group with failures and no successes (one
    failure mechanism under --by mechanism, the failures under --by kind) is ranked against `successes`, the task's;
    the per-kind VOC and the failures' final value stay the group's own."""
    ranked = sel if any(r["kind"] in SUCCEEDS for r in sel) else [*sel, *successes]
    final = np.array([r["final"] for r in ranked])
    success = np.array([r["kind"] in SUCCEEDS for r in ranked])
    achieved = [r["achieved"] for r in ranked]
    out = {"auroc": auroc(final, success),
           "gap": float(final[success].mean() - final[~success].mean()) if success.any() and (~success).any()
           else float("nan"),
           # without failures every trajectory achieved 1: no order to agree with
           "tau_a": kendall_tau_a(final, achieved) if (~success).any() else float("nan"),
           # what a perfect score gets: pairs that achieved the same (two successes) count as neither
           "tau_a_max": kendall_tau_a(achieved, achieved) if (~success).any() else float("nan"),
           "final_failure": float(final[~success].mean()) if (~success).any() else float("nan")}
    for kind in ("expert", "hesitation", "retry", "failure"):
        vocs = [r["voc"] for r in sel if r["kind"] == kind]
        out[f"voc_{kind}"] = float(np.mean(vocs)) if vocs else float("nan")
    return out


def nan_to_null(x):
    """A metric that is undefined (NaN) as JSON's null: bare NaN is not JSON, and jq or a browser refuse the file."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: nan_to_null(v) for k, v in x.items()}
    return [nan_to_null(v) for v in x] if isinstance(x, (list, tuple)) else x


def read_results(path):
    """An `eval.py --json` file, its undefined metrics NaN again (files written before hold NaN itself)."""
    with open(path) as f:
        saved = json.load(f)
    for r in [r for rows in saved["tables"].values() for r in rows] + saved["trajectories"]:
        for k in (*NAMES, "final", "achieved"):
            if k in r and r[k] is None:
                r[k] = float("nan")
    return saved


NAMES = {"hesitation_rmse": "Hesitation-RMSE ↓", "retry_voc": "Retry-VOC ↑", "voc": "Expert-VOC ↑",
         "auroc": "success AUROC ↑", "gap": "success - failure ↑", "tau_a": "τ_a ↑", "tau_a_max": "τ_a at best",
         "voc_expert": "VOC expert", "voc_hesitation": "VOC hesitation", "voc_retry": "VOC retry",
         "voc_failure": "VOC failure ↓", "final_failure": "failure final ↓"}


def format_table(rows):
    keys = [k for k in rows[0] if not k.startswith("n_")]
    head = [NAMES.get(k, k) for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f} (n={r['n_' + k]})" if k in NAMES else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(results, items, plots_dir, size=64):
    """One PNG per trajectory (frame strip, predictions with spread band, ground truth) and summary.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    by_ep = {t.episode.id: t for t, _ in items}
    # one figure redrawn for every trajectory: making a figure and placing it costs more than drawing into it
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(10, 5), gridspec_kw={"height_ratios": [1, 2]})
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.93, hspace=0.15)
    for ep_id in sorted({r["episode"] for r in results}):
        rs = [r for r in results if r["episode"] == ep_id]
        traj, r0 = by_ep[ep_id], rs[0]
        for ax in (ax0, ax1):
            ax.clear()
        strip_idx = np.linspace(0, len(traj.index) - 1, min(8, len(traj.index))).round().astype(int)
        strip = decode_frames(traj.episode, traj.index[strip_idx], size)
        ax0.imshow(((strip.permute(2, 1, 3, 0).reshape(size, -1, 3) + 1) * 127.5).clamp(0, 255).byte().numpy())
        ax0.axis("off")
        x = np.asarray(r0["index"])
        if r0["kind"] == "failure":  # no curve is known inside a failure: only what it achieved by its end, if given
            if not math.isnan(r0["achieved"]):
                ax1.plot([r0["T"] - 1], [r0["achieved"]], "k*", markersize=12, label="achieved at the end")
        else:
            ax1.plot(np.arange(r0["T"]), gt_curve(r0["kind"], r0["m"], r0["n"], r0["T"]), "k--", label="ground truth")
        for r in rs:
            v, s = np.asarray(r["values"]), np.asarray(r["spread"])
            ax1.plot(x, v, marker=".", label=r["method"])
            if s.any():
                ax1.fill_between(x, v - s, v + s, alpha=0.2)
        if r0["kind"] in ("hesitation", "retry"):
            ax1.axvspan(r0["m"], r0["n"], color="orange", alpha=0.15, label=f"{r0['kind']} ({r0['mechanism']})")
        ax1.set(xlabel="native frame", ylabel="progress", ylim=(-0.05, 1.05),
                title=plot_title(ep_id, r0["task"], r0["kind"]))
        ax1.legend(fontsize=7)
        fig.savefig(os.path.join(plots_dir, ep_id.replace("/", "_") + ".png"), dpi=80)
    plt.close(fig)
    plot_summary(results, os.path.join(plots_dir, "summary.png"))


def plot_title(ep_id, task, kind, width=95):
    """A trajectory plot's title, on one line of the figure: a long instruction is cut short, never the episode or
    its kind."""
    rest = f"{ep_id}:  ({kind})"
    return f"{ep_id}: {textwrap.shorten(task, max(width - len(rest), 12), placeholder=' ...')} ({kind})"


def summary_bars(results):
    """{method: {metric: the benches' average}} of the summary plot's bars (0 where a metric has no trajectory):
    Hesitation-RMSE of the hesitations, Retry-VOC of the retries, Expert-VOC of the experts, as the tables read them."""
    rows = [r for b in ("suboptimal", "expert") for r in bench_rows(b, results) if r["embodiment"] == "average"]
    return {m: {k: 0.0 if math.isnan(r[k]) else r[k] for r in rows if r["method"] == m for k in NAMES if k in r}
            for m in {r["method"] for r in rows}}


def plot_summary(results, path):
    """Every WVM curve by kind on its trajectory's own time axis (a failure: what it achieved, as a marker at its
    end) and the bench metrics per method, from score_items' results (or a --json file's "trajectories")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in BENCHES["ranking"] if any(r["kind"] == k for r in results)]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(3.2 * (len(kinds) + 1), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rs = [r for r in results if r["method"] == "wvm" and r["kind"] == kind]
        for r in rs:
            ax.plot(np.asarray(r["index"]) / max(r["T"] - 1, 1), r["values"], color="C0", alpha=0.35, lw=1)
            if kind == "failure":
                ax.plot([1.0], [r["achieved"]], "k*", markersize=5, alpha=0.5)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="time" if kind == "expert" else None)
        plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        ax.set(title=f"wvm: {len(rs)} {kind if len(rs) == 1 else plural}", xlabel="t / (T - 1)", ylim=(-0.05, 1.05))
        if kind == "failure" and any(not math.isnan(r["achieved"]) for r in rs):
            ax.plot([], [], "k*", label="achieved at the end")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("predicted progress")
    ax, methods = axes[0][-1], sorted({r["method"] for r in results})
    keys = [k for k in ("hesitation_rmse", "retry_voc", "voc") if any(k in r for r in results)]
    bars = summary_bars(results)
    for j, m in enumerate(methods):  # grouped bars: a group per metric, a bar per method
        ax.bar(np.arange(len(keys)) + (j - (len(methods) - 1) / 2) * 0.8 / len(methods),
               [bars[m][k] for k in keys], 0.8 / len(methods), label=m)
    ax.set_xticks(np.arange(len(keys)), [NAMES[k].split()[0] for k in keys], fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title("averages over trajectories")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# data weighting export

def export_scores(path, scorer, out_dir, fps, H=10, kappa=0.0, keep_top=None, tau=10.0, delta_max=2.0, camera=None,
                  overlay=0):
    """Per-frame progress of every episode of a dataset at its native fps (interpolated from the
    benchmark fps) and, for action chunks of length H, Δ, the Filtered-BC keep flag and the AWR weight,
    written to out_dir/values.parquet keyed by (episode_index, frame_index); the same progress as LeRobot's
    RA-BC progress file (sarm_progress.parquet); values.json; and `overlay` progress videos.

    The tables are written under temporary names, then renamed, values.json (which records each table's
    sha256) last: an interrupted export leaves the previous files whole, never a truncated one."""
    before = os.path.join(out_dir, "values.json")
    if os.path.exists(before):  # scores of this dataset are replaced (a new model); another's are not
        try:
            other = read_json(before).get("dataset")
        except CheckpointError:
            other = None
        if other != os.path.abspath(path):
            raise DataError(f"{out_dir}: holds the scores of {other or 'something else (values.json unreadable)'}; "
                            f"choose another --out for {path}, or delete it")
    foreign = [n for n in ("values.parquet", "sarm_progress.parquet", "overlay")
               if os.path.exists(os.path.join(out_dir, n))]
    if foreign and not os.path.exists(before):  # e.g. a dataset folder holding LeRobot's own SARM progress file
        raise DataError(f"{out_dir}: holds {', '.join(foreign)} that no eval.py --score wrote (no values.json beside "
                        f"them); choose another --out, or move them")
    # the data's own frame index, read first: a broken column is said before the scoring, not after it
    base = lerobot_frame_base(path) if os.path.exists(os.path.join(path, "meta", "info.json")) else {}
    found = []
    episodes = read_dataset(path, camera=camera, skipped=found, state=state_column(scorer, path))
    warn_slow(episodes, fps, path)
    views = {}
    for ep in episodes:
        views.setdefault(ep.episode_index, []).append(ep.id)
    twice = next((ids for ids in views.values() if len(ids) > 1), None)
    if twice:  # --camera all: each view an episode of the same index
        raise DataError(f"{path}: {' and '.join(twice)} are one episode: the tables key a frame by (episode_index, "
                        f"frame_index), so --score scores one camera (--camera KEY)")
    skipped = [f"{id}: {reason}" for id, reason in found]
    trajs = [Trajectory(ep, resample(ep.T, ep.fps, fps)) for ep in episodes]
    skipped += [f"{t.episode.id}: {len(t.index)} frames at {fps:g} fps, fewer than one window of {scorer.h}"
                for t in trajs if len(t.index) < scorer.h]
    trajs = [t for t in trajs if len(t.index) >= scorer.h]
    if not trajs:
        raise DataError(f"{path}: no episode to score ({len(skipped)} skipped)")
    scorer.require_texts([t.episode.instruction for t in trajs], [path])
    preds = scorer.score(trajs)
    skipped += [f"{t.episode.id}: video could not be decoded" for t, p in zip(trajs, preds) if p is None]
    scored = [(t, p) for t, p in zip(trajs, preds) if p is not None]
    if not scored:
        raise DataError(f"{path}: no episode could be scored ({len(skipped)} skipped)")
    cols = {k: [] for k in ("episode_index", "frame_index", "progress", "spread", "delta", "index", "in_data")}
    for traj, (v, s) in scored:
        T = traj.episode.T
        native = np.interp(np.arange(T), traj.index, v)
        # LeRobot's dataset-wide frame index, which its RA-BC weighting looks frames up by: the data's own, else
        # the metadata's, else a running count
        start, rows = base.get(traj.episode.episode_index, (traj.episode.extra.get(
            "index_from", cols["index"][-1][-1] + 1 if cols["index"] else 0), T))
        if rows < T:  # frames the video has and the data not: no index of their own (they would take the next's)
            print(f"{traj.episode.id}: {T} frames in its video and metadata, {rows} rows in the data; "
                  f"sarm_progress.parquet holds the first {rows}", file=sys.stderr)
        cols["index"].append(start + np.arange(T, dtype=np.int64))
        cols["in_data"].append(np.arange(T) < rows)
        cols["episode_index"].append(np.full(T, traj.episode.episode_index, dtype=np.int64))
        cols["frame_index"].append(np.arange(T, dtype=np.int64))
        cols["progress"].append(native)
        cols["spread"].append(np.interp(np.arange(T), traj.index, s))
        cols["delta"].append(chunk_delta(native, H))
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    index, in_data = cols.pop("index"), cols.pop("in_data")
    cols["keep"], threshold = filtered_bc_keep(cols["delta"], kappa, keep_top)
    cols["awr_weight"] = awr_weight(cols["delta"], tau, delta_max)
    # LeRobot's progress-file layout: int64 index, episode_index, frame_index, float32 progress_<head>, rows by
    # index. WVM has one value head; both head names carry it, so either rabc_head_mode reads it.
    order = np.flatnonzero(in_data)[np.argsort(index[in_data], kind="stable")]
    if len(order) > 1 and (np.diff(index[order]) == 0).any():  # a trainer would look up one frame's and get another's
        dup = int(index[order][1:][np.diff(index[order]) == 0][0])
        raise DataError(f"{path}: the data's index {dup} belongs to two scored frames (episodes' rows overlap in the "
                        f"index column); sarm_progress.parquet would be ambiguous")
    progress = cols["progress"][order].astype(np.float32)
    sarm = pa.table({"index": index[order], "episode_index": cols["episode_index"][order],
                     "frame_index": cols["frame_index"][order], "progress_sparse": progress, "progress_dense": progress})
    tables = {"values.parquet": pa.table(cols), "sarm_progress.parquet": sarm}
    os.makedirs(out_dir, exist_ok=True)
    digests = {}
    for name, table in tables.items():
        pq.write_table(table, os.path.join(out_dir, name + ".tmp"))
        with open(os.path.join(out_dir, name + ".tmp"), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    meta = {"dataset": os.path.abspath(path), "scorer": scorer.name, "benchmark_fps": fps, "chunk_length": H,
            "kappa": threshold, "keep_top": keep_top, "tau": tau, "delta_max": delta_max,
            "kept_fraction": float(cols["keep"].mean()), "frames": int(len(cols["keep"])),
            "skipped_episodes": skipped, "noise": getattr(scorer, "noise", None),
            "guidance": getattr(scorer, "guidance", None), "sha256": digests}
    with open(os.path.join(out_dir, "values.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    for name in (*tables, "values.json"):
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    folder = os.path.join(out_dir, "overlay")
    for old in (os.listdir(folder) if os.path.isdir(folder) else []):  # an earlier scoring's, now out of date
        if old.startswith("episode_") and old.endswith(".mp4"):
            os.remove(os.path.join(folder, old))
    for traj, _ in scored[:overlay]:
        sel = cols["episode_index"] == traj.episode.episode_index
        try:
            write_overlay(traj.episode, cols["progress"][sel], os.path.join(folder, overlay_name(traj.episode)))
        except VideoError as e:  # scoring read only the sampled frames; the overlay reads them all
            print(f"skipped the overlay of episode {traj.episode.id}: {e}", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, overlay_name(traj.episode)))
    return meta


def overlay_name(episode):
    return f"episode_{episode.episode_index:06d}.mp4"


OVERLAY_MIN_WIDTH = 256  # smaller videos are enlarged so the curve and the number stay readable


def overlay_layout(T, W, H):
    """(x of each frame's point, y of progress 0 and 1, panel height) of the value panel under a W x H frame."""
    panel, m = max(64, W // 3) // 2 * 2, 8
    return m + np.arange(T) * (W - 2 * m) / max(T - 1, 1), (H + panel - m, H + m + 12), panel


def write_overlay(episode, progress, path, chunk=32):
    """An mp4 of the episode at its native fps, each frame over a panel with the whole value curve, a cursor
    at the frame and its value as a dot and a number, as LeRobot's SARM tooling shows its progress.
    progress: [T] values per native frame."""
    from PIL import Image, ImageDraw

    T = episode.T
    H0, W0 = decode_uint8(episode, [0]).shape[1:3]
    scale = -(-OVERLAY_MIN_WIDTH // W0)
    W, H = W0 * scale // 2 * 2, H0 * scale // 2 * 2  # even sizes for yuv420p
    xs, (y0, y1), panel = overlay_layout(T, W, H)
    ys = y0 + np.clip(progress, 0, 1) * (y1 - y0)
    base = Image.new("RGB", (W, H + panel), (24, 24, 24))
    draw = ImageDraw.Draw(base)
    for y in (y0, y1):
        draw.line([(xs[0], y), (xs[-1], y)], fill=(70, 70, 70))
    draw.line(list(zip(xs, ys)), fill=(80, 150, 255), width=2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    video = Mp4Writer(path + ".tmp.mp4", episode.fps, "libx264", W, H + panel, crf=18, gop=max(1, round(episode.fps)))
    try:
        for c in range(0, T, chunk):
            idx = np.arange(c, min(c + chunk, T))
            frames = decode_uint8(episode, idx)
            out = []
            for t, frame in zip(idx, frames):
                img = base.copy()
                img.paste(Image.fromarray(frame).resize((W0 * scale, H0 * scale), Image.NEAREST).crop((0, 0, W, H)))
                d = ImageDraw.Draw(img)
                d.line([(xs[t], H), (xs[t], H + panel)], fill=(200, 200, 200))
                d.ellipse([xs[t] - 4, ys[t] - 4, xs[t] + 4, ys[t] + 4], fill=(255, 40, 40))
                d.text((8, H + 1), f"progress {progress[t]:.2f}   frame {t}", fill=(255, 255, 255))
                out.append(np.asarray(img))
            video.write(out)
        video.close()
    except BaseException:
        with contextlib.suppress(Exception):  # the writer may have closed itself already
            video.abort()
        with contextlib.suppress(FileNotFoundError):  # a playable but cut-short video, never an episode's overlay
            os.remove(path + ".tmp.mp4")
        raise
    os.replace(path + ".tmp.mp4", path)


# ----------------------------------------------------------------------------------------------

def can_be_folder(d):
    """Whether folder d is one or can be made: the nearest of it and its parents that exists is a folder."""
    d = os.path.abspath(d)
    while not os.path.lexists(d):
        d = os.path.dirname(d)
    return os.path.isdir(d)


def parse_args(argv):
    """The command line, every option checked here, before anything is loaded."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", choices=[*BENCHES, "all"], help="all: every table from one scoring pass")
    p.add_argument("--data", help=f"LeRobot dataset (+ annotations.jsonl) or manifest .jsonl (with neither --data "
                   f"nor --ckpt: {DEMO_DATA} and {DEMO_RUN}, if demo.py made them)")
    p.add_argument("--score", metavar="DATASET", help="write per-frame values and weights for a dataset")
    p.add_argument("--out", help="output folder of --score (default scores)")
    p.add_argument("--overlay", type=int, default=0, metavar="N",
                   help="with --score: progress videos of the first N episodes")
    p.add_argument("--ckpt", help="train.py run folder or wvm.safetensors (omit: baselines only)")
    p.add_argument("--vae")
    p.add_argument("--text_cache")
    p.add_argument("--camera")
    p.add_argument("--fps", type=float, default=None, help="benchmark fps (default: the fps the run trained this "
                   "dataset's source at, else the run's, else 2.0)")
    p.add_argument("--resolution", type=int, help="frame size (default: the run's; another one is refused)")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--combine", choices=["first", "mean"], help="a frame's value: the first slot of the window starting "
                   "at it (the default with --stride 1), or the mean over the windows covering it (the default "
                   "otherwise; docs/experiments.md)")
    p.add_argument("--rotate", action="store_true", help="turn every frame by 180 degrees before the model reads "
                   "it: a camera mounted the other way up (Meta-World renders its corner views so)")
    p.add_argument("--noise", choices=["zero", "draw"], default=NOISE, help="where each window's flow starts: the "
                   "noise's mean, 0 (one value per window; not in the paper), or a draw, as the paper samples "
                   "(docs/experiments.md, \"Scoring from zero noise\")")
    p.add_argument("--samples", type=int, default=1, help="noise samples per window (their spread; with --noise draw)")
    p.add_argument("--steps", type=int, default=1, help="Euler steps")
    p.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance: u + W (c - u), c the value "
                   "given the instruction, u given the empty one; for a model trained with train.py --text_dropout "
                   "(not in the paper; docs/results.md)")
    p.add_argument("--batch", type=int, default=16, help="trajectories scored together")
    p.add_argument("--by", choices=["embodiment", "task", "mechanism", "kind"],
                   help="with --bench: a row per group of trajectories (default embodiment; ranking: a group of "
                        "failures alone, e.g. one failure mechanism, is ranked against its tasks' successes)")
    p.add_argument("--instructions", metavar="FILE", help="with --bench: JSON {instruction: replacement}, the "
                   "episodes scored with another instruction (a rewording, another task's)")
    p.add_argument("--json")
    p.add_argument("--plots")
    p.add_argument("--chunk", type=int, help="action chunk length H for the weights (default 10)")
    p.add_argument("--kappa", type=float, default=None, help="Filtered BC keeps chunks with Δ > kappa (default 0)")
    p.add_argument("--keep_top", type=float, default=None, help="keep this top fraction of chunks by Δ (e.g. 0.7)")
    p.add_argument("--tau", type=float, default=None, help="AWR temperature (default 10 for H = 10, 2 for H = 50)")
    p.add_argument("--delta_max", type=float, help="AWR's largest weight: min(exp(tau Δ), delta_max) (default 2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    bad = [f"--{k} {getattr(a, k)}: must be at least 1" for k in ("samples", "steps", "batch", "stride")
           if getattr(a, k) < 1]
    given = [k for k in ("out", "chunk", "kappa", "keep_top", "tau", "delta_max") if getattr(a, k) is not None]
    a.out, a.chunk = a.out or "scores", 10 if a.chunk is None else a.chunk  # (None: told apart from the default)
    a.delta_max = 2.0 if a.delta_max is None else a.delta_max
    if a.chunk < 2:  # Δ = V(t + H - 1) - V(t): 0 for every chunk of one frame
        bad.append(f"--chunk {a.chunk}: must be at least 2")
    if a.samples > 1 and a.noise == "zero":
        bad.append(f"--samples {a.samples}: samples from zero noise are all one; pass --noise draw")
    if a.combine == "first" and a.stride != 1:
        bad.append(f"--combine first needs --stride 1 (got {a.stride}); pass --combine mean")
    # before any work: a wrong path must not cost the scoring
    if a.json and (problem := out_file_problem(a.json, "--json")):
        bad.append(problem)
    checks = [(a.overlay >= 0, "--overlay: must not be negative"),
              (a.fps is None or 0 < a.fps < math.inf, f"--fps {a.fps}: must be positive"),
              (a.resolution is None or (a.resolution > 0 and a.resolution % 32 == 0),
               f"--resolution {a.resolution}: must be a positive multiple of 32"),
              (a.keep_top is None or 0 < a.keep_top <= 1, f"--keep_top {a.keep_top}: a fraction in (0, 1]"),
              (a.tau is None or 0 < a.tau < math.inf, f"--tau {a.tau}: must be positive"),
              (0 < a.delta_max < math.inf, f"--delta_max {a.delta_max}: must be positive"),
              (a.kappa is None or math.isfinite(a.kappa), f"--kappa {a.kappa}: must be finite"),
              (a.kappa is None or a.keep_top is None, "--kappa or --keep_top, not both: each sets the keep threshold"),
              (a.guidance is None or math.isfinite(a.guidance), f"--guidance {a.guidance}: must be finite"),
              (a.seed >= 0, f"--seed {a.seed}: must not be negative"),
              (device_here(a.device), f"--device {a.device}: no such device here ({torch.cuda.device_count()} CUDA "
               f"GPUs); pass --device cpu"),
              (not (a.bench and a.score), "give --bench or --score, not both"),
              (a.bench or a.score, "give --bench suboptimal|expert|ranking|all (with --data) or --score DATASET"),
              (not a.score or a.ckpt, "--score needs --ckpt"),
              (not a.overlay or a.score, "--overlay goes with --score"),
              *((a.score, f"--{k} goes with --score (the weights it writes)") for k in given),
              # the scores' parquet files under the dataset's data/ were read as its episodes' frames from then on
              *((not a.score or not inside(a.out, os.path.join(a.score, sub)), f"--out {a.out}: inside the dataset's "
                 f"{sub}/, whose files its readers take for the dataset's") for sub in ("data", "meta", "videos")),
              *((not (a.camera and d and os.path.exists(d)) or os.path.isfile(os.path.join(d, "meta", "info.json")),
                 f"--camera {a.camera}: {d} is no LeRobot dataset, whose cameras it names") for d in (a.score, a.data)),
              (not a.instructions or a.bench, "--instructions goes with --bench"),
              *((not getattr(a, k) or a.bench, f"--{k} goes with --bench (--score writes its folder's values.json)")
                for k in ("json", "plots", "by")),
              *((can_be_folder(d), f"{flag} {d}: a file, not a folder" if os.path.exists(d) else
                 f"{flag} {d}: cannot be made, a file lies on its path")
                for flag, d in (("--plots", a.plots), ("--out", a.out if a.score else None)) if d)]
    bad += [msg for ok, msg in checks if not ok]
    for flag, d in (("--plots", a.plots), ("--out", a.out if a.score else None)):
        if d and not bad:  # made now: one that cannot be (where the user may not write) failed after the scoring
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                bad.append(f"{flag} {d}: cannot be made ({e.strerror or e})")
    if bad:
        p.error("; ".join(bad))
    if a.bench and not a.data and not a.ckpt and os.path.isdir(DEMO_DATA):
        a.data, a.ckpt = DEMO_DATA, DEMO_RUN if os.path.isdir(DEMO_RUN) else None
        print(f"--data {a.data} --ckpt {a.ckpt} (the demo's; pass --data to choose)", file=sys.stderr)
    if a.bench and not a.data:
        p.error("--bench needs --data")
    a.by = a.by or "embodiment"
    return a


def main(argv):
    args = parse_args(argv)
    try:
        evaluate(args)
    except (DataError, TextCacheError, CheckpointError) as e:  # bad input: its message, not a traceback
        raise SystemExit(str(e)) from None


def evaluate(args):
    scorers = [load_scorer(args)] if args.ckpt else []
    own = dataset_fps(scorers[0].trained, args.score or args.data) if scorers else 2.0  # this source's in training
    fps = args.fps or own
    if not args.fps and scorers and fps != scorers[0].trained["fps"]:
        print(f"{args.score or args.data}: scored at {fps:g} fps, the fps the run trained this source at "
              f"(the run's is {scorers[0].trained['fps']:g}; --fps overrides)", file=sys.stderr)
    elif scorers and own and fps != own:  # each window then spans another time than the training windows did
        print(f"--fps {fps:g}: the run trained on frames at {own:g} fps; at another rate each window spans another "
              f"time than in training", file=sys.stderr)
    scorers += [TimeScorer(), ConstantScorer()]
    if args.score:
        tau = args.tau if args.tau is not None else (2.0 if args.chunk >= 50 else 10.0)
        meta = export_scores(args.score, scorers[0], args.out, fps, args.chunk, args.kappa or 0.0, args.keep_top, tau,
                             args.delta_max, args.camera, args.overlay)
        print(json.dumps(meta, indent=1))
        return
    items, problems = load_annotated(args.data, fps, args.camera,
                                     state=state_column(scorers[0], args.data) if args.ckpt else None)
    benches = list(BENCHES) if args.bench == "all" else [args.bench]
    wanted = {k for b in benches for k in BENCHES[b]}
    items = [(t, a) for t, a in items if a["kind"] in wanted]
    if args.instructions:
        items = reword(items, args.instructions)
    if not items:
        raise SystemExit(f"{args.data}: no usable {'/'.join(sorted(wanted))} trajectories ({len(problems)} skipped)")
    if args.ckpt:
        scorers[0].require_texts([t.episode.instruction for t, _ in items],
                                 [args.data, *([args.instructions] if args.instructions else [])])
    results, unreadable = score_items(items, scorers)
    problems += [f"episode {e}: video could not be decoded" for e in unreadable]
    if not results:  # every video failed to decode: no table to print
        raise SystemExit(f"{args.data}: no trajectory could be scored ({len(problems)} skipped)")
    tables = {}
    for bench in benches:
        rows = bench_rows(bench, results, args.by)
        if not any(r[k] == r[k] for r in rows for k in r if k in NAMES):  # all NaN: no such trajectories here
            print(f"\n{bench} bench on {args.data}: no table, no trajectory here gives its metrics"
                  + ("; see the skipped lines above" if problems else ""))
            continue
        tables[bench] = rows
        n = len({r["episode"] for r in results if r["kind"] in BENCHES[bench]})
        print(f"\n{bench} bench on {args.data}: {n} trajectories at {fps:g} fps"
              + (f", {len(problems)} skipped or reported (see above)" if problems else ""))
        print(format_table(rows))
    if args.plots:  # before the results file, which demo.py takes as the sign that this step is finished
        plot_results(results, items, args.plots)
    if args.json:  # whole or not at all, through a temporary name of its own
        save_json(nan_to_null({"data": args.data, "fps": fps, "instructions": args.instructions, "noise": args.noise,
                               "guidance": args.guidance, "skipped": problems, "tables": tables,
                               "trajectories": results}), args.json, strict=True)


if __name__ == "__main__":
    main(sys.argv[1:])

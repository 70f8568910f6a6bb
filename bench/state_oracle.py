"""What the labels can teach apart from the pixels: an upper reference for the value benches.

An MLP maps the simulator's exact state to progress: Meta-World's 39-d observation (hand, gripper, object poses,
goal) at frame t, at the episode's frame 0, and their difference. It is fit on the training experts with the
labels WVM trains on (t / (T - 1); no rewinding, no prefix) and scored on the held-out benches like WVM, with
eval.py's metrics at 2 fps. It reads what no camera gives exactly (positions to the millimetre, the goal), so what
it misses on the unseen tasks is what the labels and the training tasks cannot teach however good the features.

    python bench/state_oracle.py --data data/metaworld [--tasks 39] [--seeds 0 1 2 3 4] [--json FILE]

--tasks N fits on N training tasks drawn at random for each seed (the seen bench keeps those N): how the unseen
figures move with the number of training tasks. --hide zeroes parts of the state: `goal` (the last 3 dims), which
the frames show only as a dot of 1-2 pixels at 128x128 where a task marks it with a site (reach, push, pick-place
...) and at most a pixel at the 64x64 WVM reads; `objects` (the objects' poses, now and a step before), leaving with
`goal` the hand and gripper alone: what a robot's own sensors give. --now reads s_t alone, without the episode's
start (what a window of video shows). --success K fits a success classifier instead (an expert's last K frames
against its earlier ones; at 2 fps its last frame is the one within half a second of its first success): what a
success signal learned from experts alone would rank. Each seed takes about a minute on 2 cores.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import out_file_problem  # noqa: E402
from eval import (BENCHES, ConstantScorer, TimeScorer, bench_rows, load_annotated,  # noqa: E402
                  score_items)
from policy import load_episodes  # noqa: E402

SPLITS = ("heldout_seen", "heldout_unseen")
METRICS = {"suboptimal": ("hesitation_rmse", "retry_voc"), "expert": ("voc",), "ranking": ("auroc", "tau_a")}


def features(obs, now=False):
    """[T, 39] states -> [T, 117]: s_t, s_0 and s_t - s_0 (where the episode started tells how far it has come), or
    s_t alone."""
    if now:
        return obs
    s0 = np.broadcast_to(obs[:1], obs.shape)
    return np.concatenate([obs, s0, obs - s0], 1)


def fit(episodes, seed, steps=3000, batch=256, now=False, success=0):
    """An MLP (2 x 256, GELU) from features to t / (T - 1), squared error, AdamW; returns obs [T, 39] -> [T]. With
    success = K > 0 it classifies instead (binary cross-entropy): 1 on each expert's last K frames, 0 before."""
    torch.manual_seed(seed)
    x = np.concatenate([features(e["obs"], now) for e in episodes])
    if success:
        y = np.concatenate([np.arange(len(e["obs"])) >= len(e["obs"]) - success for e in episodes]).astype(np.float32)
    else:
        y = np.concatenate([np.arange(len(e["obs"])) / (len(e["obs"]) - 1) for e in episodes])
    mu, sd = x.mean(0), x.std(0) + 1e-3
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                              torch.nn.GELU(), torch.nn.Linear(256, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    x, y = torch.tensor((x - mu) / sd, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for _ in range(steps):
        b = torch.randint(0, len(x), (batch,))
        out = net(x[b])[:, 0]
        loss = F.binary_cross_entropy_with_logits(out, y[b]) if success else ((out - y[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def progress(obs):
        out = net(torch.tensor((features(obs, now) - mu) / sd, dtype=torch.float32))[:, 0]
        return (out.sigmoid() if success else out.clamp(0, 1)).numpy()
    return progress


class StateScorer:
    """eval.py's scorer interface over the states of one dataset: each trajectory's frames read from its state."""
    name = "state"

    def __init__(self, progress, obs):
        self.progress, self.obs = progress, obs

    def score(self, trajs):
        return [(self.progress(self.obs[t.episode.episode_index])[t.index], np.zeros(len(t.index))) for t in trajs]


# Meta-World's observation: hand xyz, gripper, two objects' xyz + quaternion (4:18); the same 18 a step before
# (18:36); the goal (36:39)
HIDE = {"goal": [slice(36, 39)], "objects": [slice(4, 18), slice(22, 36)]}


def states(root, hide=()):
    episodes = load_episodes(root)
    for e in episodes:
        for part in hide:
            for dims in HIDE[part]:
                e["obs"][:, dims] = 0.0
    return episodes


def evaluate(data, tasks, seeds, hide=(), steps=3000, now=False, success=0):
    for split in ("train", *SPLITS):
        for f in ("meta/info.json", "annotations.jsonl"):
            if not os.path.exists(os.path.join(data, split, f)):
                raise SystemExit(f"state_oracle.py: {os.path.join(data, split, f)} not found; --data wants a sim.py "
                                 f"corpus ({', '.join(('train', *SPLITS))}: LeRobot datasets with annotations)")
    train = [e for e in states(os.path.join(data, "train"), hide) if e["kind"] == "expert"]
    names = sorted({e["task"] for e in train})
    if not 1 <= tasks <= len(names):
        raise SystemExit(f"--tasks {tasks}: {data}/train has {len(names)} tasks")
    benches = {}
    for split in SPLITS:
        items, _ = load_annotated(os.path.join(data, split), fps=2.0)  # says what it leaves out
        benches[split] = (items, {e["episode_index"]: e["obs"] for e in states(os.path.join(data, split), hide)})
    out = {}  # (split, method) -> {metric: [per seed]}
    for seed in seeds:
        keep = set(np.random.default_rng(seed).choice(names, tasks, replace=False)) if tasks < len(names) else set(names)
        progress = fit([e for e in train if e["task"] in keep], seed, steps, now=now, success=success)
        for split, (items, obs) in benches.items():
            if split == "heldout_seen":
                items = [(t, a) for t, a in items if a["task"] in keep]
            # the baselines once, but per seed on a seen bench whose tasks are drawn per seed (they were the first
            # seed's draw alone, beside the state's mean over every draw)
            again = split == "heldout_seen" and tasks < len(names)
            scorers = [StateScorer(progress, obs)] + ([TimeScorer(), ConstantScorer()] if seed == seeds[0] or again
                                                      else [])
            results, _ = score_items(items, scorers)
            for bench, keys in METRICS.items():  # by mechanism: its average row is every trajectory's
                for row in bench_rows(bench, [r for r in results if r["kind"] in BENCHES[bench]], "mechanism"):
                    got = out.setdefault((split, row["method"]), {})
                    if row["mechanism"] == "average":
                        for k in keys:
                            got.setdefault(k, []).append(row[k])
                    elif bench == "ranking" and row["method"] == "state" and row["mechanism"] is not None:
                        got.setdefault(f"auroc {row['mechanism']}", []).append(row["auroc"])
        print(f"seed {seed}: fit on {len(keep)} tasks", file=sys.stderr)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/metaworld", help="a sim.py corpus: train/, heldout_seen/, heldout_unseen/")
    p.add_argument("--tasks", type=int, default=39, help="training tasks to fit on (drawn per seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--hide", nargs="+", default=[], choices=sorted(HIDE), help="zero these parts of every state")
    p.add_argument("--now", action="store_true", help="the state at t alone, without the episode's start")
    p.add_argument("--success", type=int, default=0, metavar="K",
                   help="fit a success classifier (each expert's last K frames) instead of progress")
    p.add_argument("--json", help="write the per-seed figures here")
    args = p.parse_args(argv)
    if args.success < 0:
        raise SystemExit(f"--success {args.success}: the number of final frames must be 0 (off) or more")
    if args.json and (problem := out_file_problem(args.json, "--json")):
        raise SystemExit(problem)  # found now, not after the fits
    try:
        out = evaluate(args.data, args.tasks, args.seeds, args.hide, now=args.now, success=args.success)
    except (ValueError, OSError) as e:  # e.g. a dataset without observation.environment_state: its file and columns named
        raise SystemExit(f"state_oracle.py: {e}") from None
    for (split, method), metrics in out.items():
        cells = []
        for k, v in metrics.items():
            v = [x for x in v if not math.isnan(x)]
            if v:
                cells.append(f"{k} {np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else ""))
        print(f"{split:15s} {method:9s} " + ", ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s} {m}": v for (s, m), v in out.items()}, f, indent=1)


if __name__ == "__main__":
    main()

"""Better policies from suboptimal data: behaviour cloning weighted by progress (paper §5.2, Appendix E, Fig. 6).

A small behaviour-cloning policy on Meta-World's 39-d state predicts action chunks of H = 10 actions; it is
trained on the operator's suboptimal episodes of `sim.py policy` with per-sample weights from per-frame
progress (a values.parquet, as `eval.py --score` writes it, joined on episode_index and frame_index), and
rolled out in Meta-World from held-out initial conditions.

    python demo.py --policy                        # the default run, then all of this: data, scores, rows, table
    python policy.py --wvm demo=runs/demo-prior-s0  # the same with any trained run (--values NAME=FILE: any progress)

Weighting (Appendix E). With V the progress of an episode's T frames, the chunk of actions t .. t + H - 1 has the
advantage Δ(t) = V(min(t + H - 1, T - 1)) - V(t), and
  bc        every chunk, weight 1 (vanilla BC);
  filtered  Filtered BC: only the chunks with Δ > κ, κ = 0; or (top 70%) those with Δ at or above the 30th
            percentile of Δ over the chunks of the same task, so that each task keeps its 70% best chunks;
  awr       advantage-weighted regression: weight min(exp(τΔ), δ), τ = 10 and δ = 2 for H = 10.
Each batch's loss is Σ w ℓ / (Σ w + 1e-6), ℓ a chunk's mean squared action error (steps past the episode's end
masked). Filtered BC keeps Δ strictly above κ, as the paper's text says (positive advantages); its formula's ≥
differs only on exact ties, which a learned value model never produces but exact progress does: a chunk held
still for H frames (Δ = 0 exactly, under the oracle) and each episode's last frame (Δ clamped to 0; its action is
the recorder's hold, never executed) are dropped.

Progress sources: a values.parquet per source (WVM's, the generator's oracle in <data>/operator/oracle/), and
`time`, t / (T - 1), computed here. Under `time` every chunk of an episode gets the same Δ = (H - 1) / (T - 1)
(except the clamped last H - 1), so Filtered BC (κ = 0) is vanilla BC but for each last frame: a check of the
plumbing. Across episodes it is not constant: the top 70% keep the shorter episodes and AWR gives long ones
(T > 131) less than δ, so those two rows are a length heuristic, the baseline a value model has to beat.

Each (row, seed) is trained and rolled out once into <out>/rows/, so an interrupted run continues where it stopped.
"""
import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn

import sim
from checkpoint import save_json
from demo import sh
from eval import awr_weight, chunk_delta, filtered_bc_keep, read_annotations, scored_from_default_noise

H = 10  # action chunk (Appendix E: H = 10 in simulation)
TAU, DELTA_MAX, KEEP_TOP = 10.0, 2.0, 0.7
BUDGET = 200  # steps per evaluation rollout: about twice the slowest expert of the policy tasks
METHODS = {"bc": "vanilla BC", "filtered": "Filtered BC (κ = 0)", "filtered_top": "Filtered BC (top 70%)",
           "awr": "AWR"}


# ----------------------------------------------------------------------------------------------
# data

def load_episodes(root):
    """A LeRobot v3.0 dataset of `sim.py policy` -> [{episode_index, task, kind, obs [T, 39], action [T, 4],
    mistakes [(name, first frame, end frame)]}]."""
    root = Path(root)
    ann_file = root / "annotations.jsonl"
    if not ann_file.exists():
        raise ValueError(f"{ann_file}: missing (a dataset written by `python sim.py policy`?)")
    ann = read_annotations(ann_file)
    files = sorted((root / "data").rglob("*.parquet"))
    columns = ["episode_index", "frame_index", "observation.environment_state", "action"]
    if not files:
        raise ValueError(f"{root / 'data'}: no parquet files")
    parts = []
    for f in files:
        try:
            missing = [c for c in columns if c not in pq.read_schema(f).names]
            t = None if missing else pq.read_table(f, columns=columns)
        except (OSError, pa.ArrowException) as e:  # truncated, not parquet
            raise ValueError(f"{f}: unreadable parquet ({e})") from None
        if missing:
            raise ValueError(f"{f}: lacks the columns {', '.join(missing)} (the simulator's state and actions)")
        try:
            obs, action = (np.array(t[c].to_pylist(), dtype=np.float32) for c in columns[2:])
        except ValueError as e:  # rows of different widths
            raise ValueError(f"{f}: {e}") from None
        if obs.shape[1:] != (39,) or action.shape[1:] != (4,):
            raise ValueError(f"{f}: states {list(obs.shape[1:])} and actions {list(action.shape[1:])} per frame; "
                             f"the policy reads Meta-World's [39] and [4]")
        parts.append((t["episode_index"].to_numpy(), t["frame_index"].to_numpy(), obs, action))
    ep, frame, obs, action = (np.concatenate(x) for x in zip(*parts))
    episodes = []
    for e in np.unique(ep):
        sel = np.nonzero(ep == e)[0]
        sel = sel[np.argsort(frame[sel])]
        if int(e) not in ann:
            raise ValueError(f"{ann_file}: no annotation for episode {e}")
        if not np.array_equal(frame[sel], np.arange(len(sel))):
            raise ValueError(f"{root}: episode {e} has frames missing")
        if not (np.isfinite(obs[sel]).all() and np.isfinite(action[sel]).all()):  # a policy or a fit would turn NaN
            raise ValueError(f"{root}: episode {e} holds states or actions that are not finite")
        line, a = ann[int(e)]
        if not isinstance(a.get("task"), str) or not isinstance(a.get("kind"), str):
            raise ValueError(f"{ann_file}:{line}: episode {e} needs a task and a kind (strings), as sim.py writes")
        episodes.append({"episode_index": int(e), "task": a["task"], "kind": a["kind"], "obs": obs[sel],
                         "action": action[sel], "mistakes": a.get("mistakes", [])})
    return episodes


def read_progress(path, episodes):
    """Per-frame progress of every episode from a values.parquet (episode_index, frame_index, progress) -> [V [T]].
    Every frame of every episode must have its row: a missing one is an error, never a default weight."""
    try:
        t = pq.read_table(path, columns=["episode_index", "frame_index", "progress"])
    except Exception as e:
        raise ValueError(f"{path}: cannot read episode_index, frame_index, progress ({e})") from None
    ep, frame, v = (t[k].to_numpy() for k in ("episode_index", "frame_index", "progress"))
    if not (np.issubdtype(ep.dtype, np.integer) and np.issubdtype(frame.dtype, np.integer)
            and np.issubdtype(v.dtype, np.number)):  # floats (or nulls) would index frames; strings compare wrong
        raise ValueError(f"{path}: episode_index and frame_index must be integers without nulls and progress a number "
                         f"(read as {ep.dtype}, {frame.dtype}, {v.dtype})")
    out = []
    for e in episodes:
        sel = np.nonzero(ep == e["episode_index"])[0]
        T = len(e["obs"])
        V = np.full(T, np.nan)
        ok = (frame[sel] >= 0) & (frame[sel] < T)
        if not ok.all():  # another (or a regenerated) dataset's values: its curves, cut to these lengths, read on
            raise ValueError(f"{path}: episode {e['episode_index']} ({T} frames): rows for frames "
                             f"{np.unique(frame[sel][~ok])[:5].tolist()} it does not have; values of another dataset?")
        frames, n = np.unique(frame[sel], return_counts=True)
        if (n > 1).any():
            raise ValueError(f"{path}: episode {e['episode_index']}: frames {frames[n > 1][:5].tolist()} have more "
                             f"than one row")
        if not np.isfinite(v[sel]).all():
            bad = frame[sel][~np.isfinite(v[sel])]
            raise ValueError(f"{path}: episode {e['episode_index']}: progress is not a finite number at frames "
                             f"{bad[:5].tolist()}")
        V[frame[sel]] = v[sel]
        missing = np.nonzero(np.isnan(V))[0]
        if len(missing):
            what = "no rows" if len(missing) == T else f"no progress for frames {missing[:5].tolist()}" + \
                ("..." if len(missing) > 5 else "")
            raise ValueError(f"{path}: episode {e['episode_index']} ({T} frames): {what}")
        out.append(V)
    return out


def time_progress(episodes):
    return [np.arange(len(e["obs"])) / max(1, len(e["obs"]) - 1) for e in episodes]


def sample_weights(method, deltas, tasks, kappa=0.0, keep_top=KEEP_TOP, tau=TAU, delta_max=DELTA_MAX):
    """Per-chunk weights [N] from the advantages `deltas` [N] of chunks of `tasks` [N] (module docstring); 0 drops."""
    d = np.asarray(deltas, dtype=np.float64)
    if method == "bc":
        return np.ones_like(d)
    if method == "filtered":
        return filtered_bc_keep(d, kappa)[0].astype(np.float64)
    if method == "filtered_top":  # the top 70% of each task's chunks
        tasks = np.asarray(tasks)
        w = np.zeros_like(d)
        for t in np.unique(tasks):
            sel = tasks == t
            w[sel] = filtered_bc_keep(d[sel], keep_top=keep_top)[0]
        return w
    if method == "awr":
        return awr_weight(d, tau, delta_max)
    raise ValueError(f"unknown weighting {method!r}: {', '.join(METHODS)}")


def chunks(episodes, task_ids):
    """Training samples, one per frame: state [N, 39], task id [N], action chunk [N, H, 4] (padded with the
    episode's last action) and its mask [N, H] (False past the episode's end)."""
    obs, task, act, mask = [], [], [], []
    for e in episodes:
        T = len(e["obs"])
        idx = np.arange(T)[:, None] + np.arange(H)
        obs.append(e["obs"])
        task.append(np.full(T, task_ids[e["task"]]))
        act.append(e["action"][np.minimum(idx, T - 1)])
        mask.append(idx < T)
    return [torch.as_tensor(np.concatenate(x)) for x in (obs, task, act, mask)]


# ----------------------------------------------------------------------------------------------
# policy

class Policy(nn.Module):
    """MLP from the normalized 39-d state and a one-hot task to a chunk of H actions: [B, 39], [B] -> [B, H, 4]."""

    def __init__(self, tasks, mean, std, width=256, depth=3):
        super().__init__()
        self.tasks = list(tasks)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        layers, d = [], 39 + len(self.tasks)
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, H * 4))

    def forward(self, obs, task):
        x = torch.cat([(obs - self.mean) / self.std, nn.functional.one_hot(task, len(self.tasks)).float()], -1)
        return self.net(x).view(-1, H, 4)


def weighted_loss(pred, target, mask, w):
    """Σ w ℓ / (Σ w + 1e-6) with ℓ the mean squared error over each chunk's unmasked actions (Appendix E)."""
    m = mask.float()
    err = ((pred - target) ** 2).mean(-1)
    ell = (err * m).sum(1) / m.sum(1)
    return (w * ell).sum() / (w.sum() + 1e-6)


def train_policy(obs, task, act, mask, w, tasks, steps=2000, batch=256, lr=1e-3, seed=0):
    """Adam with a cosine schedule on the samples of nonzero weight (Filtered BC drops the others outright, so
    every batch is full), each batch weighted by `w`."""
    torch.manual_seed(seed)
    keep = torch.as_tensor(w) > 0
    if not keep.any():
        raise ValueError("every sample has weight 0: nothing to train on")
    obs, task, act, mask, w = obs[keep], task[keep], act[keep], mask[keep], torch.as_tensor(w)[keep].float()
    policy = Policy(tasks, obs.mean(0), obs.std(0).clamp_min(1e-2))  # some dims are constant within a task
    opt = torch.optim.Adam(policy.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * i / steps)))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(obs), (batch,), generator=g)
        loss = weighted_loss(policy(obs[i], task[i]), act[i], mask[i], w[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return policy.eval()


# ----------------------------------------------------------------------------------------------
# evaluation in Meta-World

_ENVS = {}  # one env per task, reused: building one costs more than a rollout


@torch.no_grad()
def evaluate(policy, task, inits, budget=BUDGET, execute=H):
    """Success (Meta-World's, at any step) of rollouts from each initial condition in `inits` (rand vectors of
    sim.eval_init); the policy's chunk is executed `execute` actions at a time, then planned again."""
    if task not in _ENVS:
        _ENVS[task] = sim.make_env(task, 0)
    env = _ENVS[task]
    tid = torch.tensor([policy.tasks.index(task)])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for vec in inits:
            env._last_rand_vec = np.asarray(vec, dtype=np.float64)  # the held-out seed's object and goal
            ro = sim.Rollout(env)
            success, plan = False, []
            for _ in range(budget):
                if not plan:
                    obs = torch.as_tensor(ro.obs[-1], dtype=torch.float32)[None]
                    plan = list(policy(obs, tid)[0, :execute].numpy())
                ro.step(plan.pop(0))
                if ro.success[-1]:
                    success = True
                    break
            out.append(success)
    return out


# ----------------------------------------------------------------------------------------------
# the experiment: every row of the table, each (row, seed) a file, so an interrupted run resumes

def rows(sources):
    """(name, split, method, progress source) of every row, in the table's order."""
    out = [("BC on experts (reference)", "expert", "bc", None), ("vanilla BC", "operator", "bc", None)]
    for method in ("filtered", "filtered_top", "awr"):
        out += [(f"{METHODS[method]}, {s}", "operator", method, s) for s in sources]
    return out


def run_row(data, split, method, source, seed, tasks, starts, steps, values, budget=BUDGET):
    """Train one policy and roll it out from each task's starting conditions (starts: {task: [rand_vec, ...]}) ->
    result dict (kept share of chunks, successes per task, times)."""
    episodes = [e for e in load_episodes(Path(data) / split) if e["task"] in tasks]
    V = time_progress(episodes) if source in (None, "time") else read_progress(values[source], episodes)
    deltas = np.concatenate([chunk_delta(v, H) for v in V])
    w = sample_weights(method, deltas, np.concatenate([[e["task"]] * len(e["obs"]) for e in episodes]))
    t0 = time.time()
    policy = train_policy(*chunks(episodes, {t: i for i, t in enumerate(tasks)}), w, tasks, steps=steps, seed=seed)
    t1 = time.time()
    success = {t: evaluate(policy, t, starts[t], budget) for t in tasks}
    return {"kept": float((w > 0).mean()), "success": success, "train_s": t1 - t0, "eval_s": time.time() - t1}


def table(results, tasks):
    """Markdown: success rate (%) per task and on average, mean ± std over the training seeds."""
    short = [t.removesuffix("-v3") for t in tasks]
    lines = ["| policy | " + " | ".join(short) + " | average | chunks kept |", "|---" * (len(tasks) + 3) + "|"]
    for name, runs in results.items():
        per_task = np.array([[np.mean(r["success"][t]) for t in tasks] for r in runs]) * 100  # [seeds, tasks]
        cols = [*per_task.T, per_task.mean(1)]
        cells = [f"{c.mean():.1f} ± {c.std():.1f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * runs[0]['kept']:.0f}% |")
    return "\n".join(lines)


def delta_plot(data, values, tasks, path):
    """Per-chunk Δ of each progress source against the oracle's on these tasks' operator episodes, one panel per
    source -> {source: Pearson r}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = [e for e in load_episodes(Path(data) / "operator") if e["task"] in tasks]
    oracle = np.concatenate([chunk_delta(v, H) for v in read_progress(values["oracle"], episodes)])
    others = [s for s in values if s != "oracle"]
    fig, axes = plt.subplots(1, len(others), figsize=(4 * len(others), 4), squeeze=False)
    corr = {}
    for ax, s in zip(axes[0], others):
        d = np.concatenate([chunk_delta(v, H) for v in read_progress(values[s], episodes)])
        corr[s] = float(np.corrcoef(oracle, d)[0, 1])
        ax.scatter(oracle, d, s=2, alpha=0.3)
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set(xlabel="oracle Δ", ylabel=f"{s} Δ", title=f"{s}: r = {corr[s]:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return corr


def score(data, run, out, vae=None, text_cache=None):
    """WVM's values.parquet for the operator episodes (eval.py --score), once; its speed in speed.json."""

    path, speed = Path(out) / "values.parquet", Path(out) / "speed.json"
    try:
        was = json.loads(speed.read_text())["run"] if speed.exists() else str(run)
    except (ValueError, KeyError, TypeError) as e:  # cut short, or edited by hand
        raise SystemExit(f"{speed}: unreadable ({type(e).__name__}: {e}); delete {out} to score {run} again") from None
    if was != str(run):
        raise SystemExit(f"{out}: scored with another run ({was}); delete it to score {run}, or give this run another "
                         f"name")
    meta = Path(out) / "values.json"
    model = Path(run) / "wvm.safetensors" if Path(run).is_dir() else Path(run)
    stale = path.exists() and model.exists() and path.stat().st_mtime < model.stat().st_mtime  # retrained since
    if stale or not (path.exists() and speed.exists() and meta.exists() and scored_from_default_noise(meta)):
        t0 = time.time()
        sh(sys.executable, "eval.py", "--score", Path(data) / "operator", "--out", out, "--ckpt", run, "--chunk", H,
           *(["--vae", vae] if vae else []), *(["--text_cache", text_cache] if text_cache else []))
        wall = time.time() - t0
        fps = json.loads((Path(data) / "operator" / "meta" / "info.json").read_text())["fps"]
        frames = pq.read_metadata(path).num_rows
        save_json({"run": str(run), "frames": frames, "video_fps": fps, "wall_s": wall, "frames_per_s": frames / wall,
                   "x_real_time": frames / fps / wall}, speed)
    return path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_sha256(root):
    """What a split's rows are trained on: its frames and annotations (a row of another dataset, or of this one made
    anew with other seeds, is not this one's)."""
    h = hashlib.sha256()
    for f in [*sorted((Path(root) / "data").rglob("*.parquet")), Path(root) / "annotations.jsonl"]:
        if f.is_file():  # a missing one is load_episodes' error, with its message
            h.update(f.read_bytes())
    return h.hexdigest()


def starts_sha256(starts):
    """What rollouts from `starts` ({task: rand vectors}) depend on: eval_inits.json written anew, the splits
    unchanged, makes a saved success another experiment's."""
    return hashlib.sha256(json.dumps(starts, sort_keys=True).encode()).hexdigest()


def check_counts(p, args, *counts):
    """p.error unless each of args' `counts` is at least 1 and args.seeds are distinct and not negative."""
    bad = [f"--{k} {getattr(args, k)}: must be at least 1" for k in counts if getattr(args, k) < 1]
    bad += [f"--seeds {s}: must not be negative" for s in args.seeds if s < 0]
    if len(set(args.seeds)) < len(args.seeds):  # it would count twice in the ±
        bad.append(f"--seeds {' '.join(map(str, args.seeds))}: a seed is named twice")
    if bad:
        p.error("; ".join(bad))


def read_inits(data, tasks, rollouts):
    """The rollouts' starting conditions {task: ...} of `data`, refused where a task has fewer than `rollouts`: the
    table would say more rollouts than were run."""
    path = Path(data) / "eval_inits.json"
    if not path.exists():  # written last by `sim.py policy`: an interrupted run has not got there
        raise SystemExit(f"{path}: missing; `python sim.py policy --out {data}` writes it (again, to finish)")
    try:
        inits = json.loads(path.read_text())
    except (ValueError, OSError) as e:  # cut short, or edited by hand
        raise SystemExit(f"{path}: unreadable ({e}); `python sim.py policy --out {data}` writes it again") from None
    if not isinstance(inits, dict) or not all(isinstance(v, dict) and isinstance(v.get("rand_vec"), list)
                                              for v in inits.values()):
        raise SystemExit(f"{path}: expected {{task: {{\"rand_vec\": [...]}}}}, as `sim.py policy` writes it")
    unknown = sorted(set(tasks) - set(inits))
    if unknown:
        raise SystemExit(f"--tasks {' '.join(unknown)}: not tasks of {data} ({', '.join(sorted(inits))})")
    few = {t: len(inits[t]["rand_vec"]) for t in tasks if len(inits[t]["rand_vec"]) < rollouts}
    if few:
        raise SystemExit(f"--rollouts {rollouts}: {data}/eval_inits.json holds fewer starting conditions for "
                         f"{', '.join(f'{t} ({n})' for t, n in few.items())}")
    return inits


def named_paths(items, parser, reserved=(), folders=()):
    """{NAME: resolved Path} of NAME=PATH arguments; the parser's error for a malformed item, or a NAME repeated or
    reserved (a repeated one would silently take the other's results), or a folder where a file is read (but for
    the NAMEs in `folders`)."""
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if not path or name in reserved or name in out:
            parser.error(f"{item!r}: expected NAME=PATH with a new NAME"
                         + (f" ({' and '.join(reserved)} are built in)" if reserved else ""))
        if not name or "/" in name or name in (".", ".."):  # it names files: /../x made three rows one file
            parser.error(f"{item!r}: NAME must be a plain name, without '/'")
        out[name] = Path(path).resolve()
    for name, path in out.items():  # found out now, not after the rows before it have trained
        if not path.exists():
            parser.error(f"{name}={path}: not found")
        if path.is_dir() and name not in folders:  # a scores folder for its values.parquet: hashed, read as a file
            parser.error(f"{name}={path}: a folder, not a values file")
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/policy", help="made by `python sim.py policy` if missing")
    p.add_argument("--out", default="runs/policy", help="one JSON per row and seed, the table, the Δ plot")
    p.add_argument("--wvm", nargs="*", default=[], metavar="NAME=RUN",
                   help="train.py run folders whose values weight the data (scored once with eval.py --score)")
    p.add_argument("--values", nargs="*", default=[], metavar="NAME=VALUES_PARQUET", help="other progress sources")
    p.add_argument("--vae", help="for --wvm runs whose config names their VAE elsewhere")
    p.add_argument("--text_cache", help="... and their text cache")
    p.add_argument("--tasks", nargs="+", help="default: every task of the data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rollouts", type=int, default=50, help="per task and seed")
    p.add_argument("--steps", type=int, default=2000, help="training steps of batch 256 per policy")
    p.add_argument("--budget", type=int, default=BUDGET, help="steps per rollout")
    args = p.parse_args(argv)
    check_counts(p, args, "rollouts", "steps", "budget")
    torch.set_num_threads(1)  # a small MLP: a second thread costs more in synchronization than it saves
    sources = named_paths(args.wvm + args.values, p, reserved=("oracle", "time"),
                          folders=[i.partition("=")[0] for i in args.wvm])
    data, out = Path(args.data).resolve(), Path(args.out).resolve()  # the commands below run in the repository
    if not (data / "eval_inits.json").exists():
        sh(sys.executable, "sim.py", "policy", "--out", data)
    runs = [i.partition("=")[0] for i in args.wvm]
    vae, text_cache = (Path(x).resolve() if x else None for x in (args.vae, args.text_cache))
    values = {n: score(data, path, data / "scores" / n, vae, text_cache) if n in runs else path
              for n, path in sources.items()}
    values["oracle"] = data / "operator" / "oracle" / "values.parquet"
    known = sorted(read_inits(data, (), 0))
    # -v3 may be left out; a task named twice is one task (two would train on one id and roll out with another)
    tasks = list(dict.fromkeys(next((k for k in (t, f"{t}-v3") if k in known), t) for t in args.tasks or known))
    inits = read_inits(data, tasks, args.rollouts)  # refused: a task not the data's, or with fewer starting conditions
    starts = {t: inits[t]["rand_vec"][:args.rollouts] for t in tasks}
    results = {}
    splits = {s: data_sha256(data / s) for s in ("expert", "operator")}
    starts_hash = starts_sha256(starts)
    try:
        for name, split, method, source in rows([*values, "time"]):
            results[name] = []
            # what a row's result depends on besides its name: a row of other settings is never reused as this one
            settings = {"tasks": tasks, "rollouts": args.rollouts, "steps": args.steps, "budget": args.budget,
                        "values_sha256": sha256(values[source]) if source in values else None,
                        "data_sha256": splits[split], "starts_sha256": starts_hash}
            for seed in args.seeds:
                f = out / "rows" / f"{split}-{method}-{source or 'none'}-s{seed}.json"
                if not f.exists():
                    print(f"{name}, seed {seed} ...", flush=True)
                    r = run_row(data, split, method, source, seed, tasks, starts, args.steps, values, args.budget)
                    f.parent.mkdir(parents=True, exist_ok=True)
                    save_json({"row": name, "seed": seed, "settings": settings, **r}, f)  # a full disk: no half row
                try:
                    saved = json.loads(f.read_text())
                except ValueError as e:
                    raise SystemExit(f"{f}: unreadable row ({e}); delete it to run the row again") from None
                was = saved.get("settings") or {}
                if was and not {"data_sha256", "starts_sha256"} <= set(was):  # every older row: one message
                    raise SystemExit(f"{f}: a row saved before rows recorded the data they were trained on and the "
                                     f"starting conditions they rolled out from; delete {out / 'rows'} to run the "
                                     f"rows again, or choose another --out")
                if was != settings:
                    differ = [k for k in settings if was.get(k) != settings[k]]
                    raise SystemExit(f"{f}: a result of other settings ({', '.join(differ)} differ); delete that "
                                     f"file to run its row again (the rows of these settings are kept), or choose "
                                     f"another --out")
                results[name].append(saved)
        md = table(results, tasks)
        corr = delta_plot(data, values, tasks, out / "delta_vs_oracle.png") if len(values) > 1 else {}
    except ValueError as e:
        raise SystemExit(str(e)) from None
    # a speed is that of the values scored beside it: not of another file given as --values under the same NAME
    speeds = {n: json.loads((data / "scores" / n / "speed.json").read_text()) for n in values
              if (data / "scores" / n / "speed.json").exists() and values[n] == data / "scores" / n / "values.parquet"}
    notes = [f"{n}: scored {s['frames']} frames ({s['frames'] / s['video_fps']:.0f} s of video) in "
             f"{s['wall_s']:.0f} s, {s['x_real_time']:.1f}x real time" for n, s in speeds.items()]
    notes += [f"per-chunk Δ, {s} vs oracle: Pearson r = {r:.2f} ({out / 'delta_vs_oracle.png'})"
              for s, r in corr.items()]
    report = f"Success rate (%), {len(args.seeds)} training seeds x {args.rollouts} rollouts per task:\n\n{md}\n\n" + \
        "\n".join(notes)
    (out / "table.md").write_text(report + "\n")
    print("\n" + report)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Where a value model's filter loses to the oracle's in the policy experiment (`python demo.py --policy`).

Filtered BC (κ = 0) on WVM's values stays below the same filter on the oracle's progress. This splits the gap by
the two kinds of chunk the oracle treats exactly and a learned value can only approximate:
  still  the oracle's Δ is exactly 0 (the expert's time to go the same at both ends: a pause, or an attempt
         abandoned where progress is 0), which its filter drops;
  lost   the oracle's Δ < -LOST (the expert's time to go grew: work undone, a detour, an abandoned attempt).
It prints, per task and operator mistake, the share of `lost` chunks each value model's Δ gives no progress
(Δ <= 0: caught), and retrains the policy with each model's keep flags after the oracle removes the still chunks,
the lost ones (all, or those outside the operator's pauses), or both, from them: what the model would gain from
getting each kind right.

    python bench/policy_gap.py --data data/policy --values demo=data/policy/scores/demo/values.parquet ...

Each (model, variant, seed) is one JSON under --out, so an interrupted run resumes (values rescored under the same
NAME need a new --out); 20 s each on one core.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import policy  # noqa: E402
from checkpoint import out_file_problem, save_json  # noqa: E402
from eval import chunk_delta  # noqa: E402

LOST = 0.02  # progress: the oracle's Δ below -LOST counts as work lost
VARIANTS = ("as scored", "without still", "without lost", "without lost outside pauses", "without both")
PAUSES = ("hold", "jitter")  # the operator's mistakes in which the arm stays where it is


def keep_flags(delta, oracle, variant, paused):
    """Filtered BC's flags (Δ > 0) with the oracle's still and/or lost chunks removed; `paused` [N] marks the chunks
    that reach into a pause, whose lost chunks the fourth variant keeps (the video barely shows them)."""
    keep = delta > 0
    if variant in ("without still", "without both"):
        keep &= oracle != 0
    if variant in ("without lost", "without both"):
        keep &= oracle >= -LOST
    if variant == "without lost outside pauses":
        keep &= (oracle >= -LOST) | paused
    return keep


def chunk_mistakes(T, mistakes):
    """[T] names: the first of the operator's mistakes ([(name, first frame, end frame)]) that the chunk starting at
    each frame reaches into, "" for none (a chunk inside a mistake is that mistake's, even if it reaches the next)."""
    out = np.full(T, "", dtype=object)
    for name, a, b in sorted(mistakes, key=lambda m: -m[1]):
        out[max(0, a - policy.H + 1):b] = name
    return out


def caught(episodes, names, oracle, deltas):
    """{(task, mistake): (lost chunks, share with Δ <= 0)} over episodes; names: per-episode chunk_mistakes, oracle and
    deltas: per-episode Δ [T]."""
    hits = {}
    for e, n, o, d in zip(episodes, names, oracle, deltas):
        for t in np.nonzero(o < -LOST)[0]:
            hits.setdefault((e["task"], n[t] or "(none)"), []).append(d[t] <= 0)
    return {k: (len(v), float(np.mean(v))) for k, v in sorted(hits.items())}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/policy", help="written by `python sim.py policy`")
    p.add_argument("--values", nargs="+", required=True, metavar="NAME=VALUES_PARQUET",
                   help="value models' progress (eval.py --score; demo.py --policy leaves them in <data>/scores/)")
    p.add_argument("--out", default="runs/policy_gap")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rollouts", type=int, default=50)
    p.add_argument("--json", help="write the tables' numbers here")
    args = p.parse_args(argv)
    policy.check_counts(p, args, "rollouts")
    if args.json and (problem := out_file_problem(args.json, "--json")):
        p.error(problem)  # found before the hours of work, not after
    values = policy.named_paths(args.values, p)  # before the data is read: a bad argument fails at once
    torch.set_num_threads(1)
    data, out = Path(args.data), Path(args.out)
    episodes = policy.load_episodes(data / "operator")
    names = [chunk_mistakes(len(e["obs"]), e["mistakes"]) for e in episodes]
    tasks = sorted({e["task"] for e in episodes})
    oracle = [chunk_delta(v, policy.H) for v in policy.read_progress(data / "operator/oracle/values.parquet", episodes)]
    inits = policy.read_inits(data, tasks, args.rollouts)
    starts = {t: inits[t]["rand_vec"][:args.rollouts] for t in tasks}
    # what a cached result depends on besides its name and its values: one of other settings is never reused
    common = {"data_sha256": policy.data_sha256(data / "operator"), "rollouts": args.rollouts,
              "starts_sha256": policy.starts_sha256(starts)}
    samples = policy.chunks(episodes, {t: i for i, t in enumerate(tasks)})
    paused = np.isin(np.concatenate(names), PAUSES)
    o = np.concatenate(oracle)
    report = {"caught": {}, "success": {}}
    for name, path in values.items():
        settings = {**common, "values_sha256": policy.sha256(path)}
        deltas = [chunk_delta(v, policy.H) for v in policy.read_progress(path, episodes)]
        report["caught"][name] = {" / ".join(k): v for k, v in caught(episodes, names, oracle, deltas).items()}
        d = np.concatenate(deltas)
        for variant in VARIANTS:
            keep = keep_flags(d, o, variant, paused)
            runs = []
            for seed in args.seeds:
                f = out / f"{name}-{variant.replace(' ', '_')}-s{seed}.json"
                if not f.exists():
                    pol = policy.train_policy(*samples, keep.astype(np.float64), tasks, seed=seed)
                    success = {t: float(np.mean(policy.evaluate(pol, t, starts[t]))) for t in tasks}
                    f.parent.mkdir(parents=True, exist_ok=True)
                    save_json({"kept": float(keep.mean()), "success": success, "settings": settings}, f)
                try:
                    run = json.loads(f.read_text())
                except ValueError as e:  # cut short: the ValueError below would not name it
                    raise SystemExit(f"{f}: unreadable ({e}); delete it to run it again") from None
                if not isinstance(run, dict) or run.get("settings") != settings:
                    raise SystemExit(f"{f}: a result of other settings (the data, its starting conditions, "
                                     f"--rollouts or the values of {name}); delete {out} or choose another --out")
                runs.append(run)
            per_task = {t: 100 * float(np.mean([r["success"][t] for r in runs])) for t in tasks}
            report["success"][f"{name}, {variant}"] = {**per_task, "average": float(np.mean(list(per_task.values()))),
                                                       "kept": float(keep.mean())}
    print(f"Chunks in which the oracle's progress falls by more than {LOST} (work lost), and the share each model "
          "gives Δ <= 0:\n\n| task / mistake | chunks | " + " | ".join(report["caught"]) + " |\n|---|---|" +
          "---|" * len(report["caught"]))
    for k in next(iter(report["caught"].values())):
        row = [report["caught"][n][k] for n in report["caught"]]
        print(f"| {k} | {row[0][0]} | " + " | ".join(f"{share:.2f}" for _, share in row) + " |")
    print(f"\nFiltered BC (κ = 0) success (%), mean over {len(args.seeds)} policy seeds x {args.rollouts} rollouts:\n\n"
          "| keep flags | " + " | ".join(tasks) + " | average | chunks kept |\n|---|" + "---|" * (len(tasks) + 2))
    for k, r in report["success"].items():
        print(f"| {k} | " + " | ".join(f"{r[t]:.1f}" for t in tasks) + f" | {r['average']:.1f} | {100 * r['kept']:.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ValueError as e:  # a dataset or values file that is missing or incomplete: its message names it
        raise SystemExit(str(e)) from None

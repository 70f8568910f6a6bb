"""Pauses of other lengths: where a value model holds still and `time` keeps rising.

The held-out benches' pauses last 0.5-4 s (sim.py's default). This writes the two benches again with pauses drawn
from other ranges (`sim.py --demo --pause MIN MAX`), scores them with eval.py and splits each model's
Hesitation-RMSE (the paper's §5.1, Appendix B.3: the error over the pause, whose truth g = m / (T - 1 - x) holds for
its x frames) into two parts:
  level  |v(m) - g|: how far the value is from the truth as the pause starts, what the model read of the task up to
         there, whatever the pause;
  drift  |v(n) - v(m)|: how far the value moves while the arm does nothing. `time` drifts by x / (T - 1), more the
         longer the pause; a model that holds drifts by nothing.

    python bench/pause_length.py --ckpt runs/demo-prior-s0 runs/demo-prior-s1 [--lengths 0.5-2 2-4 4-8 8-16]
        [--data data/pauses] [--json FILE]

Each range's benches are written once under --data (1-3 minutes each on 2 cores) and each model's scores once into
its run folder (pauses_<range>_<split>.json, about a minute each; scored again if older than the model or the
benches), so an interrupted run resumes.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from checkpoint import out_file_problem  # noqa: E402
from demo import scored  # noqa: E402
from eval import _segment, read_results  # noqa: E402

SPLITS = ("heldout_seen", "heldout_unseen")


def run(*cmd):
    """A step (sim.py, eval.py), printed first; its own error, not a traceback of this script, if it fails."""
    print("\n$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        raise SystemExit(f"bench/pause_length.py: this step failed: {' '.join(cmd)}")


def pause_parts(values, index, m, n, T):
    """(Hesitation-RMSE, level, drift) of one hesitation scored at native frames `index`; NaNs if no scored frame
    lies in the pause [m, n]."""
    p, g = _segment(values, "hesitation", m, n, T, index)
    if not len(p):
        return float("nan"), float("nan"), float("nan")
    return float(np.sqrt(np.mean((p - g) ** 2))), float(abs(p[0] - g[0])), float(abs(p[-1] - p[0]))


def summarize(results, fps):
    """{method: [mean Hesitation-RMSE, level, drift, pause seconds, hesitations]} of one eval.py --json file whose
    data runs at fps."""
    out = {}
    for r in results["trajectories"]:
        if r["kind"] == "hesitation":
            parts = pause_parts(r["values"], r["index"], r["m"], r["n"], r["T"])
            if parts[0] == parts[0]:
                out.setdefault(r["method"], []).append((*parts, (r["n"] - r["m"]) / fps))
    return {k: [*np.mean(v, 0).tolist(), len(v)] for k, v in out.items()}


def length_arg(s):
    try:
        lo, hi = (float(x) for x in s.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s}: expected MIN-MAX seconds, e.g. 4-8") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"{s}: needs 0 < MIN <= MAX")
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="train.py run folders (one per training seed)")
    p.add_argument("--lengths", nargs="+", type=length_arg, default=["0.5-2", "2-4", "4-8", "8-16"],
                   help="pause lengths, MIN-MAX seconds of video, one pair of benches each")
    p.add_argument("--data", default="data/pauses", help="where the benches are written (one folder per range)")
    p.add_argument("--json", help="write the table here")
    a = p.parse_args(argv)
    bad = [f"--ckpt {c}: no such run folder" for c in a.ckpt if not os.path.isdir(c)]
    if a.json and (problem := out_file_problem(a.json, "--json")):
        bad.append(problem)
    if bad:
        p.error("; ".join(bad))
    table = []
    for length in a.lengths:
        folder = os.path.join(a.data, length)
        if not all(os.path.exists(os.path.join(folder, s, "annotations.jsonl")) for s in SPLITS):
            run(sys.executable, os.path.join(ROOT, "sim.py"), "--demo", "--out", folder, "--splits", *SPLITS,
               "--pause", *length.split("-"))
        for split in SPLITS:
            with open(os.path.join(folder, split, "meta", "info.json")) as f:
                fps = json.load(f)["fps"]  # the annotations count the video's own frames
            rows = {}
            for ckpt in a.ckpt:
                out = os.path.join(ckpt, f"pauses_{length}_{split}.json")
                data = os.path.join(folder, split)  # scores older than the model or the split are scored again
                saved = read_results(out) if scored(out, os.path.join(ckpt, "wvm.safetensors"), data) else None
                if saved is None or os.path.realpath(saved["data"]) != os.path.realpath(data):
                    run(sys.executable, os.path.join(ROOT, "eval.py"), "--bench", "suboptimal", "--data", data,
                        "--ckpt", ckpt, "--json", out)
                    saved = read_results(out)
                for method, v in summarize(saved, fps).items():
                    rows.setdefault(method, []).append(v)
            for method, v in rows.items():
                v = np.array(v)  # [models, 5]
                table.append({"split": split, "pause_s": length, "method": method, "models": len(v),
                              "hesitations": int(v[0, 4]), "mean_pause_s": round(float(v[0, 3]), 2),
                              **{k: float(v[:, i].mean()) for i, k in enumerate(("rmse", "level", "drift"))},
                              "rmse_std": float(v[:, 0].std())})
    print("| split | pause (s) | method | Hes-RMSE ↓ | level | drift |\n|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: SPLITS.index(r["split"])):  # stable: the lengths in their order
        spread = f" ± {r['rmse_std']:.3f}" if r["models"] > 1 and r["method"] not in ("time", "constant") else ""
        print(f"| {r['split']} | {r['pause_s']} (mean {r['mean_pause_s']:g}) | {r['method']} | {r['rmse']:.3f}{spread} "
              f"| {r['level']:.3f} | {r['drift']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()

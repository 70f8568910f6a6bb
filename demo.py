"""The default end-to-end run on a CPU: generate the Meta-World demo set, train a tiny WVM, run both benchmarks.

    python demo.py                        # about 13 minutes on 2 cores
    python demo.py --compare              # + the value-head comparison and ablations of the README (hours)

No weights can be downloaded, so the tiny WVM starts from random weights, the frozen VAE is a fixed
random tiny Wan2.2 VAE and the text features come from a random tiny umT5 (encode_text.py
--tiny_random). Every step is a plain command of this repository, printed before it runs.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
SPLITS = ("heldout_seen", "heldout_unseen")

# The demo recipe: the paper's optimizer and augmentations, shrunk to a CPU budget.
TRAIN = dict(size="small", resolution=64, fps=2.0, max_steps=6000, batch_size=32, micro_batch=32, lr=1e-3, warmup=100,
             value_shift=5.0,  # one Euler step from s = 1 is all inference asks of the flow: train mostly near it
             plateau=0.3,  # the paper's 0.1 leaves values creeping up through pauses here (see README)
             ckpt_every=200, num_workers=1)

# README's Table-4-style comparison: each variant changes the demo recipe in one way.
VARIANTS = {
    "flow": {},
    "regression": {"value_head": "regression"},
    "hlgauss": {"value_head": "hlgauss"},
    "no rewinding": {"rewind": 0.0},
    "prefix p=0": {"prefix_p": 0.0},
    "prefix p=1": {"prefix_p": 1.0},
    "no video loss": {"video_loss_weight": 0.0},
    "plateau 0.1 (paper)": {"plateau": 0.1},
}


def sh(*cmd):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def train_and_eval(data, run_dir, overrides, seed):
    flags = {**TRAIN, **overrides, "data": os.path.join(data, "train"), "text_cache": os.path.join(data, "text_cache"),
             "latent_cache": os.path.join(data, "latents"), "out_dir": run_dir, "seed": seed}
    if not os.path.exists(os.path.join(run_dir, "wvm.safetensors")):
        resume = os.path.isdir(os.path.join(run_dir, "ckpt"))  # an interrupted demo continues where it stopped
        sh(sys.executable, "train.py", *[f"--{k}={v}" for k, v in flags.items()], *(["--resume=True"] if resume else []))
    results = {}
    for split in SPLITS:
        for bench in ("suboptimal", "expert"):
            out = os.path.join(run_dir, f"{split}_{bench}.json")
            if not os.path.exists(out):
                sh(sys.executable, "eval.py", "--bench", bench, "--data", os.path.join(data, split), "--ckpt", run_dir,
                   "--json", out, *(["--plots", os.path.join(run_dir, "plots", split)] if bench == "suboptimal" else []))
            with open(out) as f:
                results[split, bench] = {(r["method"], r["embodiment"]): r for r in json.load(f)["table"]}
    return results


def prepare(data):
    """The demo set and its text cache, each made once."""
    if not os.path.isdir(os.path.join(data, "train")):
        sh(sys.executable, "sim.py", "--demo", "--out", data)
    if not os.path.isdir(os.path.join(data, "text_cache")):
        sh(sys.executable, "encode_text.py", "--tiny_random", "32", "--text_len", "16", "--dtype", "float32",
           "--out", os.path.join(data, "text_cache"), "--lerobot", *[os.path.join(data, s) for s in ("train", *SPLITS)])


def summary_row(results, split, method="wvm"):
    sub, exp = results[split, "suboptimal"][method, "average"], results[split, "expert"][method, "average"]
    return sub["hesitation_rmse"], sub["retry_voc"], exp["voc"]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/metaworld")
    p.add_argument("--runs", default="runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", action="store_true", help="also train and evaluate every variant in VARIANTS")
    args = p.parse_args(argv)

    prepare(args.data)
    variants = VARIANTS if args.compare else {"flow": {}}
    table = {}
    for name, overrides in variants.items():
        run_dir = os.path.join(args.runs, "demo" if name == "flow" else "demo-" + "".join(c for c in name if c.isalnum() or c == "."))
        table[name] = train_and_eval(args.data, run_dir, overrides, args.seed)

    main_run = table["flow"]
    print("\nHeld-out results (Meta-World demo set; Hesitation-RMSE lower is better, VOCs higher):")
    print("| split | method | Hesitation-RMSE | Retry-VOC | Expert-VOC |\n|---|---|---|---|---|")
    for split in SPLITS:
        for method in ("wvm", "time", "constant"):
            h, r, e = summary_row(main_run, split, method)
            print(f"| {split} | {method} | {h:.3f} | {r:.3f} | {e:.3f} |")
    if args.compare:
        print("\nValue head and ablations (held-out seeds of the training tasks, same budget and seed):")
        print("| variant | Hesitation-RMSE | Retry-VOC | Expert-VOC |\n|---|---|---|---|")
        for name in variants:
            h, r, e = summary_row(table[name], "heldout_seen")
            print(f"| {name} | {h:.3f} | {r:.3f} | {e:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])

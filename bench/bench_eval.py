"""Whole-trajectory scoring speed: frames scored per second with windows batched across trajectories
vs one trajectory at a time, for the tiny and mid configs, on this machine.

    python bench/bench_eval.py [--episodes 16 --resolution 128]

Synthetic LeRobot dataset (H.264), random tiny VAE and random models; frame decoding is included
(it is part of scoring). Ratios from one run.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import encode_text  # noqa: E402
from data import read_dataset, resample  # noqa: E402
from eval import Trajectory, WVMScorer  # noqa: E402
from sim import write_lerobot  # noqa: E402
from wan_vae import VAE_CONFIGS, WanVAE  # noqa: E402
from wvm import WVM, wvm_configs  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--frames", type=int, default=80, help="native frames per episode (10 fps -> 2 fps: 17 scored)")
    p.add_argument("--resolution", type=int, default=128)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # a run leaves nothing behind
        rng = np.random.default_rng(0)
        shape = (args.frames, args.resolution, args.resolution, 3)
        episodes = ({"frames": rng.integers(0, 255, shape, dtype=np.uint8), "task": "do the task"}
                    for _ in range(args.episodes))
        write_lerobot(os.path.join(tmp, "ds"), episodes, fps=10, codec="libx264")
        trajs = [Trajectory(ep, resample(ep.T, ep.fps, 2.0)) for ep in read_dataset(os.path.join(tmp, "ds"))]
        frames = sum(len(t.index) for t in trajs)
        torch.manual_seed(0)
        vae = WanVAE(VAE_CONFIGS["tiny"]).eval()
        print(f"{args.episodes} trajectories, {frames} frames scored at 2 fps, {args.resolution}x{args.resolution}, "
              f"stride 1, 1 sample, {torch.get_num_threads()} threads")
        print("| config | frames/s batched | frames/s one at a time | ratio |\n|---|---|---|---|")
        for name in ("tiny", "mid"):
            vc, uc = wvm_configs(name)
            model = WVM(vc, uc)
            tok, enc = encode_text.tiny_random_encoder(vc.text_dim)
            encode_text.build_cache(["do the task"], tok, enc, os.path.join(tmp, f"text-{name}"), dtype=torch.float32,
                                    text_len=vc.text_len)
            text = encode_text.TextCache(os.path.join(tmp, f"text-{name}"))
            rates = []
            for batch in (args.episodes, 1):
                scorer = WVMScorer(model, vae, text, args.resolution, batch=batch)
                scorer.score(trajs[:2], progress=False)  # warm-up
                t0 = time.perf_counter()
                scorer.score(trajs, progress=False)
                rates.append(frames / (time.perf_counter() - t0))
            print(f"| {name} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[0] / rates[1]:.2f}x |")


if __name__ == "__main__":
    main()

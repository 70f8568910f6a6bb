"""Cost of WVM.predict_values (video prefill once, value stream per sample) vs full joint forwards.

    python bench/bench_predict.py [--samples 8 --batch 4 --latent 16]

For each config: time of predict_values(steps=1, samples=S) / time of S joint forwards over
[current | future | value] tokens (what one would run without the prefill), one run, medians.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wvm import WVM, wvm_configs  # noqa: E402


def median_time(fn, iters):
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--latent", type=int, default=16, help="latent height = width (256 px -> 16)")
    p.add_argument("--iters", type=int, default=3)
    args = p.parse_args()
    B, S, L = args.batch, args.samples, args.latent
    print(f"batch {B} windows, {S} noise samples, 1 Euler step, latents {L}x{L}, {torch.get_num_threads()} threads")
    print("| config | predict_values / full joint forwards |\n|---|---|")
    for name in ("tiny", "mid"):
        torch.manual_seed(0)
        vc, uc = wvm_configs(name)
        m = WVM(vc, uc).eval()
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(B, 48, 2, L, L, generator=g)
        ctx = torch.randn(B, 16, vc.text_dim, generator=g)
        prefix = torch.rand(B, generator=g)
        t_vid = torch.tensor([[0.0, 1000.0]]).expand(B, 2)
        t_val = torch.tensor([[0.0] + [1000.0] * 4]).expand(B, 5)

        def joint():
            with torch.no_grad():
                for _ in range(S):
                    m.joint(lat, t_vid, torch.cat([prefix[:, None], torch.randn(B, 4)], 1), t_val, ctx)

        def predict():
            m.predict_values(lat[:, :, :1], ctx, prefix, steps=1, samples=S)

        ratio = median_time(predict, args.iters) / median_time(joint, args.iters)
        print(f"| {name} | {ratio:.3f} |")


if __name__ == "__main__":
    main()

"""Training throughput of WVM on this machine: samples/s, MFU and peak memory for the tiny and mid configs.

    python bench/bench_train.py [--steps 5]

Synthetic latents and text (the data pipeline has its own bench, bench_data.py), AdamW steps with
the paper's optimizer settings, fp32 on CPU. MFU is relative to the fp32 matmul rate measured here
(train.peak_flops), since a CPU has no datasheet peak. Each config runs in its own process so its
peak resident memory (VmHWM) is its own.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from wvm import WVM, wvm_configs  # noqa: E402

CONFIGS = {"tiny": dict(resolution=128, batch=8), "mid": dict(resolution=256, batch=8)}


def one(name, steps):
    res, B = CONFIGS[name]["resolution"], CONFIGS[name]["batch"]
    torch.manual_seed(0)
    vc, uc = wvm_configs(name)
    model = WVM(vc, uc).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    lat = res // 16
    batch = {"latents": torch.randn(B, 48, 2, lat, lat), "context": torch.randn(B, min(24, vc.text_len), vc.text_dim),
             "values": torch.rand(B, 5), **model.flow_noise(torch.arange(B), (48, 2, lat, lat))}
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        model(batch)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    flops = train.train_flops_per_sample(model, (res // 32) ** 2) * B
    hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"config": name, "params": params, "resolution": res, "batch": B, "samples_per_s": B / dt,
                      "mfu": flops / dt / train.peak_flops(torch.device("cpu")), "peak_rss_gib": hwm / 2**20,
                      "threads": torch.get_num_threads()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return one(args.one, args.steps)
    print("| config | params | frames | batch | samples/s | MFU (vs measured fp32 matmul peak) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)], capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"| {name} | {r['params'] / 1e6:.1f}M | {r['resolution']}x{r['resolution']} | {r['batch']} | "
              f"{r['samples_per_s']:.2f} | {r['mfu']:.1%} | {r['peak_rss_gib']:.2f} GiB |")


if __name__ == "__main__":
    main()

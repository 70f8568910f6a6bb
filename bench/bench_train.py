"""Training throughput of WVM on this machine: samples/s, MFU and peak memory.

    python bench/bench_train.py [--steps 5]      # CPU: the tiny and mid configs, fp32
    python bench/bench_train.py --gpu            # GPU: the paper's 5.0B + 0.7B widths at 704x1280, bf16

Synthetic latents and text (the data pipeline has its own bench, bench_data.py), AdamW steps with
the paper's optimizer settings. On CPU, MFU is relative to the fp32 matmul rate measured here
(train.peak_flops), since a CPU has no datasheet peak, and each config runs in its own process so its
peak resident memory (VmHWM) is its own. On a GPU, the step is train.py's (bf16 autocast over fp32
master weights, fused AdamW, activation checkpointing per MoT layer), MFU is against the datasheet's
dense bf16 peak, and each row runs with the Triton kernels and with their PyTorch paths (WVM_KERNELS).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from wvm import WVM, wvm_configs  # noqa: E402

CONFIGS = {"tiny": dict(resolution=128, batch=8), "mid": dict(resolution=256, batch=8)}


def synthetic_batch(model, B, lat_h, lat_w, text_len, device):
    """Random latents of two frames, text features, values and the flow noise: a training batch without data."""
    vc = model.video.cfg
    batch = {"latents": torch.randn(B, 48, 2, lat_h, lat_w), "context": torch.randn(B, text_len, vc.text_dim),
             "values": torch.rand(B, 1 + model.value.cfg.chunk), **model.flow_noise(torch.arange(B), (48, 2, lat_h, lat_w))}
    return {k: v.to(device) for k, v in batch.items()}


def median_step(model, opt, batch, steps, device):
    """(median seconds of a training step after one warm-up step, the last loss); bf16 autocast on a GPU."""
    cuda = device.type == "cuda"
    times = []
    for i in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(batch)["loss"]
        loss.backward()
        loss = loss.detach()  # the step's graph goes now, not during the next forward (as in train.py)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], loss.item()


def one(name, steps):
    res, B = CONFIGS[name]["resolution"], CONFIGS[name]["batch"]
    torch.manual_seed(0)
    vc, uc = wvm_configs(name)
    model = WVM(vc, uc).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    cpu = torch.device("cpu")
    dt, _ = median_step(model, opt, synthetic_batch(model, B, res // 16, res // 16, min(24, vc.text_len), cpu), steps,
                        cpu)
    flops = train.train_flops_per_sample(model, (res // 32) ** 2) * B
    hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"config": name, "params": params, "resolution": res, "batch": B, "samples_per_s": B / dt,
                      "mfu": flops / dt / train.peak_flops(cpu), "peak_rss_gib": hwm / 2**20,
                      "threads": torch.get_num_threads()}))


def gpu(layers, batch, steps, kernels, frame_hw=(704, 1280)):
    """One GPU row: the full model's widths with `layers` MoT layers (the paper's 30, or fewer to fit a
    bench in less memory and time), two latent frames of a 704x1280 clip (880 tokens each)."""
    os.environ["WVM_KERNELS"] = kernels
    dev = torch.device("cuda")
    torch.manual_seed(0)
    vc, uc = wvm_configs("full")
    vc, uc = replace(vc, num_layers=layers), replace(uc, num_layers=layers)
    torch.cuda.reset_peak_memory_stats()
    with dev:
        model = WVM(vc, uc).train()
    model.checkpointing = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    lat_h, lat_w = frame_hw[0] // 16, frame_hw[1] // 16
    dt, loss = median_step(model, opt, synthetic_batch(model, batch, lat_h, lat_w, vc.text_len, dev), steps, dev)
    flops = train.train_flops_per_sample(model, lat_h * lat_w // 4) * batch
    params = sum(p.numel() for p in model.parameters())
    print(f"| {layers} | {params / 1e9:.2f}B | {batch} | {kernels} | {dt * 1e3:.0f} ms | {batch / dt:.2f} | "
          f"{flops / dt / train.peak_flops(dev):.1%} | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB | "
          f"{loss:.4f} |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--gpu", action="store_true", help="the full model's widths on a CUDA GPU, bf16")
    p.add_argument("--layers", type=int, nargs="+", default=[6, 30], help="--gpu: MoT layers of each row")
    p.add_argument("--batch", type=int, default=4, help="--gpu: samples per step")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if min(args.steps, args.batch, *args.layers) < 1:
        p.error("--steps, --batch and --layers must be at least 1")
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("bench_train --gpu: no CUDA GPU here")
        print(f"{torch.cuda.get_device_name()}, 704x1280, 2 latent frames (1760 video tokens), median of {args.steps}")
        print("| layers | params | batch | kernels | step | samples/s | MFU (bf16 peak) | peak memory | loss |")
        print("|---|---|---|---|---|---|---|---|---|")
        for layers in args.layers:
            for kernels in ("triton", "torch"):
                try:
                    gpu(layers, args.batch, args.steps, kernels)
                except torch.OutOfMemoryError:
                    print(f"| {layers} | | {args.batch} | {kernels} | out of memory | | | | |", flush=True)
                torch.cuda.empty_cache()
        return
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

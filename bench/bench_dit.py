"""WanDiT vs diffusers' WanTransformer3DModel on this machine, same weights and inputs.

    python bench/bench_dit.py                  # time ratios (fp32, bf16; forward, forward+backward)
    python bench/bench_dit.py --memory         # + peak RSS of load_wan_dit on a ~1 GB checkpoint

Ratios are ours / diffusers from one run (medians of --iters timings); below 1.0 means we are faster.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import WanConfig, WanDiT, load_wan_dit  # noqa: E402


def diffusers_dit(dim, heads, layers, ffn, text_dim):
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
                                 in_channels=48, out_channels=48, text_dim=text_dim, freq_dim=256, ffn_dim=ffn,
                                 num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def timeit(fns, iters):
    """Median seconds of each function, runs interleaved so that machine drift hits both alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(iters):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def speed(args):
    torch.manual_seed(0)
    ref = diffusers_dit(args.dim, args.dim // 128, args.layers, 4 * args.dim, args.text_dim).eval()
    with tempfile.TemporaryDirectory() as tmp:  # a run leaves nothing behind
        ref.save_pretrained(tmp)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, 48, args.frames, args.size, args.size, generator=g)
        ctx = torch.randn(1, 512, args.text_dim, generator=g)
        t = torch.tensor([[0.0] + [700.0] * (args.frames - 1)])
        t_tok = t[:, :, None].expand(1, args.frames, (args.size // 2) ** 2).reshape(1, -1)
        rows = []
        for dtype in (torch.float32, torch.bfloat16):
            ours = load_wan_dit(tmp, dtype=None if dtype == torch.float32 else dtype)
            theirs = ref.to(dtype)
            xo, xd, cd = x, x.to(dtype), ctx.to(dtype)
            for mode in ("forward", "forward+backward"):
                def run_ours():
                    with torch.set_grad_enabled(mode != "forward"):
                        out = ours(xo, t, ctx)
                        if mode != "forward":
                            out.float().square().mean().backward()

                def run_theirs():
                    with torch.set_grad_enabled(mode != "forward"):
                        out = theirs(xd, t_tok.to(dtype), cd, return_dict=False)[0]
                        if mode != "forward":
                            out.float().square().mean().backward()

                a, b = timeit([run_ours, run_theirs], args.iters)
                rows.append((str(dtype).split(".")[-1], mode, a, b))
                ours.zero_grad(set_to_none=True)
                theirs.zero_grad(set_to_none=True)
        tokens = args.frames * (args.size // 2) ** 2
        print(f"\nconfig: dim {args.dim}, {args.dim // 128} heads x 128, {args.layers} layers, ffn {4 * args.dim}, "
              f"{args.frames} latent frames {args.size}x{args.size} ({tokens} tokens), text 512 x {args.text_dim}, "
              f"{torch.get_num_threads()} CPU threads, median of {args.iters}")
        print("| dtype | pass | ours / diffusers |\n|---|---|---|")
        for dt, mode, a, b in rows:
            print(f"| {dt} | {mode} | {a / b:.2f} |")


def write_checkpoint(path, dim=1536, layers=6):
    """A Wan-shaped checkpoint of ~1.1 GB (fp32), sharded like the official one."""
    import json

    from safetensors.torch import save_file

    cfg = WanConfig(dim=dim, ffn_dim=4 * dim, num_heads=dim // 128, num_layers=layers)
    sd = WanDiT(cfg).state_dict()
    keys = sorted(sd)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, ks in enumerate(shards):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in ks}, os.path.join(path, name))
        weight_map.update({k: name for k in ks})
    with open(os.path.join(path, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    return sum(v.numel() * v.element_size() for v in sd.values())


def memory():
    with tempfile.TemporaryDirectory() as path:  # a run leaves nothing behind
        size = write_checkpoint(path)
        # VmHWM, not ru_maxrss: the latter survives exec and would report this (parent) process's peak
        code = ("import sys; sys.path.insert(0, {root!r}); import torch, model; "
                "hwm = lambda: [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
                "base = hwm(); m = model.load_wan_dit({path!r}); sum(p.sum().item() for p in m.parameters()); "
                "print(base, hwm())")  # summing touches every page: mmap-backed tensors count only once read
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code.format(root=root, path=path)],
                             capture_output=True, text=True, check=True)
        base, peak = (int(v) * 1024 for v in out.stdout.split())
        print(f"\nload_wan_dit on a {size / 2**30:.2f} GiB sharded checkpoint: peak RSS {peak / 2**30:.2f} GiB = "
              f"{peak / size:.2f}x the checkpoint ({(peak - base) / size:.2f}x above the {base / 2**20:.0f} MiB of an "
              f"idle process with torch imported)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="latent height = width")
    p.add_argument("--text_dim", type=int, default=512)
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--memory", action="store_true")
    args = p.parse_args()
    if min(args.dim, args.layers, args.frames, args.size, args.text_dim, args.iters) < 1:
        p.error("every size and --iters must be at least 1")
    if args.dim % 128 or args.size % 2:  # Wan's 128-wide heads; its (1, 2, 2) patches
        p.error("--dim must be a multiple of 128 and --size even")
    speed(args)
    if args.memory:
        memory()

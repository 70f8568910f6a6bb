"""Encode time and peak memory of our WanVAE vs diffusers' AutoencoderKLWan, same weights, same input.

    python bench/bench_vae.py [--config mid] [--frames 9] [--size 128] [--threads 2] [--runs 5]

Time: median of --runs encodes per implementation in one process, alternating, after a warm-up.
Memory: each implementation in its own fresh subprocess (same imports, same weights file, same
input): the peak RSS of one encode (after a warm-up one) above the RSS just before it. The peak is
the kernel's VmHWM, reset through /proc/self/clear_refs right before the encode: a child's ru_maxrss
also counts the parent's RSS at fork time, which would swamp the difference. Children run with
MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS (see below).
Goal: both ratios ours/diffusers <= 1.0.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from wan_vae import VAE_CONFIGS, load_wan_vae  # noqa: E402


def diffusers_kwargs(cfg):
    return dict(base_dim=cfg.dim, decoder_base_dim=cfg.dec_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
                num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_downsample),
                is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_temporal=4,
                scale_factor_spatial=16, latents_mean=list(cfg.latents_mean), latents_std=list(cfg.latents_std))


def load(impl, folder):
    if impl == "ours":
        return load_wan_vae(folder)
    from diffusers import AutoencoderKLWan
    return AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae"), low_cpu_mem_usage=False).eval()


def encode(impl, vae, x):
    if impl == "ours":
        return vae.encode(x)
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean  # the raw mean; normalizing it is negligible work


def make_input(args):
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, args.frames, args.size, args.size, generator=g) * 2 - 1


def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(args):
    """Child process: load one implementation, then report the RSS before and the peak during one encode."""
    import gc

    import diffusers  # noqa: F401  (both children import the same modules; wan_vae is imported at the top)
    torch.set_num_threads(args.threads)
    vae = load(args.mem, args.dir)
    x = make_input(args)
    encode(args.mem, vae, x)  # warm-up: MKL / oneDNN allocate their one-time buffers on the first call
    gc.collect()
    before = rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    encode(args.mem, vae, x)
    print(json.dumps({"before_kb": before, "peak_kb": rss_kb("VmHWM")}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="mid", choices=sorted(VAE_CONFIGS))
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--mem", choices=["ours", "diffusers"], help=argparse.SUPPRESS)  # child mode
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mem:
        return measure_memory(args)
    if min(args.threads, args.runs) < 1 or args.size < 16 or args.size % 16 or args.frames < 1 or (args.frames - 1) % 4:
        p.error("--threads and --runs at least 1, --size a multiple of 16, --frames 1 + 4k (the VAE's strides)")

    from diffusers import AutoencoderKLWan

    torch.set_num_threads(args.threads)
    cfg = VAE_CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoencoderKLWan(**diffusers_kwargs(cfg)).save_pretrained(os.path.join(folder, "vae"))
        n_params = sum(v.numel() for v in load("ours", folder).state_dict().values())
        print(f"config {args.config} ({n_params / 1e6:.1f}M params), input [1, 3, {args.frames}, {args.size}, "
              f"{args.size}] fp32, {args.threads} threads")

        mem = {}
        for impl in ("ours", "diffusers"):
            cmd = [sys.executable, os.path.abspath(__file__), "--mem", impl, "--dir", folder, "--config", args.config,
                   "--frames", str(args.frames), "--size", str(args.size), "--threads", str(args.threads)]
            # allocations >= 64 KB straight from mmap, returned to the OS when freed: RSS then follows the live
            # tensors instead of what glibc kept from loading (diffusers' load frees a whole extra weight copy)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            mem[impl] = json.loads(out.strip().splitlines()[-1])

        vaes = {impl: load(impl, folder) for impl in ("ours", "diffusers")}
        x = make_input(args)
        stat = lambda v: torch.tensor(v).view(1, -1, 1, 1, 1)  # noqa: E731
        ours = encode("ours", vaes["ours"], x)  # these two double as the warm-up
        theirs = (encode("diffusers", vaes["diffusers"], x) - stat(cfg.latents_mean)) / stat(cfg.latents_std)
        err = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        times = {impl: [] for impl in vaes}
        for _ in range(args.runs):
            for impl, vae in vaes.items():
                t = time.perf_counter()
                encode(impl, vae, x)
                times[impl].append(time.perf_counter() - t)

    print(f"latents agree: max relative error {err:.1e}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (a busy machine slows multi-threaded runs most)")
    print(f"{'':10} {'encode s (median)':>18} {'RSS before MB':>14} {'encode peak +MB':>16}   runs (s)")
    for impl in ("ours", "diffusers"):
        m = mem[impl]
        runs = " ".join(f"{t:.2f}" for t in times[impl])
        print(f"{impl:10} {statistics.median(times[impl]):18.3f} {m['before_kb'] / 1024:14.0f} "
              f"{(m['peak_kb'] - m['before_kb']) / 1024:16.1f}   {runs}")
    t_ratio = statistics.median(times["ours"]) / statistics.median(times["diffusers"])
    grow = {impl: m["peak_kb"] - m["before_kb"] for impl, m in mem.items()}
    m_ratio = grow["ours"] / grow["diffusers"]
    abs_ratio = mem["ours"]["peak_kb"] / mem["diffusers"]["peak_kb"]
    print(f"ratios ours/diffusers: time {t_ratio:.2f}, encode peak memory {m_ratio:.2f} (goal <= 1.0 for both); "
          f"whole-process peak {abs_ratio:.2f} (includes how each loads its weights)")


if __name__ == "__main__":
    main()

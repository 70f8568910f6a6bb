"""Time each Triton kernel against its PyTorch path (forward, and forward + backward), bf16 on a GPU.

    python bench/bench_kernels.py            # Wan2.2-TI2V-5B sizes at 704x1280: 880 tokens per latent frame

Reports milliseconds and the torch / triton ratio measured in this run, and the largest error of each path's
output and gradients against the PyTorch path in fp64 (torch / triton). Needs a CUDA GPU.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import adaln_modulate, mot_attention, qk_norm_rope  # noqa: E402


def bench(fn, backward_of=None):
    import triton.testing
    if backward_of is None:
        return triton.testing.do_bench(fn)

    def step():
        out = fn()
        torch.autograd.grad(out, backward_of, torch.ones_like(out))
    return triton.testing.do_bench(step)


def outputs(call, inputs, grads_of):
    out = call(*inputs)
    return [out, *torch.autograd.grad(out, [inputs[i] for i in grads_of], torch.ones_like(out))]


def errors(make, call, grads_of):
    """Max abs error of the output and the input gradients, Triton path and PyTorch path, against the PyTorch path
    on the same inputs in fp64: the compiled kernels at full size, where the tests run small shapes."""
    torch.manual_seed(0)
    inputs = make()
    golden = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    os.environ["WVM_KERNELS"] = "torch"
    gold = outputs(call, golden, grads_of)
    errs = {}
    for mode in ("torch", "triton"):
        os.environ["WVM_KERNELS"] = mode
        got = outputs(call, inputs, grads_of)
        errs[mode] = max((a.double() - b).abs().max().item() for a, b in zip(got, gold))
    return errs


def compare(name, make, call, grads_of):
    """call(inputs) under WVM_KERNELS=torch and =triton; prints fwd and fwd+bwd times and the errors vs fp64."""
    row = [name]
    for mode in ("torch", "triton"):
        os.environ["WVM_KERNELS"] = mode
        inputs = make()
        fwd = bench(lambda: call(*inputs))
        both = bench(lambda: call(*inputs), backward_of=[inputs[i] for i in grads_of])
        row.append((fwd, both))
    (tf, tb), (kf, kb) = row[1], row[2]
    try:
        e = errors(make, call, grads_of)
        err = f"max err vs fp64 {e['torch']:.2e} / {e['triton']:.2e}"
    except Exception as ex:  # a reference that cannot run in fp64 leaves the timing standing
        err = f"error check failed: {type(ex).__name__}: {ex}"[:120]
    print(f"{name:44s} fwd {tf:8.3f} / {kf:8.3f} ms  x{tf / kf:5.2f}   fwd+bwd {tb:8.3f} / {kb:8.3f} ms  x{tb / kb:5.2f}"
          f"   {err}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame-tokens", type=int, default=880, help="tokens per latent frame")
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_kernels: needs a CUDA GPU (and TRITON_INTERPRET unset); nothing measured.")
        return
    dev, bf16 = "cuda", torch.bfloat16
    B, S, H, D, C = args.batch, args.frame_tokens, 24, 128, 3072
    print(f"{torch.cuda.get_device_name()}, B={B}, {S} tokens/frame; times torch / triton, ratio = torch / triton")

    def rnd(*shape, dtype=bf16):
        return torch.randn(*shape, device=dev, dtype=dtype, requires_grad=True)

    n_val = 5
    for causal in (True, False):
        Lk = 2 * S + n_val
        compare(f"mot_attention train L={Lk} causal={causal}",
                lambda: (rnd(B, Lk, H, D), rnd(B, Lk, H, D), rnd(B, Lk, H, D)),
                lambda q, k, v: mot_attention(q, k, v, S, S, causal), (0, 1, 2))
    compare(f"mot_attention prefill L={S} (video only)",
            lambda: (rnd(B, S, H, D), rnd(B, S, H, D), rnd(B, S, H, D)),
            lambda q, k, v: mot_attention(q, k, v, S, 0), (0, 1, 2))
    G = 2
    compare(f"adaln video x fp32 [B,{G * S},{C}] -> bf16",
            lambda: (rnd(B, G * S, C, dtype=torch.float32), rnd(B, G, 6, C, dtype=torch.float32)),
            lambda x, e: adaln_modulate(x, e[:, :, 0], e[:, :, 1], 1e-6, bf16), (0, 1))
    compare(f"adaln value x fp32 [B,{n_val},512] -> bf16",
            lambda: (rnd(B, n_val, 512, dtype=torch.float32), rnd(B, n_val, 6, 512, dtype=torch.float32)),
            lambda x, e: adaln_modulate(x, e[:, :, 0], e[:, :, 1], 1e-6, bf16), (0, 1))
    ang = torch.rand(G * S, D // 2, device=dev)
    cos, sin = ang.cos(), ang.sin()
    compare(f"qk_norm_rope bf16 [B,{G * S},{C}] + RoPE",
            lambda: (rnd(B, G * S, C), rnd(C, dtype=torch.float32)),
            lambda x, w: qk_norm_rope(x, w, cos, sin, H), (0, 1))
    compare(f"qk_norm_rope bf16 [B,{n_val},{C}] no RoPE",
            lambda: (rnd(B, n_val, C), rnd(C, dtype=torch.float32)),
            lambda x, w: qk_norm_rope(x, w, None, None, H), (0, 1))


if __name__ == "__main__":
    main()

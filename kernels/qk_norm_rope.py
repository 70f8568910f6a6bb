"""Fused q/k RMSNorm over the full width (all heads jointly, as Wan does) + interleaved RoPE.

x is [B, L, H*D] (a q or k projection); weight is [H*D]; cos, sin are [L, D/2] (pair i of every
head rotates by angle i of its token) or None for tokens without positions (value stream).
Returns [B, L, H, D] in x's dtype; the math is fp32.

Triton path: one program per token. The row is loaded once as a [C/2, 2] tile of interleaved
pairs (contiguous in memory), normalised over all C = H*D values, weighted, split into the
(2i, 2i+1) halves, rotated by the token's angle i = pair % (D/2), joined and stored: one read
and one write of x instead of the five or so passes of the eager version. The backward
un-rotates dy (the transpose of a rotation), then applies the RMSNorm backward; dweight is
summed over tokens as per-program partial rows (deterministic, no atomics).
"""
import torch
import torch.nn.functional as F
from kernels.dispatch import HAS_TRITON, NoTriton, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl
else:
    triton = tl = NoTriton()


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (2i, 2i+1) of fp32 x [B, L, H, D] by the angles in cos/sin [L, D/2]:
    each pair is one complex number times cos + i sin (one op, where real arithmetic takes six)."""
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos, sin)[:, None]).flatten(-2)


def qk_norm_rope_torch(x, weight, cos, sin, num_heads, eps=1e-6):
    B, L, C = x.shape
    h = F.rms_norm(x.float(), (C,), weight.float(), eps).view(B, L, num_heads, C // num_heads)
    if cos is not None:
        h = apply_rope(h, cos.float(), sin.float())
    return h.to(x.dtype)


@triton.jit
def _qk_norm_rope_fwd_kernel(X, W, COS, SIN, Y, RSTD,
                             L, C, HALF, eps, s_cos, s_sin,
                             HAS_ROPE: tl.constexpr, BLOCK_P: tl.constexpr):
    row = tl.program_id(0)                      # token b * L + l; x and y are contiguous [B*L, C]
    pair = tl.arange(0, BLOCK_P)
    ok = (pair < C // 2)[:, None]
    offs = 2 * pair[:, None] + tl.arange(0, 2)[None, :]          # [BLOCK_P, 2]: elements (2i, 2i+1)
    x = tl.load(X + row.to(tl.int64) * C + offs, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(tl.sum(x * x, 1), 0) / C + eps)
    h = x * rstd * tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    if HAS_ROPE:
        i = pair % HALF                         # angle index within the head
        l = row % L
        c = tl.load(COS + l * s_cos + i, mask=pair < C // 2, other=0.0).to(tl.float32)
        s = tl.load(SIN + l * s_sin + i, mask=pair < C // 2, other=0.0).to(tl.float32)
        h1, h2 = tl.split(h)
        h = tl.join(h1 * c - h2 * s, h1 * s + h2 * c)
    tl.store(Y + row.to(tl.int64) * C + offs, h.to(Y.dtype.element_ty), mask=ok)
    tl.store(RSTD + row, rstd)


@triton.jit
def _qk_norm_rope_bwd_kernel(X, W, COS, SIN, DY, DX, RSTD, DW_PART,
                             N, L, C, HALF, rows_per_prog, s_cos, s_sin,
                             HAS_ROPE: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    pair = tl.arange(0, BLOCK_P)
    ok = (pair < C // 2)[:, None]
    offs = 2 * pair[:, None] + tl.arange(0, 2)[None, :]
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_P, 2], dtype=tl.float32)
    r_lo = pid * rows_per_prog
    for k in range(0, tl.minimum(rows_per_prog, N - r_lo)):
        row = r_lo + k
        base = row.to(tl.int64) * C
        dh = tl.load(DY + base + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_ROPE:                            # rotate back by -angle: the transpose of the rotation
            i = pair % HALF
            l = row % L
            c = tl.load(COS + l * s_cos + i, mask=pair < C // 2, other=0.0).to(tl.float32)
            s = tl.load(SIN + l * s_sin + i, mask=pair < C // 2, other=0.0).to(tl.float32)
            d1, d2 = tl.split(dh)
            dh = tl.join(d1 * c + d2 * s, d2 * c - d1 * s)
        rstd = tl.load(RSTD + row)
        xhat = tl.load(X + base + offs, mask=ok, other=0.0).to(tl.float32) * rstd
        dw += dh * xhat
        dxhat = dh * w
        # d/dx of x * rstd(x): rstd * (dxhat - xhat * mean(dxhat * xhat))
        dx = rstd * (dxhat - xhat * (tl.sum(tl.sum(dxhat * xhat, 1), 0) / C))
        tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=ok)
    tl.store(DW_PART + pid.to(tl.int64) * C + offs, dw, mask=ok)


def _launch_cfg(C):
    BLOCK_P = triton.next_power_of_2(C) // 2
    return BLOCK_P, 4 if 2 * BLOCK_P < 2048 else 8 if 2 * BLOCK_P < 8192 else 16   # Liger's row-kernel rule


class QKNormRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cos, sin, num_heads, eps):
        B, L, C = x.shape
        x = x.contiguous()
        weight = weight.contiguous()
        has_rope = cos is not None
        if has_rope:
            cos, sin = (t.float() if t.stride(1) == 1 else t.float().contiguous() for t in (cos, sin))
        else:
            cos = sin = x                       # never read
        y = torch.empty_like(x)
        rstd = torch.empty(B * L, device=x.device, dtype=torch.float32)
        BLOCK_P, num_warps = _launch_cfg(C)
        _qk_norm_rope_fwd_kernel[(B * L,)](x, weight, cos, sin, y, rstd, L, C, C // num_heads // 2, eps,
                                           cos.stride(0), sin.stride(0),
                                           HAS_ROPE=has_rope, BLOCK_P=BLOCK_P, num_warps=num_warps)
        ctx.save_for_backward(x, weight, cos, sin, rstd)
        ctx.has_rope, ctx.num_heads = has_rope, num_heads
        return y.view(B, L, num_heads, C // num_heads)

    @staticmethod
    def backward(ctx, dy):
        x, weight, cos, sin, rstd = ctx.saved_tensors
        B, L, C = x.shape
        N = B * L
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        n_progs = min(N, 1024)                  # a few programs per SM; each sums its rows' dweight
        rows_per_prog = triton.cdiv(N, n_progs)
        n_progs = triton.cdiv(N, rows_per_prog)
        dw = torch.empty(n_progs, C, device=x.device, dtype=torch.float32)
        BLOCK_P, num_warps = _launch_cfg(C)
        _qk_norm_rope_bwd_kernel[(n_progs,)](x, weight, cos, sin, dy, dx, rstd, dw,
                                             N, L, C, C // ctx.num_heads // 2, rows_per_prog,
                                             cos.stride(0), sin.stride(0),
                                             HAS_ROPE=ctx.has_rope, BLOCK_P=BLOCK_P, num_warps=num_warps)
        return dx, dw.sum(0).to(weight.dtype), None, None, None, None


def qk_norm_rope(x, weight, cos, sin, num_heads, eps=1e-6):
    if use_triton(x):
        B, L, C = x.shape
        if C % num_heads or (C // num_heads) % 2 or weight.shape != (C,) or (
                cos is not None and (cos.shape != (L, C // num_heads // 2) or sin.shape != cos.shape)):
            raise ValueError(f"qk_norm_rope: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                             f"cos {None if cos is None else tuple(cos.shape)} do not fit {num_heads} heads")
        return QKNormRope.apply(x, weight, cos, sin, num_heads, eps)
    return qk_norm_rope_torch(x, weight, cos, sin, num_heads, eps)

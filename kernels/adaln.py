"""Fused adaLN: LayerNorm without affine, then x * (1 + scale) + shift with per-group modulation.

x is [B, L, D]; shift and scale are [B, G, D] with L = G * S: token l uses row l // S. In the
video stream a group is a latent frame (every frame has its own timestep), in the value
stream a group is one token. Statistics and modulation are computed in fp32.

Triton path: one program per token normalises and modulates its row in one pass (the row is
loaded once; shift/scale are read through their strides, so the [B, G, 6, D] slices that
Block passes need no copy). The backward recomputes x_hat from the saved mean/rstd; dshift
and dscale are sums over the S tokens of a group, done as per-chunk partial sums (one row of
a [B*G, chunks, D] fp32 buffer per program, summed by torch) so that a frame of thousands of
tokens is spread over many programs and the result is deterministic (no atomics).
"""
import torch
import torch.nn.functional as F
from kernels.dispatch import HAS_TRITON, NoTriton, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl
else:
    triton = tl = NoTriton()


def adaln_modulate_torch(x, shift, scale, eps=1e-6, out_dtype=None):
    B, L, D = x.shape
    G = shift.shape[1]
    h = F.layer_norm(x.float(), (D,), eps=eps).view(B, G, L // G, D)
    h = h * (1 + scale.float()[:, :, None]) + shift.float()[:, :, None]
    return h.view(B, L, D).to(out_dtype or x.dtype)


@triton.jit
def _adaln_fwd_kernel(X, SHIFT, SCALE, Y, MEAN, RSTD,
                      L, S, D, eps,
                      s_sh_b, s_sh_g, s_sc_b, s_sc_g,
                      BLOCK_D: tl.constexpr):
    row = tl.program_id(0)                      # token b * L + l, x and y are contiguous [B*L, D]
    b = row // L
    g = (row % L) // S
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    x = tl.load(X + row.to(tl.int64) * D + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / D
    xc = tl.where(ok, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, 0) / D + eps)
    shift = tl.load(SHIFT + b * s_sh_b + g * s_sh_g + cols, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * s_sc_b + g * s_sc_g + cols, mask=ok, other=0.0).to(tl.float32)
    y = xc * rstd * (1.0 + scale) + shift
    tl.store(Y + row.to(tl.int64) * D + cols, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _adaln_bwd_kernel(X, SCALE, DY, DX, MEAN, RSTD, DSHIFT_PART, DSCALE_PART,
                      L, G, S, D, rows_per_chunk,
                      s_sc_b, s_sc_g,
                      BLOCK_D: tl.constexpr):
    chunk = tl.program_id(0)
    bg = tl.program_id(1)                       # (batch, group)
    b = bg // G
    g = bg % G
    n_chunks = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < D
    scale1 = 1.0 + tl.load(SCALE + b * s_sc_b + g * s_sc_g + cols, mask=ok, other=0.0).to(tl.float32)
    dshift = tl.zeros([BLOCK_D], dtype=tl.float32)
    dscale = tl.zeros([BLOCK_D], dtype=tl.float32)
    s_lo = chunk * rows_per_chunk
    s_hi = tl.minimum(s_lo + rows_per_chunk, S)
    for s in range(s_lo, s_hi):
        row = b * L + g * S + s
        x = tl.load(X + row.to(tl.int64) * D + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row.to(tl.int64) * D + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(ok, (x - tl.load(MEAN + row)) * rstd, 0.0)
        dshift += dy
        dscale += dy * xhat
        dxhat = dy * scale1
        # d/dx of LayerNorm: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        dx = rstd * (dxhat - tl.sum(dxhat, 0) / D - xhat * (tl.sum(dxhat * xhat, 0) / D))
        tl.store(DX + row.to(tl.int64) * D + cols, dx.to(DX.dtype.element_ty), mask=ok)
    part = (bg.to(tl.int64) * n_chunks + chunk) * D
    tl.store(DSHIFT_PART + part + cols, dshift, mask=ok)
    tl.store(DSCALE_PART + part + cols, dscale, mask=ok)


def _launch_cfg(D):
    BLOCK_D = triton.next_power_of_2(D)
    return BLOCK_D, 4 if BLOCK_D < 2048 else 8 if BLOCK_D < 8192 else 16   # Liger's row-kernel rule


class AdaLNModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, eps, out_dtype):
        B, L, D = x.shape
        G = shift.shape[1]
        x = x.contiguous()
        if shift.stride(2) != 1:
            shift = shift.contiguous()
        if scale.stride(2) != 1:
            scale = scale.contiguous()
        y = torch.empty(B, L, D, device=x.device, dtype=out_dtype)
        mean = torch.empty(B * L, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        BLOCK_D, num_warps = _launch_cfg(D)
        _adaln_fwd_kernel[(B * L,)](x, shift, scale, y, mean, rstd, L, L // G, D, eps,
                                    shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
                                    BLOCK_D=BLOCK_D, num_warps=num_warps)
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.shift_dtype = shift.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, mean, rstd = ctx.saved_tensors
        B, L, D = x.shape
        G = scale.shape[1]
        S = L // G
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        # Enough chunks per group to give every SM a few programs on a big GPU; rows_per_chunk >= 16
        # keeps the partial buffer small next to dx.
        n_chunks = max(1, min(triton.cdiv(S, 16), triton.cdiv(512, B * G)))
        rows_per_chunk = triton.cdiv(S, n_chunks)
        n_chunks = triton.cdiv(S, rows_per_chunk)
        dshift = torch.empty(B * G, n_chunks, D, device=x.device, dtype=torch.float32)
        dscale = torch.empty_like(dshift)
        BLOCK_D, num_warps = _launch_cfg(D)
        _adaln_bwd_kernel[(n_chunks, B * G)](x, scale, dy, dx, mean, rstd, dshift, dscale,
                                             L, G, S, D, rows_per_chunk, scale.stride(0), scale.stride(1),
                                             BLOCK_D=BLOCK_D, num_warps=num_warps)
        dshift = dshift.sum(1).view(B, G, D).to(ctx.shift_dtype)
        dscale = dscale.sum(1).view(B, G, D).to(scale.dtype)
        return dx, dshift, dscale, None, None


def adaln_modulate(x, shift, scale, eps=1e-6, out_dtype=None):
    B, L, D = x.shape
    if shift.shape != scale.shape or shift.shape[0] != B or shift.shape[2] != D or L % shift.shape[1]:
        raise ValueError(f"adaln_modulate: x {tuple(x.shape)} does not fit shift {tuple(shift.shape)} / scale "
                         f"{tuple(scale.shape)}")
    if use_triton(x):
        return AdaLNModulate.apply(x, shift, scale, eps, out_dtype or x.dtype)
    return adaln_modulate_torch(x, shift, scale, eps, out_dtype)

"""Fused q/k RMSNorm over the full width (all heads jointly, as Wan does) + interleaved RoPE.

x is [B, L, H*D] (a q or k projection); weight is [H*D]; cos, sin are [L, D/2] (pair i of every
head rotates by angle i of its token) or None for tokens without positions (value stream).
Returns [B, L, H, D] in x's dtype; the math is fp32.
"""
import torch


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (2i, 2i+1) of x [B, L, H, D] by the angles in cos/sin [L, D/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None], sin[:, None]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)


def qk_norm_rope_torch(x, weight, cos, sin, num_heads, eps=1e-6):
    B, L, C = x.shape
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    h = h.view(B, L, num_heads, C // num_heads)
    if cos is not None:
        h = apply_rope(h, cos.float(), sin.float())
    return h.to(x.dtype)


def qk_norm_rope(x, weight, cos, sin, num_heads, eps=1e-6):
    from kernels import use_triton
    if use_triton(x):
        raise NotImplementedError("the Triton q/k norm + RoPE kernel is not written yet")
    return qk_norm_rope_torch(x, weight, cos, sin, num_heads, eps)

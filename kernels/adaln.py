"""Fused adaLN: LayerNorm without affine, then x * (1 + scale) + shift with per-group modulation.

x is [B, L, D]; shift and scale are [B, G, D] with L = G * S: token l uses row l // S. In the
video stream a group is a latent frame (every frame has its own timestep), in the value
stream a group is one token. Statistics and modulation are computed in fp32.
"""
import torch
import torch.nn.functional as F


def adaln_modulate_torch(x, shift, scale, eps=1e-6, out_dtype=None):
    B, L, D = x.shape
    G = shift.shape[1]
    h = F.layer_norm(x.float(), (D,), eps=eps).view(B, G, L // G, D)
    h = h * (1 + scale.float()[:, :, None]) + shift.float()[:, :, None]
    return h.view(B, L, D).to(out_dtype or x.dtype)


def adaln_modulate(x, shift, scale, eps=1e-6, out_dtype=None):
    from kernels import use_triton
    B, L, D = x.shape
    if shift.shape != scale.shape or shift.shape[0] != B or shift.shape[2] != D or L % shift.shape[1]:
        raise ValueError(f"adaln_modulate: x {tuple(x.shape)} does not fit shift {tuple(shift.shape)} / scale {tuple(scale.shape)}")
    if use_triton(x):
        raise NotImplementedError("the Triton adaLN kernel is not written yet")
    return adaln_modulate_torch(x, shift, scale, eps, out_dtype)

"""Fused kernels for WVM, one per file, each with its PyTorch reference path.

Dispatch: the Triton kernels run on CUDA tensors, the PyTorch reference everywhere else.
WVM_KERNELS=triton or WVM_KERNELS=torch forces one path (tests force Triton on CPU under
TRITON_INTERPRET=1).
"""
import os


def use_triton(x):
    mode = os.environ.get("WVM_KERNELS", "auto")
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"WVM_KERNELS={mode!r}: expected auto, triton or torch")
    if mode == "torch":
        return False
    if mode == "triton":
        return True
    return x.is_cuda


from kernels.adaln import adaln_modulate  # noqa: E402
from kernels.mot_attention import mot_attention, mot_mask  # noqa: E402
from kernels.qk_norm_rope import qk_norm_rope  # noqa: E402

"""Fused kernels for WVM, one per file, each with its PyTorch reference path.

Dispatch: the Triton kernels run on CUDA tensors, the PyTorch reference everywhere else.
WVM_KERNELS=triton or WVM_KERNELS=torch forces one path (tests force Triton on CPU under
TRITON_INTERPRET=1). Without Triton (no wheels for macOS or Windows) the kernel files still import,
with a stand-in for `triton`, and everything runs on the PyTorch path.
"""
from kernels.dispatch import HAS_TRITON, NoTriton, use_triton  # noqa: F401
from kernels.adaln import adaln_modulate  # noqa: F401
from kernels.mot_attention import mot_attention, mot_mask  # noqa: F401
from kernels.qk_norm_rope import qk_norm_rope  # noqa: F401

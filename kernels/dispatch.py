"""Which path a kernel takes: Triton on CUDA tensors, the PyTorch reference elsewhere (and where it is faster on a
GPU); WVM_KERNELS=triton|torch forces one.

Without Triton (no wheels for macOS or Windows) the kernel files still import, with `NoTriton` standing in for
`triton`, and everything runs on the PyTorch path.
"""
import importlib.util
import os

HAS_TRITON = importlib.util.find_spec("triton") is not None


class NoTriton:
    """Stands in for `triton` and `triton.language` where Triton is missing, so kernel files can define
    their (never launched) @triton.jit functions: every attribute is itself, decorating returns the function."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self


def use_triton(x, auto=True):
    """Whether a kernel call on x takes the Triton path; auto=False: not unless forced, for calls where the PyTorch
    path was measured faster (bench/bench_kernels.py)."""
    mode = os.environ.get("WVM_KERNELS", "auto")
    if mode not in ("auto", "triton", "torch"):
        raise ValueError(f"WVM_KERNELS={mode!r}: expected auto, triton or torch")
    if mode == "torch":
        return False
    if mode == "triton":
        if not HAS_TRITON:
            raise RuntimeError("WVM_KERNELS=triton but Triton is not installed")
        return True
    return auto and x.is_cuda and HAS_TRITON

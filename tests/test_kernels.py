"""Triton kernels against their PyTorch references, forward and backward, and the MoT attention
reference against dense masked attention.

On CPU the Triton kernels run under the interpreter (conftest sets TRITON_INTERPRET=1 before
Triton is imported) with 16-wide tiles, so tiny odd shapes cross several blocks and partial tails.
With TRITON_INTERPRET=0 on a CUDA machine the same tests run the compiled kernels on the GPU.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import adaln_modulate, mot_attention, mot_mask, qk_norm_rope
from kernels.adaln import adaln_modulate_torch
from kernels.mot_attention import mot_attention_torch
from kernels.qk_norm_rope import apply_rope, qk_norm_rope_torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
needs_triton = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRET, reason="Triton needs a GPU or TRITON_INTERPRET=1")


@pytest.fixture
def triton_path(monkeypatch):
    monkeypatch.setenv("WVM_KERNELS", "triton")


def _grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def _check_bf16(name, got, ref_lowp, golden, slack=2.0, atol=1e-3):
    """A bf16 result is as good as the bf16 reference: its error against the fp64 golden value is
    at most `slack` times the reference's own error (plus a small floor)."""
    err = (got.double() - golden).abs().max().item()
    err_ref = (ref_lowp.double() - golden).abs().max().item()
    assert err <= slack * err_ref + atol, f"{name}: error {err:.3g} vs bf16 reference {err_ref:.3g}"


# ---------------------------------------------------------------------------------------------
# mot_mask and the MoT reference, pinned down independently of the kernels

def test_mot_mask_by_hand():
    T, N = True, False
    # n_cur = 2, n_fut = 2, n_val = 1: rows are queries, columns keys [c c f f v]
    assert mot_mask(5, 2, 2, causal=True).tolist() == [
        [T, T, N, N, N],    # current -> current
        [T, T, N, N, N],
        [T, T, T, T, N],    # future -> current + future
        [T, T, T, T, N],
        [T, T, N, N, T],    # value -> current + value, never future
    ]
    assert mot_mask(5, 2, 2, causal=False).tolist()[:2] == [[T, T, T, T, N]] * 2
    # no video token ever sees a value token
    m = mot_mask(37, 19, 13, causal=False)
    assert not m[:32, 32:].any() and m[32:, 32:].all() and not m[32:, 19:32].any()


@pytest.mark.parametrize("n_cur,n_fut,n_val,causal", [(7, 5, 3, True), (7, 5, 3, False), (7, 0, 3, True)])
def test_mot_reference_matches_dense_masked_sdpa(n_cur, n_fut, n_val, causal):
    torch.manual_seed(0)
    B, H, D = 2, 2, 8
    L = n_cur + n_fut + n_val
    q, k, v = torch.randn(B, L, H, D), torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    g = torch.randn(B, L, H, D)
    a = _leaves(q, k, v)
    out = mot_attention_torch(*a, n_cur, n_fut, causal)
    b = _leaves(q, k, v)
    mask = mot_mask(L, n_cur, n_fut, causal)
    dense = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in b), attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    for x, y in zip(_grads(out, a, g), _grads(dense, b, g)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# MoT attention kernel

def _run_attention(n_cur, n_fut, n_val, causal, dtype, B=2, H=2, D=32, seed=0):
    torch.manual_seed(seed)
    L = n_cur + n_fut + n_val
    q, k, v = (torch.randn(B, L, H, D, device=DEVICE).to(dtype) for _ in range(3))
    g = torch.randn(B, L, H, D, device=DEVICE).to(dtype)
    tri_in = _leaves(q, k, v)
    tri = mot_attention(*tri_in, n_cur, n_fut, causal)
    ref_in = _leaves(q, k, v)
    ref = mot_attention_torch(*ref_in, n_cur, n_fut, causal)
    gold_in = _leaves(*(t.double() for t in (q, k, v)))
    gold = mot_attention_torch(*gold_in, n_cur, n_fut, causal)
    return ((tri, *_grads(tri, tri_in, g)), (ref, *_grads(ref, ref_in, g)), (gold, *_grads(gold, gold_in, g.double())))


ATTN_CASES = [  # n_cur, n_fut, n_val, causal
    (19, 13, 5, True),     # training: every segment a non-multiple of the tile
    (19, 13, 5, False),
    (19, 0, 5, True),      # no future video: value queries see all the video
    (5, 3, 20, False),     # a value segment longer than one value tile
    (0, 6, 3, True),       # no current video: value queries see only value keys
    (19, 13, 0, True),     # video only (prefill, plain Wan blocks)
]


@needs_triton
@pytest.mark.parametrize("case", ATTN_CASES)
def test_mot_attention_triton_fp32(triton_path, case):
    tri, ref, _ = _run_attention(*case, torch.float32)
    for name, x, y in zip(("out", "dq", "dk", "dv"), tri, ref):
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4, msg=name)


@needs_triton
@pytest.mark.parametrize("case", ATTN_CASES)
def test_mot_attention_triton_bf16(triton_path, case):
    tri, ref, gold = _run_attention(*case, torch.bfloat16)
    for name, x, y, z in zip(("out", "dq", "dk", "dv"), tri, ref, gold):
        assert x.dtype == torch.bfloat16
        _check_bf16(name, x, y, z, atol=2e-2)


@needs_triton
def test_mot_attention_triton_head_dim_not_power_of_two(triton_path):
    tri, ref, _ = _run_attention(19, 13, 5, True, torch.float32, B=1, D=24)
    for name, x, y in zip(("out", "dq", "dk", "dv"), tri, ref):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4, msg=name)


@needs_triton
@pytest.mark.skipif(not INTERPRET, reason="checks the GPU tile sizes under the interpreter")
def test_mot_attention_triton_gpu_tiles(triton_path, monkeypatch):
    # The bf16 GPU tile sizes (128-row query tiles, 64-row backward tiles, 16-row value tiles) on a sequence longer
    # than one tile.
    mod = importlib.import_module("kernels.mot_attention")
    tiles = mod._blocks(128, torch.bfloat16, interpret=False)
    assert (tiles["BLOCK_M"], tiles["BLOCK_M_BWD"], tiles["BLOCK_N_BWD"], tiles["BLOCK_MV"]) == (128, 64, 64, 16)
    monkeypatch.setattr(mod, "_blocks", lambda D, dtype: tiles)
    tri, ref, _ = _run_attention(150, 70, 5, True, torch.float32, B=1, H=1, D=16)
    for name, x, y in zip(("out", "dq", "dk", "dv"), tri, ref):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4, msg=name)


def test_mot_attention_dispatch(monkeypatch):
    q = torch.randn(1, 8, 1, 16)
    monkeypatch.setenv("WVM_KERNELS", "torch")
    torch.testing.assert_close(mot_attention(q, q, q, 3, 3), mot_attention_torch(q, q, q, 3, 3))
    for n_cur, n_fut in ((-2, 3), (3, -3)):  # rows of the wrong length, and out-of-bounds reads in the kernel
        with pytest.raises(ValueError, match=rf"n_cur={n_cur}, n_fut={n_fut} do not fit"):
            mot_attention(q, q, q, n_cur, n_fut)
    monkeypatch.setenv("WVM_KERNELS", "bogus")
    with pytest.raises(ValueError, match="WVM_KERNELS"):
        mot_attention(q, q, q, 3, 3)


def test_dispatch_sends_one_segment_to_sdpa_unless_forced(monkeypatch):
    """On a GPU, `auto` takes Triton except where PyTorch's path was measured faster (mot_attention over one segment);
    WVM_KERNELS=triton forces it there too. A stand-in tensor reports CUDA, and the kernel records the choice."""
    dispatch = importlib.import_module("kernels.dispatch")
    mod = importlib.import_module("kernels.mot_attention")
    cuda_like = type("CudaLike", (), {"is_cuda": True})()
    monkeypatch.setattr(dispatch, "HAS_TRITON", True)
    monkeypatch.setenv("WVM_KERNELS", "auto")
    assert dispatch.use_triton(cuda_like) and not dispatch.use_triton(cuda_like, auto=False)
    assert not dispatch.use_triton(torch.zeros(1))
    monkeypatch.setenv("WVM_KERNELS", "triton")
    assert dispatch.use_triton(cuda_like, auto=False)
    asked = []
    monkeypatch.setattr(mod, "use_triton", lambda x, auto=True: asked.append(auto) or False)
    q = torch.randn(1, 8, 1, 16)
    mot_attention(q, q, q, 8, 0)      # the prefill: current video only
    mot_attention(q, q, q, 3, 3)      # current + future + value
    mot_attention(q, q, q, 6, 0)      # current + value
    # what the kernel does not take (a head dim over 128, fp64) goes the PyTorch way on a GPU too (it raised there,
    # and ran on the CPU)
    wide, fp64 = torch.randn(1, 8, 1, 256), q.double()
    mot_attention(wide, wide, wide, 3, 3)
    mot_attention(fp64, fp64, fp64, 3, 3)
    assert asked == [False, True, True, False, False]


# ---------------------------------------------------------------------------------------------
# adaLN

@needs_triton
@pytest.mark.parametrize("x_dtype,out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.bfloat16, None)])
@pytest.mark.parametrize("G,S", [(2, 40), (5, 1)])   # video (frames of S tokens), value stream (a group per token)
def test_adaln_triton(triton_path, x_dtype, out_dtype, G, S):
    torch.manual_seed(0)
    B, D = 2, 24
    x = (torch.randn(B, G * S, D, device=DEVICE) * 3 + 1).to(x_dtype)
    e = torch.randn(B, G, 6, D, device=DEVICE)    # shift/scale are strided slices, as Block passes them
    g = torch.randn(B, G * S, D, device=DEVICE).to(out_dtype or x_dtype)

    def run(fn, x, e):
        x, e = _leaves(x, e)
        y = fn(x, e[:, :, 0], e[:, :, 1], 1e-6, out_dtype)
        return (y, *_grads(y, (x, e), g))

    tri, ref = run(adaln_modulate, x, e), run(adaln_modulate_torch, x, e)
    assert tri[0].dtype == (out_dtype or x_dtype) and tri[1].dtype == x_dtype
    for name, a, b in zip(("y", "dx", "de"), tri, ref):
        if a.dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
        else:
            torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1.6e-2, msg=name)
    assert tri[2][:, :, 2:].abs().max() == 0   # only shift and scale get gradients


# ---------------------------------------------------------------------------------------------
# q/k RMSNorm + RoPE

def test_apply_rope_is_complex_rotation_of_interleaved_pairs():
    torch.manual_seed(0)
    x, ang = torch.randn(2, 5, 3, 8, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    z = torch.view_as_complex(x.view(2, 5, 3, 4, 2)) * torch.polar(torch.ones_like(ang), ang)[:, None]
    torch.testing.assert_close(apply_rope(x, ang.cos(), ang.sin()), torch.view_as_real(z).flatten(-2))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rope", [True, False])
def test_qk_norm_rope_triton(triton_path, dtype, rope):
    torch.manual_seed(0)
    B, L, H, D = 2, 7, 3, 12
    x = (torch.randn(B, L, H * D, device=DEVICE) * 2).to(dtype)
    w = torch.rand(H * D, device=DEVICE) + 0.5
    ang = torch.randn(L, D // 2, device=DEVICE)
    cos, sin = (ang.cos(), ang.sin()) if rope else (None, None)
    g = torch.randn(B, L, H, D, device=DEVICE).to(dtype)

    def run(fn):
        xx, ww = _leaves(x, w)
        y = fn(xx, ww, cos, sin, H, 1e-6)
        return (y, *_grads(y, (xx, ww), g))

    tri, ref = run(qk_norm_rope), run(qk_norm_rope_torch)
    assert tri[0].shape == (B, L, H, D) and tri[0].dtype == dtype
    for name, a, b in zip(("y", "dx", "dw"), tri, ref):
        if dtype == torch.float32 or name == "dw":
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=name)
        else:
            torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1.6e-2, msg=name)


def test_imports_and_runs_without_triton():
    """No Triton wheels exist for macOS / Windows: the model must still import and run on the PyTorch path."""
    code = ("import importlib.util, sys; sys.modules['triton'] = None; find = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'triton' else find(n, *a); "
            "import torch, kernels, wvm; assert not kernels.HAS_TRITON; "
            "m = wvm.WVM(*wvm.wvm_configs('tiny')); "
            "out = m(dict(latents=torch.randn(2, 48, 2, 4, 4), context=torch.randn(2, 3, 32), values=torch.rand(2, 5), "
            "**m.flow_noise(torch.tensor([0, 1]), (48, 2, 4, 4)))); "
            "assert torch.isfinite(out['loss'])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "WVM_KERNELS": "auto"})
    assert r.returncode == 0, r.stderr[-2000:]

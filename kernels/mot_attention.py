"""Mixture-of-Transformers attention over the joint sequence [current video | future video | value].

The paper's asymmetric mask, by the segment of the query:
  current video -> current video            (causal=False: current + future video)
  future video  -> current + future video
  value         -> current video + value    (video queries never see value keys)
Value tokens read the video and video tokens never read the values, so the video stream is a plain Wan2.2 DiT.
The block-causal video part (current video not seeing the future) is ours; causal=False is Wan's full attention.
q, k, v are [B, L, H, D] over the L = n_cur + n_fut + n_val positions; the output is [B, L, H, D] in q's dtype.
(Inference runs the value queries alone against cached current-video K/V: wvm.attend_cached.)

Triton path: flash attention (FA2: online softmax, fp32 accumulation, logsumexp saved for the
backward) where the mask is never built. Every query segment sees at most two contiguous key
ranges, [0, ka) and [kb_lo, kb_hi), so a query block loops over exactly the key blocks of those
ranges: fully masked blocks are never visited, and the only partial key block of a range is its
tail. Query blocks are aligned to segment boundaries so that every row of a block has the same
ranges. Transposed, every key segment is seen by one contiguous range of queries (current keys
by all queries, future keys by the future queries, or all video queries when causal=False,
value keys by the value queries), which is what the dk/dv kernel loops over.

The value segment is ~5 tokens. A 128-row query block would be 96% padding, so value queries (and,
in the backward, value keys) get their own blocks of 16 rows, the smallest tile tl.dot accepts,
inside the same launch as the video blocks: the value programs cost a small fraction of a video
block each, and the launch count stays one per kernel.
"""
import torch
import torch.nn.functional as F
from kernels.dispatch import HAS_TRITON, NoTriton, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl
else:
    triton = tl = NoTriton()

_INTERPRET = tl.constexpr(bool(triton.knobs.runtime.interpret))   # read when @triton.jit runs, as Triton does
_LOG2E = 1.4426950408889634


def key_ranges(n_cur, n_fut, n_val, causal=True):
    """(query segment, visible key ranges) for the three segments of the joint sequence."""
    n_vid = n_cur + n_fut
    return [((0, n_cur), [(0, n_cur if causal else n_vid)]),
            ((n_cur, n_vid), [(0, n_vid)]),
            ((n_vid, n_vid + n_val), [(0, n_cur), (n_vid, n_vid + n_val)])]


def mot_mask(L, n_cur, n_fut, causal=True, device=None):
    """The dense boolean mask [L, L] (True = attend) that the kernels implement without building it."""
    mask = torch.zeros(L, L, dtype=torch.bool, device=device)
    for (a, b), ranges in key_ranges(n_cur, n_fut, L - n_cur - n_fut, causal):
        for r0, r1 in ranges:
            mask[a:b, r0:r1] = True
    return mask


def mot_attention_torch(q, k, v, n_cur, n_fut, causal=True):
    # One SDPA call per query segment on exactly its visible keys: no mask, no wasted work.
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = []
    for (a, b), ranges in key_ranges(n_cur, n_fut, k.shape[2] - n_cur - n_fut, causal):
        if b <= a:
            continue
        kk, vv = (_cat([t[:, :, r0:r1] for r0, r1 in ranges if r1 > r0]) for t in (k, v))
        out.append(F.scaled_dot_product_attention(q[:, :, a:b], kk, vv))
    return _cat(out).transpose(1, 2)


def _cat(parts):  # a single part is returned as is: no copy
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


# ----------------------------------------------------------------------------------------------
# Triton kernels. Tensors are contiguous [B, L, H, D]: row `pos` of head h of batch b sits at
# ((b * L + pos) * H + h) * D, rows H * D apart. LSE and DELTA are [B, H, L] fp32.

@triton.jit
def _dot(a, b, DTYPE: tl.constexpr):
    """a @ b accumulated in fp32, both operands rounded to DTYPE (the input dtype) as the tensor
    cores take them; fp32 inputs use 3xTF32 (about fp32 accuracy). The interpreter's bf16 dot is
    wrong, so there the rounded operands are multiplied in fp32."""
    a = a.to(DTYPE)
    b = b.to(DTYPE)
    if _INTERPRET:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if DTYPE == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    return tl.dot(a, b)


@triton.jit
def _load(base, pos, pos_ok, row_stride, HEAD_DIM: tl.constexpr, D: tl.constexpr, TRANS: tl.constexpr = False):
    """Rows pos of a [L, D] slice as a [len(pos), HEAD_DIM] tile ([HEAD_DIM, len(pos)] if TRANS), zero
    outside. The column mask only exists when D is not a power of two, so rows stay vector loads."""
    d = tl.arange(0, HEAD_DIM)
    if TRANS:
        ptrs = base + pos[None, :] * row_stride + d[:, None]
        mask = pos_ok[None, :]
        if D != HEAD_DIM:
            mask = mask & (d < D)[:, None]
    else:
        ptrs = base + pos[:, None] * row_stride + d[None, :]
        mask = pos_ok[:, None]
        if D != HEAD_DIM:
            mask = mask & (d < D)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store(base, pos, pos_ok, row_stride, x, HEAD_DIM: tl.constexpr, D: tl.constexpr):
    d = tl.arange(0, HEAD_DIM)
    mask = pos_ok[:, None]
    if D != HEAD_DIM:
        mask = mask & (d < D)[None, :]
    tl.store(base + pos[:, None] * row_stride + d[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _fwd_range(acc, m_i, l_i, q, K, V, k_lo, k_hi, row_stride, qk_scale,
               HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr):
    """Online softmax (log2 domain) of the query tile q over the keys [k_lo, k_hi)."""
    for start in range(k_lo, k_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < k_hi                                     # only the range's last block is partial
        s = _dot(q, _load(K, n, n_ok, row_stride, HEAD_DIM, D, TRANS=True), DTYPE) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p, _load(V, n, n_ok, row_stride, HEAD_DIM, D), DTYPE)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_block(Q, K, V, O, LSE, row_stride, m_lo, m_hi, ka, kb_lo, kb_hi, qk_scale,
               HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query positions [m_lo, m_hi) attend to the keys [0, ka) and [kb_lo, kb_hi)."""
    DTYPE: tl.constexpr = Q.dtype.element_ty
    m = m_lo + tl.arange(0, BLOCK_M)
    m_ok = m < m_hi
    q = _load(Q, m, m_ok, row_stride, HEAD_DIM, D)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _fwd_range(acc, m_i, l_i, q, K, V, 0, ka, row_stride, qk_scale, HEAD_DIM, D, BLOCK_N, DTYPE)
    acc, m_i, l_i = _fwd_range(acc, m_i, l_i, q, K, V, kb_lo, kb_hi, row_stride, qk_scale, HEAD_DIM, D, BLOCK_N, DTYPE)
    # every real row sees >= 1 key (at least its own segment), so l_i > 0 there; padding rows are not stored
    _store(O, m, m_ok, row_stride, acc / l_i[:, None], HEAD_DIM, D)
    tl.store(LSE + m, m_i + tl.log2(l_i), mask=m_ok)


@triton.jit
def _mot_fwd_kernel(Q, K, V, O, LSE, H, L, n_cur, n_vid, ka_cur, nb_c, nb_f, qk_scale,
                    HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_MV: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Program (query block, b * H + h). Query blocks: nb_c current (from 0), nb_f future (from
    n_cur), then value blocks of BLOCK_MV rows (from n_vid)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row_stride = H * D
    off = (b * L * H + h) * D
    Q += off
    O += off
    K += off
    V += off
    LSE += bh.to(tl.int64) * L
    if pid_m < nb_c + nb_f:      # video queries: current -> [0, ka_cur), future -> [0, n_vid)
        in_cur = pid_m < nb_c
        m_lo = tl.where(in_cur, pid_m * BLOCK_M, n_cur + (pid_m - nb_c) * BLOCK_M)
        m_hi = tl.where(in_cur, n_cur, n_vid)
        ka = tl.where(in_cur, ka_cur, n_vid)
        _fwd_block(Q, K, V, O, LSE, row_stride, m_lo, m_hi, ka, n_vid, n_vid, qk_scale,
                   HEAD_DIM, D, BLOCK_M, BLOCK_N)
    else:                        # value queries: [0, n_cur) + [n_vid, L)
        m_lo = n_vid + (pid_m - nb_c - nb_f) * BLOCK_MV
        _fwd_block(Q, K, V, O, LSE, row_stride, m_lo, L, n_cur, n_vid, L, qk_scale,
                   HEAD_DIM, D, BLOCK_MV, BLOCK_N)


@triton.jit
def _dq_range(dq, q, do, lse, delta, K, V, k_lo, k_hi, row_stride, qk_scale,
              HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, DTYPE: tl.constexpr):
    for start in range(k_lo, k_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < k_hi
        kT = _load(K, n, n_ok, row_stride, HEAD_DIM, D, TRANS=True)
        p = tl.exp2(_dot(q, kT, DTYPE) * qk_scale - lse[:, None])
        p = tl.where(n_ok[None, :], p, 0.0)
        dp = _dot(do, _load(V, n, n_ok, row_stride, HEAD_DIM, D, TRANS=True), DTYPE)
        dq += _dot(p * (dp - delta[:, None]), tl.trans(kT), DTYPE)
    return dq


@triton.jit
def _dq_block(Q, K, V, DO, DQ, LSE, DELTA, row_stride, m_lo, m_hi, ka, kb_lo, kb_hi, sm_scale, qk_scale,
              HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    DTYPE: tl.constexpr = Q.dtype.element_ty
    m = m_lo + tl.arange(0, BLOCK_M)
    m_ok = m < m_hi
    q = _load(Q, m, m_ok, row_stride, HEAD_DIM, D)
    do = _load(DO, m, m_ok, row_stride, HEAD_DIM, D)
    lse = tl.load(LSE + m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _dq_range(dq, q, do, lse, delta, K, V, 0, ka, row_stride, qk_scale, HEAD_DIM, D, BLOCK_N, DTYPE)
    dq = _dq_range(dq, q, do, lse, delta, K, V, kb_lo, kb_hi, row_stride, qk_scale, HEAD_DIM, D, BLOCK_N, DTYPE)
    _store(DQ, m, m_ok, row_stride, dq * sm_scale, HEAD_DIM, D)


@triton.jit
def _mot_bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, H, L, n_cur, n_vid, ka_cur, nb_c, nb_f, sm_scale, qk_scale,
                       HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_MV: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """dq: the forward's query blocks and key ranges."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row_stride = H * D
    off = (b * L * H + h) * D
    Q += off
    DO += off
    DQ += off
    K += off
    V += off
    LSE += bh.to(tl.int64) * L
    DELTA += bh.to(tl.int64) * L
    if pid_m < nb_c + nb_f:
        in_cur = pid_m < nb_c
        m_lo = tl.where(in_cur, pid_m * BLOCK_M, n_cur + (pid_m - nb_c) * BLOCK_M)
        m_hi = tl.where(in_cur, n_cur, n_vid)
        ka = tl.where(in_cur, ka_cur, n_vid)
        _dq_block(Q, K, V, DO, DQ, LSE, DELTA, row_stride, m_lo, m_hi, ka, n_vid, n_vid, sm_scale, qk_scale,
                  HEAD_DIM, D, BLOCK_M, BLOCK_N)
    else:
        m_lo = n_vid + (pid_m - nb_c - nb_f) * BLOCK_MV
        _dq_block(Q, K, V, DO, DQ, LSE, DELTA, row_stride, m_lo, L, n_cur, n_vid, L, sm_scale, qk_scale,
                  HEAD_DIM, D, BLOCK_MV, BLOCK_N)


@triton.jit
def _dkdv_block(Q, K, V, DO, DK, DV, LSE, DELTA, row_stride, n_lo, n_hi, qa, qb, sm_scale, qk_scale,
                HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Keys [n_lo, n_hi), seen by the query positions [qa, qb): dk and dv (FA2, transposed)."""
    DTYPE: tl.constexpr = Q.dtype.element_ty
    n = n_lo + tl.arange(0, BLOCK_N)
    n_ok = n < n_hi
    k = _load(K, n, n_ok, row_stride, HEAD_DIM, D)
    v = _load(V, n, n_ok, row_stride, HEAD_DIM, D)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for start in range(qa, qb, BLOCK_M):
        m = start + tl.arange(0, BLOCK_M)
        m_ok = m < qb
        qT = _load(Q, m, m_ok, row_stride, HEAD_DIM, D, TRANS=True)
        do = _load(DO, m, m_ok, row_stride, HEAD_DIM, D)
        lse = tl.load(LSE + m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + m, mask=m_ok, other=0.0)
        pT = tl.exp2(_dot(k, qT, DTYPE) * qk_scale - lse[None, :])
        pT = tl.where(m_ok[None, :], pT, 0.0)
        dv += _dot(pT, do, DTYPE)
        dpT = _dot(v, tl.trans(do), DTYPE)
        dk += _dot(pT * (dpT - delta[None, :]), tl.trans(qT), DTYPE)
    _store(DK, n, n_ok, row_stride, dk * sm_scale, HEAD_DIM, D)
    _store(DV, n, n_ok, row_stride, dv, HEAD_DIM, D)


@triton.jit
def _mot_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, H, L, n_cur, n_vid, nb_c, nb_f, qf_lo, sm_scale, qk_scale,
                         HEAD_DIM: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NV: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_MV: tl.constexpr):
    """Program (key block, b * H + h). Key blocks: nb_c current (seen by every query), nb_f future
    (seen by [qf_lo, n_vid)), then value blocks of BLOCK_NV keys (seen by the value queries [n_vid, L))."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    row_stride = H * D
    off = (b * L * H + h) * D
    Q += off
    DO += off
    K += off
    V += off
    DK += off
    DV += off
    LSE += bh.to(tl.int64) * L
    DELTA += bh.to(tl.int64) * L
    if pid_n < nb_c + nb_f:
        in_cur = pid_n < nb_c
        n_lo = tl.where(in_cur, pid_n * BLOCK_N, n_cur + (pid_n - nb_c) * BLOCK_N)
        n_hi = tl.where(in_cur, n_cur, n_vid)
        qa = tl.where(in_cur, 0, qf_lo)
        qb = tl.where(in_cur, L, n_vid)
        _dkdv_block(Q, K, V, DO, DK, DV, LSE, DELTA, row_stride, n_lo, n_hi, qa, qb, sm_scale, qk_scale,
                    HEAD_DIM, D, BLOCK_N, BLOCK_M)
    else:
        n_lo = n_vid + (pid_n - nb_c - nb_f) * BLOCK_NV
        _dkdv_block(Q, K, V, DO, DK, DV, LSE, DELTA, row_stride, n_lo, L, n_vid, L, sm_scale, qk_scale,
                    HEAD_DIM, D, BLOCK_NV, BLOCK_MV)


# ----------------------------------------------------------------------------------------------
# Launch layout and autograd.

def _blocks(D, dtype, interpret=bool(_INTERPRET)):
    """Tile sizes. bf16/fp16: the forward's are the usual FA2 Triton shapes; the backward's (64 x 64 tiles, 4 warps)
    won a sweep of ten on an H200 at Wan2.2-TI2V-5B's sizes (L = 1765, D = 128, causal): forward + backward 0.97 ms,
    against 1.68 ms with 32 x 64 tiles and 8 warps and 1.22 ms for PyTorch's SDPA (bench/bench_kernels.py).
    fp32 inputs are a debugging path: 3xTF32 dots (about fp32 accuracy) on smaller tiles; they still spill a little
    for D = 128. Under the interpreter all tiles are 16 so that tiny test shapes span several blocks and their
    partial tails."""
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_MV=16, BLOCK_M_BWD=16, BLOCK_N_BWD=16, num_warps=4, num_warps_bwd=4,
                    num_stages=1)
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_MV=16, BLOCK_M_BWD=32, BLOCK_N_BWD=32, num_warps=8, num_warps_bwd=8,
                    num_stages=2)
    return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_MV=16, BLOCK_M_BWD=64, BLOCK_N_BWD=64,
                num_warps=4 if D <= 64 else 8, num_warps_bwd=4, num_stages=3)


def _query_layout(L, n_cur, n_fut, causal, BLOCK_M, BLOCK_MV):
    """Query blocks aligned to segments (current | future | value): kernel ints and block count."""
    n_vid = n_cur + n_fut
    nb_c, nb_f, nb_v = triton.cdiv(n_cur, BLOCK_M), triton.cdiv(n_fut, BLOCK_M), triton.cdiv(L - n_vid, BLOCK_MV)
    ka_cur = key_ranges(n_cur, n_fut, L - n_vid, causal)[0][1][0][1]   # end of the current queries' keys
    return (n_cur, n_vid, ka_cur, nb_c, nb_f), nb_c + nb_f + nb_v


def _key_layout(L, n_cur, n_fut, causal, BLOCK_N, BLOCK_NV):
    """Key blocks aligned to segments, and the first query position that sees the future keys."""
    n_vid = n_cur + n_fut
    nb_c, nb_f, nb_v = triton.cdiv(n_cur, BLOCK_N), triton.cdiv(n_fut, BLOCK_N), triton.cdiv(L - n_vid, BLOCK_NV)
    qf_lo = n_cur if causal else 0
    return (n_cur, n_vid, nb_c, nb_f, qf_lo), nb_c + nb_f + nb_v


class MoTAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, n_cur, n_fut, causal):
        if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"mot_attention: q, k, v must share one of fp32/bf16/fp16, got {q.dtype}, {k.dtype}, {v.dtype}")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, L, H, D = q.shape
        cfg = _blocks(D, q.dtype)
        o = torch.empty_like(q)
        lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
        ints, n_blocks = _query_layout(L, n_cur, n_fut, causal, cfg["BLOCK_M"], cfg["BLOCK_MV"])
        _mot_fwd_kernel[(n_blocks, B * H)](q, k, v, o, lse, H, L, *ints, D ** -0.5 * _LOG2E,
                                           HEAD_DIM=max(16, triton.next_power_of_2(D)), D=D,
                                           BLOCK_M=cfg["BLOCK_M"], BLOCK_MV=cfg["BLOCK_MV"], BLOCK_N=cfg["BLOCK_N"],
                                           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.n_cur, ctx.n_fut, ctx.causal = n_cur, n_fut, causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        B, L, H, D = q.shape
        do = do.contiguous()
        cfg = _blocks(D, q.dtype)
        sm_scale = D ** -0.5
        # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the row term of the softmax backward
        delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = dict(HEAD_DIM=max(16, triton.next_power_of_2(D)), D=D, num_warps=cfg["num_warps_bwd"],
                      num_stages=cfg["num_stages"])
        ints, n_blocks = _key_layout(L, ctx.n_cur, ctx.n_fut, ctx.causal, cfg["BLOCK_N_BWD"], cfg["BLOCK_MV"])
        _mot_bwd_dkdv_kernel[(n_blocks, B * H)](q, k, v, do, dk, dv, lse, delta, H, L, *ints,
                                                sm_scale, sm_scale * _LOG2E,
                                                BLOCK_N=cfg["BLOCK_N_BWD"], BLOCK_NV=cfg["BLOCK_MV"],
                                                BLOCK_M=cfg["BLOCK_M_BWD"], BLOCK_MV=cfg["BLOCK_MV"], **common)
        ints, n_blocks = _query_layout(L, ctx.n_cur, ctx.n_fut, ctx.causal, cfg["BLOCK_M_BWD"], cfg["BLOCK_MV"])
        _mot_bwd_dq_kernel[(n_blocks, B * H)](q, k, v, do, dq, lse, delta, H, L, *ints,
                                              sm_scale, sm_scale * _LOG2E,
                                              BLOCK_M=cfg["BLOCK_M_BWD"], BLOCK_MV=cfg["BLOCK_MV"],
                                              BLOCK_N=cfg["BLOCK_N_BWD"], **common)
        return dq, dk, dv, None, None, None


def mot_attention(q, k, v, n_cur, n_fut, causal=True):
    """Attention of q, k, v [B, L, H, D] over [current video (n_cur) | future video (n_fut) | value] under the
    asymmetric mask (mot_mask); causal=False lets the current video see the future video too."""
    B, L, H, D = q.shape
    if not q.shape == k.shape == v.shape or L == 0 or min(n_cur, n_fut) < 0 or n_cur + n_fut > L:
        raise ValueError(f"mot_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"n_cur={n_cur}, n_fut={n_fut} do not fit")
    # one segment (n_cur = L: the video-only prefill of scoring) is plain attention, where SDPA's flash kernel beat
    # ours on an H200 (0.048 against 0.068 ms forward at L = 880)
    # what the kernel does not take (a head dim over 128, fp64) goes the PyTorch way unless the kernel is forced
    fits = D <= 128 and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if use_triton(q, auto=n_cur < L and fits):
        if D > 128:
            raise ValueError(f"mot_attention: head dim {D} > 128 is not supported by the Triton kernel")
        return MoTAttention.apply(q, k, v, n_cur, n_fut, causal)
    return mot_attention_torch(q, k, v, n_cur, n_fut, causal)

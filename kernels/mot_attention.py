"""Mixture-of-Transformers attention over the joint sequence [current video | future video | value].

Visibility (SPEC.md §3.2, §3.3), by the segment of the query:
  current video -> current video            (causal=False: current + future video)
  future video  -> current + future video
  value         -> current video + value    (video queries never see value keys)
Queries are the last Lq positions of the joint sequence of Lk = n_cur + n_fut + n_val keys: Lq = Lk
in training, Lq = n_val when only the value stream runs against cached video K/V.
q, k, v are [B, L, H, D]; the output is [B, Lq, H, D] in q's dtype.
"""
import torch
import torch.nn.functional as F


def key_ranges(n_cur, n_fut, n_val, causal=True):
    """(query segment, visible key ranges) for the three segments of the joint sequence."""
    n_vid = n_cur + n_fut
    return [((0, n_cur), [(0, n_cur if causal else n_vid)]),
            ((n_cur, n_vid), [(0, n_vid)]),
            ((n_vid, n_vid + n_val), [(0, n_cur), (n_vid, n_vid + n_val)])]


def mot_mask(Lq, Lk, n_cur, n_fut, causal=True, device=None):
    """The dense boolean mask [Lq, Lk] (True = attend) that the kernels implement without building it."""
    mask = torch.zeros(Lk, Lk, dtype=torch.bool, device=device)
    for (a, b), ranges in key_ranges(n_cur, n_fut, Lk - n_cur - n_fut, causal):
        for r0, r1 in ranges:
            mask[a:b, r0:r1] = True
    return mask[Lk - Lq:]


def mot_attention_torch(q, k, v, n_cur, n_fut, causal=True):
    # One SDPA call per query segment on exactly its visible keys: no mask, no wasted work.
    Lq, Lk = q.shape[1], k.shape[1]
    q0 = Lk - Lq
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = []
    for (a, b), ranges in key_ranges(n_cur, n_fut, Lk - n_cur - n_fut, causal):
        a = max(a, q0)
        if b <= a:
            continue
        kk = torch.cat([k[:, :, r0:r1] for r0, r1 in ranges if r1 > r0], 2)
        vv = torch.cat([v[:, :, r0:r1] for r0, r1 in ranges if r1 > r0], 2)
        out.append(F.scaled_dot_product_attention(q[:, :, a - q0:b - q0], kk, vv))
    return torch.cat(out, 2).transpose(1, 2)


def mot_attention(q, k, v, n_cur, n_fut, causal=True):
    from kernels import use_triton
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (H, D) or not 0 < Lq <= Lk or n_cur + n_fut > Lk:
        raise ValueError(f"mot_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"n_cur={n_cur}, n_fut={n_fut} do not fit")
    if use_triton(q):
        raise NotImplementedError("the Triton MoT attention kernel is not written yet")
    return mot_attention_torch(q, k, v, n_cur, n_fut, causal)

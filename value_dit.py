"""The value stream of WVM (SPEC.md §3.2-3.3): ValueConfig and ValueDiT.

A narrow DiT (width 512) with the video stream's depth. Its blocks are model.Block: the same
Wan2.2 block code, with self-attention projected into the video's 24 x 128 attention space (so
both streams attend jointly, model.WVM) and its own 8 x 64 text cross-attention, adaLN tables,
timestep embedding, text projection and heads.

Tokens per sample: 1 + h. Slot 0 is the prefix, carrying the clean value v_{t-h}; slots 1..h carry
the chunk v_{t-h+1..t}: noisy values at flow time s for the flow head, nothing (zeros at time 0)
for the regression and HL-Gauss heads. Each token embeds its scalar with a linear layer plus a
learned per-slot embedding; value tokens get no RoPE.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Block, Head, embed_text, text_mlp, time_embed, time_mlps


@dataclass
class ValueConfig:
    dim: int = 512
    ffn_dim: int = 14336
    num_layers: int = 30        # must equal the video stream's depth
    num_heads: int = 24         # joint self-attention lives in the video's attention space ...
    head_dim: int = 128         # ... 24 x 128
    cross_heads: int = 8        # own text cross-attention, 8 x 64
    chunk: int = 4              # h: values per chunk
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    head: str = "flow"          # flow | regression | hlgauss
    bins: int = 51              # HL-Gauss bins over [0, 1]


VALUE_CONFIGS = {
    "paper": ValueConfig(),
    "tiny": ValueConfig(dim=32, ffn_dim=64, num_layers=2, num_heads=2, head_dim=32, cross_heads=2, text_dim=32, freq_dim=32),
    "small": ValueConfig(dim=64, ffn_dim=128, num_layers=4, num_heads=4, head_dim=32, cross_heads=2, text_dim=32, freq_dim=64),
    "mid": ValueConfig(dim=128, ffn_dim=512, num_layers=6, num_heads=6, head_dim=128, cross_heads=2, text_dim=256),
}


class ValueDiT(nn.Module):
    def __init__(self, cfg: ValueConfig):
        super().__init__()
        if cfg.head not in ("flow", "regression", "hlgauss"):
            raise ValueError(f"value head {cfg.head!r}: expected flow, regression or hlgauss")
        self.cfg = c = cfg
        self.value_embedding = nn.Linear(1, c.dim)
        self.slot_embedding = nn.Parameter(torch.randn(1 + c.chunk, c.dim) * 0.02)
        self.text_embedding = text_mlp(c.text_dim, c.dim)
        self.time_embedding, self.time_projection = time_mlps(c.freq_dim, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.ffn_dim, c.num_heads, c.head_dim, c.cross_heads, c.eps)
                                    for _ in range(c.num_layers))
        self.head = Head(c.dim, c.bins if c.head == "hlgauss" else 1, c.eps)
        nn.init.zeros_(self.head.head.weight)  # as DiT: a fresh value stream predicts zero
        nn.init.zeros_(self.head.head.bias)

    def embed(self, values, t, context, text_len):
        """values [B, 1+h], t [B, 1+h] on 0..1000, context [B, L, text_dim] -> tokens (fp32), e, e0, projected text."""
        with torch.autocast(values.device.type, enabled=False):  # bf16 would round the progress input to ~3 digits
            w = self.value_embedding
            tokens = F.linear(values.float()[..., None], w.weight.float(), w.bias.float()) + self.slot_embedding.float()
        e, e0 = time_embed(self, t.float())
        return tokens, e, e0, embed_text(self, context, text_len)

    def chunk_out(self, tokens, e):
        """Head output for the h chunk tokens: [B, h] velocity or value, or [B, h, bins] logits (fp32)."""
        out = self.head(tokens, e)[:, 1:]
        return out if self.cfg.head == "hlgauss" else out[..., 0]


# HL-Gauss (Imani & White 2018; the paper's classification baseline): a Gaussian of one bin width
# around the target, integrated over the bins; prediction is the expectation over bin centres.

def hl_gauss_bins(n, device=None):
    """Bin edges of n bins whose centres are 0, 1/(n-1), ..., 1."""
    w = 1.0 / (n - 1)
    return torch.linspace(-w / 2, 1 + w / 2, n + 1, device=device)


def hl_gauss_target(y, n):
    """y [...] in [0, 1] -> target probabilities [..., n]."""
    edges = hl_gauss_bins(n, y.device)
    sigma = edges[1] - edges[0]
    cdf = torch.special.ndtr((edges - y[..., None].float()) / sigma)
    p = cdf[..., 1:] - cdf[..., :-1]
    return p / p.sum(-1, keepdim=True)


def hl_gauss_decode(logits):
    n = logits.shape[-1]
    centres = torch.linspace(0, 1, n, device=logits.device)
    return (logits.float().softmax(-1) * centres).sum(-1)

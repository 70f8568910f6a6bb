"""The value stream of WVM: ValueConfig, ValueDiT and its value head (flow matching, or Table 4's baselines).

A narrow DiT (width 512) with the video stream's depth. Its blocks are model.Block: the same
Wan2.2 block code, with self-attention projected into the video's 24 x 128 attention space (so
both streams attend jointly, wvm.WVM) and its own 8 x 64 text cross-attention, adaLN tables,
timestep embedding, text projection and heads.

Tokens per sample: 1 + h. Slot 0 is the prefix, carrying the clean value v_{t-h}; slots 1..h carry
the chunk v_{t-h+1..t}: noisy values at flow time s for the flow head, nothing (zeros at time 0)
for the regression and HL-Gauss heads. Each token embeds its scalar with a linear layer plus a
learned per-slot embedding; value tokens get no RoPE.

Beyond the paper, a value stream with state_dim d > 0 also reads the robot's state (its proprioception, e.g. a
LeRobot dataset's observation.state): each token adds a linear map of the standardized state s at its frame, of
s_0 at the episode's first frame and of s - s_0 (where the episode started tells how far it has come). The map
starts at zero, so such a model begins as the video-only one, and a clip given no state is read by the video alone.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import flow
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
    pred: str = "v"             # flow head's output: v (the paper's velocity) or x0 (the clean chunk; not in the paper)
    bins: int = 51              # HL-Gauss bins over [0, 1]
    state_dim: int = 0          # d of the robot's state read beside the video (0: none, as in the paper)


VALUE_CONFIGS = {
    "paper": ValueConfig(),
    "tiny": ValueConfig(dim=32, ffn_dim=64, num_layers=2, num_heads=2, head_dim=32, cross_heads=2, text_dim=32, freq_dim=32),
    "small": ValueConfig(dim=64, ffn_dim=128, num_layers=4, num_heads=4, head_dim=32, cross_heads=2, text_dim=32,
                         freq_dim=64),
    "base": ValueConfig(dim=128, ffn_dim=512, num_layers=6, num_heads=4, head_dim=64, cross_heads=2, text_dim=32,
                        freq_dim=64),
    "mid": ValueConfig(dim=128, ffn_dim=512, num_layers=6, num_heads=6, head_dim=128, cross_heads=2, text_dim=256),
}


class ValueDiT(nn.Module):
    def __init__(self, cfg: ValueConfig):
        super().__init__()
        if cfg.head not in ("flow", "regression", "hlgauss"):
            raise ValueError(f"value head {cfg.head!r}: expected flow, regression or hlgauss")
        if cfg.pred not in ("v", "x0") or (cfg.pred == "x0" and cfg.head != "flow"):
            raise ValueError(f"value prediction {cfg.pred!r} with head {cfg.head!r}: expected v, or x0 with the flow head")
        self.cfg = c = cfg
        self.value_embedding = nn.Linear(1, c.dim)
        self.slot_embedding = nn.Parameter(torch.randn(1 + c.chunk, c.dim) * 0.02)
        self.text_embedding = text_mlp(c.text_dim, c.dim)
        self.time_embedding, self.time_projection = time_mlps(c.freq_dim, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.ffn_dim, c.num_heads, c.head_dim, c.cross_heads, c.eps)
                                    for _ in range(c.num_layers))
        if c.state_dim:  # the training set's per-dim mean and std (train.py sets them), saved with the model
            self.state_embedding = nn.Linear(3 * c.state_dim, c.dim, bias=False)
            nn.init.zeros_(self.state_embedding.weight)
            self.register_buffer("state_mean", torch.zeros(c.state_dim))
            self.register_buffer("state_std", torch.ones(c.state_dim))
        self.head = Head(c.dim, c.bins if c.head == "hlgauss" else 1, c.eps)
        nn.init.zeros_(self.head.head.weight)  # as DiT: a fresh value stream predicts zero
        nn.init.zeros_(self.head.head.bias)

    def state_input(self, state, start, keep=None):
        """The state features of the value tokens: state [B, 1+h, d] at their frames, start [B, d] at frame 0, keep [B]
        (False: this clip's state is left out, its features zero) -> [B, 1+h, 3d]: s, s_0 and s - s_0, standardized."""
        if not self.cfg.state_dim:
            raise ValueError("this value stream reads no state (state_dim 0)")
        if state.shape[-1] != self.cfg.state_dim or start.shape[-1] != self.cfg.state_dim:
            raise ValueError(f"state of width {state.shape[-1]} (start {start.shape[-1]}): the model reads "
                             f"{self.cfg.state_dim}")
        mean, std = self.state_mean.float(), self.state_std.float()
        s, s0 = (state.float() - mean) / std, ((start.float() - mean) / std)[:, None].expand_as(state)
        x = torch.cat([s, s0, s - s0], -1)
        return x if keep is None else x * keep.to(x)[:, None, None]

    def embed(self, values, t, context, text_len, state=None):
        """values [B, 1+h], t [B, 1+h] on 0..1000, context [B, L, text_dim], state features [B, 1+h, 3d] (state_input)
        or None -> tokens (fp32), e, e0, projected text."""
        with torch.autocast(values.device.type, enabled=False):  # bf16 would round the progress input to ~3 digits
            w = self.value_embedding
            tokens = F.linear(values.float()[..., None], w.weight.float(), w.bias.float()) + self.slot_embedding.float()
            if state is not None:
                tokens = tokens + F.linear(state.float(), self.state_embedding.weight.float())
        e, e0 = time_embed(self, t.float())
        return tokens, e, e0, embed_text(self, context, text_len)

    def chunk_out(self, tokens, e):
        """Head output for the h chunk tokens: [B, h] velocity or value, or [B, h, bins] logits (fp32)."""
        out = self.head(tokens, e)[:, 1:]
        return out if self.cfg.head == "hlgauss" else out[..., 0]

    # The value head, all of it: what the chunk tokens carry in training, what they learn, how a chunk is read out.
    # flow (the paper's): noisy values at flow time s, trained on the velocity, sampled by Euler steps from noise.
    # With pred x0 (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise") the same flow predicts the
    # clean chunk, trained on it (MSE), and Euler steps use the velocity it implies, (x_s - x0) / s: the network need
    # not carry the noise through to its output, which a velocity at s = 1 (eps - x0) asks of it.
    # regression and HL-Gauss (the baselines of the paper's Table 4): empty chunk tokens (zeros at time 0), trained on
    # the values (MSE) or on their HL-Gauss histogram (cross-entropy), read out in one pass.

    def chunk_input(self, y, s, eps):
        """Training input of the chunk tokens for targets y [B, h], flow times s [B] and noise eps [B, h]:
        (values [B, h], times [B, h] on 0..1000)."""
        if self.cfg.head == "flow":
            return flow.add_noise(y, eps, s), 1000 * s[:, None].expand(y.shape)
        return torch.zeros_like(y), torch.zeros_like(y)

    def chunk_loss(self, out, y, eps):
        """L_value of the chunk outputs out (chunk_out) for targets y [B, h] and the noise eps [B, h] of chunk_input."""
        if self.cfg.head == "flow":
            return F.mse_loss(out, y if self.cfg.pred == "x0" else flow.velocity(y, eps))
        if self.cfg.head == "regression":
            return F.mse_loss(out, y)
        return F.cross_entropy(out.flatten(0, 1), hl_gauss_target(y, self.cfg.bins).flatten(0, 1))

    def sample_chunk(self, run, n, noise, steps=1):
        """Value chunks [n, h] from run(chunk_in [n, h], s) -> chunk_out of the chunk tokens at flow time s.

        flow: `steps` Euler steps from s = 1, starting at noise() [n, h] (the paper's inference is one step; with pred
        x0 one step returns the prediction at pure noise);
        regression and HL-Gauss: one pass over empty chunk tokens, as in training; they draw no noise."""
        if self.cfg.head == "flow" and self.cfg.pred == "x0":
            return flow.euler_sample(lambda x, s: (x - run(x, s)) / s, noise(), steps)  # s > 0 at every step
        if self.cfg.head == "flow":
            return flow.euler_sample(run, noise(), steps)
        out = run(torch.zeros(n, self.cfg.chunk, device=self.slot_embedding.device), 0.0)
        return hl_gauss_decode(out) if self.cfg.head == "hlgauss" else out


# HL-Gauss (Imani & White 2018; the baseline of the paper's Table 4, Appendix F): the chunk values are classified
# into n bins over [0, 1]; the target spreads a value over the bins as a Gaussian, the prediction is the
# expectation over the bin centres.

def hl_gauss_target(y, n):
    """Targets y [...] in [0, 1] -> probabilities [..., n] over the bins centred at 0, 1/(n-1), ..., 1: the paper's
    Eq. F.8, a Gaussian of one bin width around y evaluated at the bin centres and normalized, one-hot on the end
    bin for a y within 1e-6 of 0 or 1."""
    centres = torch.linspace(0, 1, n, device=y.device)
    y = y.float()[..., None]
    p = torch.softmax(-0.5 * ((centres - y) * (n - 1)) ** 2, -1)  # sigma = 1 / (n - 1), one bin width
    p = torch.where(y <= 1e-6, F.one_hot(torch.tensor(0), n).to(p), p)
    return torch.where(y >= 1 - 1e-6, F.one_hot(torch.tensor(n - 1), n).to(p), p)


def hl_gauss_decode(logits):
    """Logits [..., n] -> values [...]: the expectation over the bin centres."""
    n = logits.shape[-1]
    centres = torch.linspace(0, 1, n, device=logits.device)
    return (logits.float().softmax(-1) * centres).sum(-1)

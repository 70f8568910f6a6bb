"""The Wan2.2-TI2V-5B video DiT: the video stream of WVM (wvm.py), and its checkpoints.

The block is split at the self-attention (`Block.qkv` / `Block.finish`) so that the value stream (value_dit.py),
built from the same block code, can attend jointly with it. Parameter names are the official Wan2.2 ones, so the
published checkpoint loads without renaming; diffusers and ComfyUI names are renamed on the way in (`wan_key`).
DESIGN.md lists the Wan2.2 facts this file relies on.

Numerics follow the reference: the time path, modulation, gated residuals, norms, RoPE and the
head run in fp32; the linear layers run in whatever autocast asks for (bf16 on GPU).
"""
import contextlib
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import (CheckpointError, TensorFile, check_sizes, checkpoint_files, load_into, positive_whole,
                        save_json, save_safetensors)
from kernels import adaln_modulate, mot_attention, qk_norm_rope


@dataclass
class WanConfig:
    dim: int = 3072
    ffn_dim: int = 14336
    num_heads: int = 24
    num_layers: int = 30
    in_dim: int = 48
    out_dim: int = 48
    patch_size: tuple = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6

    def __post_init__(self):
        self.patch_size = tuple(self.patch_size) if isinstance(self.patch_size, (list, tuple)) else (self.patch_size,)
        check_sizes(self, ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "patch_size", "text_dim",
                           "text_len", "freq_dim"))
        if len(self.patch_size) != 3 or self.dim % self.num_heads:
            raise ValueError(f"patch_size {self.patch_size}, dim {self.dim}, num_heads {self.num_heads}: expected "
                             f"three patch sizes and a width that splits into the heads")
        if not (isinstance(self.eps, float) and 0 < self.eps < 1):
            raise ValueError(f"eps {self.eps!r}: must be a small positive number")

    @property
    def head_dim(self):
        return self.dim // self.num_heads


WAN_CONFIGS = {
    "ti2v-5b": WanConfig(),
    # a few minutes of CPU training; same code paths as the real model
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16, freq_dim=32),
    "small": WanConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=4, text_dim=32, text_len=16, freq_dim=64),
    "base": WanConfig(dim=256, ffn_dim=1024, num_heads=4, num_layers=6, text_dim=32, text_len=16, freq_dim=64),
    "mid": WanConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=6, text_dim=256, text_len=64, freq_dim=256),
}


# ----------------------------------------------------------------------------------------------
# small pieces

def sinusoidal_embedding(t, dim):
    """Wan's timestep features: [cos(t*f_i), sin(t*f_i)], f_i = 10000^(-i/(dim/2)), t on the 0..1000 scale."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.double()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], -1).float()


def rope_tables(head_dim, F_, H, W, device=None, theta=10000.0):
    """cos, sin [F_*H*W, head_dim/2] for 3-axis RoPE: pairs split time/height/width as 44/42/42 at d=128."""
    d_hw = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_hw
    angles = []
    for n, d in ((F_, d_t), (H, d_hw), (W, d_hw)):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        angles.append(torch.arange(n, dtype=torch.float64, device=device)[:, None] * freqs)
    f, h, w = angles
    grid = torch.cat([f[:, None, None].expand(F_, H, W, -1),
                      h[None, :, None].expand(F_, H, W, -1),
                      w[None, None, :].expand(F_, H, W, -1)], -1).reshape(F_ * H * W, head_dim // 2)
    return torch.cos(grid).float(), torch.sin(grid).float()


def checkpointed(fn, *args, on=True):
    """fn(*args); with `on`, while gradients are taken, its activations are recomputed in backward rather than kept
    (activation checkpointing: a layer of WVM, a block of the video stream alone)."""
    if on and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def gated_add(x, y, gate):
    """x + y * gate in fp32, with gate [B, G, D] applied to the G equal groups of tokens of x [B, L, D]."""
    B, L, D = x.shape
    G = gate.shape[1]
    return (x.float().view(B, G, L // G, D) + y.view(B, G, L // G, D) * gate[:, :, None]).view(B, L, D)


def low_precision_autocast(module, device_type):
    """Autocast to the weights' dtype when they are bf16/fp16 and the caller set up none: the fp32 residual
    stream can then meet bf16 weights without every caller writing torch.autocast."""
    dtype = module.patch_embedding.weight.dtype if hasattr(module, "patch_embedding") else next(module.parameters()).dtype
    if dtype == torch.float32 or torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def compute_dtype(x):
    """The dtype matmul inputs end up in: the autocast dtype if autocast is on, else x's own."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).type_as(x)


class SelfAttention(nn.Module):
    """q/k/v/o projections into an attention space of heads x head_dim; the attention itself runs jointly (WVM)."""

    def __init__(self, dim, num_heads, head_dim, eps):
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        inner = num_heads * head_dim
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.o = nn.Linear(inner, dim)
        self.norm_q, self.norm_k = RMSNorm(inner, eps), RMSNorm(inner, eps)

    def qkv(self, x, rope):
        cos, sin = rope if rope is not None else (None, None)
        q = qk_norm_rope(self.q(x), self.norm_q.weight, cos, sin, self.num_heads, self.eps)
        k = qk_norm_rope(self.k(x), self.norm_k.weight, cos, sin, self.num_heads, self.eps)
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        return q, k, v


class CrossAttention(nn.Module):
    """Text cross-attention: queries from the stream, keys/values from the projected umT5 tokens (no mask)."""

    def __init__(self, dim, num_heads, eps):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x, context):
        split = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.norm_q(self.q(x))), split(self.norm_k(self.k(context))), split(self.v(context))
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """One Wan2.2 transformer block, split at the self-attention so two streams can attend jointly.

    The video stream uses it with dim 3072 and 24 x 128 heads; the value stream (value_dit.py)
    uses the same code with dim 512, self-attention in the video's 24 x 128 space, 8 cross heads.
    e0 [B, G, 6, dim] is the per-group time projection (a group = a latent frame, or a value token).
    """

    def __init__(self, dim, ffn_dim, num_heads, head_dim, cross_heads, eps):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.self_attn = SelfAttention(dim, num_heads, head_dim, eps)
        self.norm3 = nn.LayerNorm(dim, eps)
        self.cross_attn = CrossAttention(dim, cross_heads, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def qkv(self, x, e0, rope):
        shift, scale = (self.modulation[:, None, 0:2].float() + e0[:, :, 0:2]).unbind(2)
        return self.self_attn.qkv(adaln_modulate(x, shift, scale, self.eps, compute_dtype(x)), rope)

    def finish(self, x, attn, e0, context):
        """Everything after the attention: output projection + gate, cross-attention, FFN + gate."""
        m = self.modulation[:, None].float() + e0
        x = gated_add(x, self.self_attn.o(attn.flatten(2)), m[:, :, 2])
        n = self.norm3  # in fp32 whatever the weights' dtype (CPU autocast would not upcast a bf16 norm3)
        normed = F.layer_norm(x.float(), n.normalized_shape, n.weight.float(), n.bias.float(), n.eps)
        x = x + self.cross_attn(normed, context)
        h = adaln_modulate(x, m[:, :, 3], m[:, :, 4], self.eps, compute_dtype(x))
        return gated_add(x, self.ffn(h), m[:, :, 5])

    def forward(self, x, e0, context, rope, n_fut=0):
        """The block alone (no second stream); the last n_fut tokens see every token, the others only each other."""
        q, k, v = self.qkv(x, e0, rope)
        return self.finish(x, mot_attention(q, k, v, n_cur=q.shape[1] - n_fut, n_fut=n_fut), e0, context)


class Head(nn.Module):
    """Final adaLN norm + linear, modulated by the time embedding e [B, G, dim] (not e0), all in fp32."""

    def __init__(self, dim, out, eps):
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.head = nn.Linear(dim, out)

    def forward(self, x, e):
        with torch.autocast(x.device.type, enabled=False):
            shift, scale = (self.modulation[:, None].float() + e[:, :, None]).unbind(2)
            return F.linear(adaln_modulate(x, shift, scale, self.eps, torch.float32),
                            self.head.weight.float(), self.head.bias.float())


def time_embed(stream, t):
    """t [B, G] on the 0..1000 scale -> e [B, G, dim] and e0 [B, G, 6, dim], in fp32."""
    with torch.autocast(t.device.type, enabled=False):
        lin = lambda m, x: F.linear(x, m.weight.float(), m.bias.float())  # noqa: E731  (fp32 even for bf16 weights)
        te = stream.time_embedding
        e = lin(te[2], F.silu(lin(te[0], sinusoidal_embedding(t, te[0].in_features))))
        e0 = lin(stream.time_projection[1], F.silu(e)).unflatten(-1, (6, -1))
    return e, e0


def embed_text(stream, context, text_len):
    """Zero-pad umT5 features [B, L, text_dim] to text_len rows (as Wan does) and project them."""
    B, L, C = context.shape
    if L > text_len or C != stream.text_embedding[0].in_features:
        raise ValueError(f"context {tuple(context.shape)}: expected [B, <= {text_len}, "
                         f"{stream.text_embedding[0].in_features}]")
    return stream.text_embedding(F.pad(context, (0, 0, 0, text_len - L)))


def text_mlp(text_dim, dim):
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def time_mlps(freq_dim, dim):
    return (nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)),
            nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)))


# ----------------------------------------------------------------------------------------------
# the video DiT

# kept in fp32 when the rest is cast to bf16: the reference computes these in fp32 (and so does the value input)
FP32_PARAMS = re.compile(r"(^|\.)(time_embedding|time_projection|head|value_embedding|state_embedding)\."
                         r"|(slot_embedding|modulation|state_mean|state_std)$|norm3\.|norm_[qk]\.")


class WanDiT(nn.Module):

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = text_mlp(c.text_dim, c.dim)
        self.time_embedding, self.time_projection = time_mlps(c.freq_dim, c.dim)
        self.blocks = nn.ModuleList(Block(c.dim, c.ffn_dim, c.num_heads, c.head_dim, c.num_heads, c.eps)
                                    for _ in range(c.num_layers))
        self.head = Head(c.dim, c.out_dim * math.prod(c.patch_size), c.eps)

    def embed(self, x, t, context):
        """Latents [B, C, F, H, W] -> tokens [B, L, dim] (fp32), per-frame e/e0, projected text, RoPE tables."""
        B, C, F_, H, W = x.shape
        pt, ph, pw = self.cfg.patch_size
        if C != self.cfg.in_dim or F_ % pt or H % ph or W % pw:
            raise ValueError(f"latents {tuple(x.shape)}: expected [B, {self.cfg.in_dim}, F, H, W] with "
                             f"F, H, W multiples of the patch {self.cfg.patch_size}")
        if t.dim() == 1:
            t = t[:, None].expand(B, F_ // pt)
        if t.shape != (B, F_ // pt):
            raise ValueError(f"timesteps {tuple(t.shape)}: expected [B] or [B, F] = [{B}] or [{B}, {F_ // pt}]")
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2).float()
        e, e0 = time_embed(self, t.float())
        rope = rope_tables(self.cfg.head_dim, F_ // pt, H // ph, W // pw, x.device)
        return tokens, e, e0, embed_text(self, context, self.cfg.text_len), rope

    def unpatchify(self, out, F_, H, W):
        pt, ph, pw = self.cfg.patch_size
        f, h, w = F_ // pt, H // ph, W // pw
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)  # channel fastest, as Wan
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(out.shape[0], self.cfg.out_dim, F_, H, W)

    def forward(self, x, t, context, future=0, checkpointing=False):
        """x [B, 48, F, H, W] latents, t [B] or [B, F] on 0..1000, context [B, L<=512, 4096] -> velocity (fp32).

        future > 0: the last `future` latent frames see every frame and the frames before them only each
        other (WVM's block-causal video mask); 0 is Wan's full attention. checkpointing: per block."""
        with low_precision_autocast(self, x.device.type):
            tokens, e, e0, ctx, rope = self.embed(x, t, context)
            n_fut = tokens.shape[1] * future // x.shape[2]
            for block in self.blocks:
                tokens = checkpointed(block, tokens, e0, ctx, rope, n_fut, on=checkpointing)
            return self.unpatchify(self.head(tokens, e), *x.shape[2:])


# ----------------------------------------------------------------------------------------------
# checkpoints: official Wan2.2 names, diffusers names (reading and writing files is checkpoint.py's)

# diffusers -> official, applied in order (the inverse of diffusers' conversion script)
_DIFFUSERS_TO_WAN = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("proj_out", "head.head"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),  # diffusers norm2 is the affine norm before cross-attention
    ("attn1.to_out.0", "self_attn.o"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn1.to_", "self_attn."),
    ("attn2.to_", "cross_attn."),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
]


def wan_key(name):
    """Official Wan2.2 name of a DiT tensor given under official, diffusers or ComfyUI-prefixed names."""
    name = name.removeprefix("model.diffusion_model.")
    if name == "scale_shift_table":
        return "head.modulation"
    if name.endswith(".scale_shift_table"):
        return name[: -len("scale_shift_table")] + "modulation"
    for a, b in _DIFFUSERS_TO_WAN:
        name = name.replace(a, b)
    return name


def wan_config_from(shapes, config, path=""):
    """WanConfig from an official or diffusers config.json, falling back to tensor shapes; what neither
    gives (num_heads, text_len) is Wan's and said on stderr."""
    c = {}
    if config:
        if "num_attention_heads" in config and "attention_head_dim" not in config:
            raise CheckpointError("config.json: num_attention_heads (diffusers' layout) without attention_head_dim")
        if "num_attention_heads" in config:  # diffusers
            heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
            if not (positive_whole(heads) and positive_whole(head_dim)):
                raise CheckpointError(f"config.json: num_attention_heads {heads!r} and attention_head_dim {head_dim!r} "
                                      "must be positive whole numbers")
            c = dict(dim=heads * head_dim, num_heads=heads,
                     in_dim=config.get("in_channels"), out_dim=config.get("out_channels"), text_dim=config.get("text_dim"),
                     ffn_dim=config.get("ffn_dim"), num_layers=config.get("num_layers"), freq_dim=config.get("freq_dim"),
                     eps=config.get("eps"), patch_size=config.get("patch_size"))
        else:
            c = {f.name: config[f.name] for f in fields(WanConfig) if f.name in config}
        c = {k: v for k, v in c.items() if v is not None}
    pe = shapes.get("patch_embedding.weight")
    if pe is None:
        raise CheckpointError("no patch_embedding.weight: not a Wan DiT checkpoint")
    dim, in_dim = pe[0], pe[1]
    c.setdefault("dim", dim)
    c.setdefault("in_dim", in_dim)
    c.setdefault("patch_size", tuple(pe[2:]))
    guessed = []
    if "num_heads" not in c:  # not in the weights: every Wan2.x DiT has 128-wide heads
        if dim % 128:
            raise CheckpointError(f"width {dim} is not a multiple of Wan's head_dim 128 and no config.json gives num_heads")
        c["num_heads"] = dim // 128
        guessed.append(f"num_heads = {dim // 128} (width {dim} / Wan's head width 128)")
    if "text_len" not in c:  # diffusers' config has none either: its pipeline pads prompts to 512 tokens
        guessed.append(f"text_len = {WanConfig.text_len} (Wan's prompt length)")
    if guessed:
        print(f"{path}: no config.json gives {' or '.join(g.split(' =')[0] for g in guessed)}; using "
              + ", ".join(guessed), file=sys.stderr)
    lacking = [k for k in ("text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight") if k not in shapes]
    if lacking:
        raise CheckpointError(f"no {', '.join(lacking)}: an incomplete Wan DiT checkpoint")
    c.setdefault("num_layers", len({k.split(".")[1] for k in shapes if k.startswith("blocks.")}))
    if "blocks.0.ffn.0.weight" in shapes:
        c.setdefault("ffn_dim", shapes["blocks.0.ffn.0.weight"][0])
    c.setdefault("text_dim", shapes["text_embedding.0.weight"][1])
    c.setdefault("freq_dim", shapes["time_embedding.0.weight"][1])
    try:
        c.setdefault("out_dim", shapes["head.head.weight"][0] // math.prod(c["patch_size"]))
        return WanConfig(**c)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{'config.json' if config else 'the tensor shapes'}: {e}") from None


def read_wan_checkpoint(path, cfg=None):
    """(folder, files, WanConfig) of a Wan2.2 DiT checkpoint (official or diffusers layout), the config from
    config.json or the tensor shapes unless cfg is given: headers only, no weights read."""
    if os.path.isdir(os.path.join(path, "transformer")):  # a diffusers pipeline folder
        path = os.path.join(path, "transformer")
    files, config = checkpoint_files(path, "diffusion_pytorch_model")
    if cfg:
        return path, files, cfg
    shapes = {}
    for f in files:
        shapes.update({wan_key(k): v for k, v in TensorFile(f).shapes.items()})
    try:
        return path, files, wan_config_from(shapes, config, path)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_wan_dit(path, dtype=None, device=None, cfg=None):
    """Load Wan2.2 DiT weights (official or diffusers layout) into a WanDiT without a second copy in memory.

    The config comes from config.json or the tensor shapes unless cfg is given. dtype casts the
    weights (e.g. torch.bfloat16) except those the reference keeps in fp32.
    """
    path, files, cfg = read_wan_checkpoint(path, cfg)
    with torch.device("meta"):
        model = WanDiT(cfg)
    return load_into(model, path, files, wan_key, dtype, device, FP32_PARAMS if dtype else None)


def save_wan_dit(model, folder, vae=None, text_encoder=None, vae_weights=None):
    """A WanDiT as an official Wan2.2 DiT checkpoint folder (diffusion_pytorch_model.safetensors + config.json),
    the format load_wan_dit and the Wan2.2 code read: e.g. the video stream pretrained by train.py --stage=video.
    vae, vae_weights, text_encoder: the ids of the VAE whose latents it learned (wan_vae.vae_fingerprint, and the
    digest of its weights: wan_vae.vae_ids) and of the encoder whose text features (encode_text.encoder_id), kept
    in config.json as "wvm_vae", "wvm_vae_weights" and "wvm_text_encoder" (keys Wan's loaders ignore) so that the
    folder says them wherever it is copied."""
    os.makedirs(folder, exist_ok=True)
    c = model.cfg
    config = {"_class_name": "WanModel", "model_type": "ti2v", "dim": c.dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
              "in_dim": c.in_dim, "num_heads": c.num_heads, "num_layers": c.num_layers, "out_dim": c.out_dim,
              "text_len": c.text_len, "eps": c.eps} | {k: v for k, v in (("wvm_vae", vae), ("wvm_vae_weights", vae_weights),
                                                       ("wvm_text_encoder", text_encoder)) if v}
    save_safetensors(model.state_dict(), os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    save_json(config, os.path.join(folder, "config.json"))


def config_dict(cfg):
    """A config dataclass as JSON-ready values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}

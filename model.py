"""The Wan2.2-TI2V-5B video DiT (the video stream of WVM), its checkpoint loader, and WVM itself.

Read with ../shared/wan22.md (sections A, C, D) and SPEC.md §3-4. Parameter names are the official
Wan2.2 ones, so the published checkpoint loads without renaming; diffusers-format checkpoints are
renamed on the way in (`wan_key`).

Numerics follow the reference: the time path, modulation, gated residuals, norms, RoPE and the
head run in fp32; the linear layers run in whatever autocast asks for (bf16 on GPU).
"""
import contextlib
import json
import math
import os
import pickle
import re
import sys
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import flow
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

    @property
    def head_dim(self):
        return self.dim // self.num_heads


WAN_CONFIGS = {
    "ti2v-5b": WanConfig(),
    # a few minutes of CPU training; same code paths as the real model
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16, freq_dim=32),
    "small": WanConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=4, text_dim=32, text_len=16, freq_dim=64),
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
        x = x + self.cross_attn(self.norm3(x), context)
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
        raise ValueError(f"context {tuple(context.shape)}: expected [B, <= {text_len}, {stream.text_embedding[0].in_features}]")
    return stream.text_embedding(F.pad(context, (0, 0, 0, text_len - L)))


def text_mlp(text_dim, dim):
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def time_mlps(freq_dim, dim):
    return (nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)),
            nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)))


# ----------------------------------------------------------------------------------------------
# the video DiT

# kept in fp32 when the rest is cast to bf16: the reference computes these in fp32 (and so does the value input)
FP32_PARAMS = re.compile(r"(^|\.)(time_embedding|time_projection|head|value_embedding)\.|(slot_embedding|modulation)$|norm3\.|norm_[qk]\.")


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

    def forward(self, x, t, context, future=0):
        """x [B, 48, F, H, W] latents, t [B] or [B, F] on 0..1000, context [B, L<=512, 4096] -> velocity (fp32).

        future > 0: the last `future` latent frames see every frame and the frames before them only each
        other (WVM's block-causal video mask); 0 is Wan's full attention."""
        with low_precision_autocast(self, x.device.type):
            tokens, e, e0, ctx, rope = self.embed(x, t, context)
            n_fut = tokens.shape[1] * future // x.shape[2]
            for block in self.blocks:
                tokens = block(tokens, e0, ctx, rope, n_fut)
            return self.unpatchify(self.head(tokens, e), *x.shape[2:])


# ----------------------------------------------------------------------------------------------
# checkpoints: official Wan2.2 names, diffusers names, sharded safetensors, .pth

class CheckpointError(ValueError):
    pass


# diffusers -> official, applied in order (wan22.md §D, inverted)
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


def checkpoint_files(path, stem):
    """Resolve a checkpoint path (file or folder) to (tensor files, config dict or None).

    Folders may hold `<stem>.safetensors`, sharded `<stem>-0000k-of-0000n.safetensors` + index,
    any single .safetensors / .pth, and an optional config.json.
    """
    if os.path.isfile(path):
        cfg_file = os.path.join(os.path.dirname(path), "config.json")
        if path.endswith(".json"):  # an index
            with open(path) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(os.path.dirname(path), s) for s in shards], _read_json(cfg_file)
        return [path], _read_json(cfg_file)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    names = sorted(os.listdir(path))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if index:
        return checkpoint_files(os.path.join(path, index[0]), stem)
    for pattern in (rf"{stem}\.safetensors$", r".*\.safetensors$", r".*\.(pth|pt|bin|ckpt)$"):
        found = [n for n in names if re.match(pattern, n)]
        if found:
            return [os.path.join(path, n) for n in found], _read_json(os.path.join(path, "config.json"))
    raise CheckpointError(f"{path}: no .safetensors, .safetensors.index.json or .pth checkpoint in this folder")


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class _TensorFile:
    """Lazy access to the tensors of one .safetensors or .pth file (names and shapes without reading data)."""

    def __init__(self, path):
        self.path = path
        try:
            if path.endswith(".safetensors"):
                from safetensors import safe_open
                self._st = safe_open(path, "pt", device="cpu")
                self.shapes = {k: tuple(self._st.get_slice(k).get_shape()) for k in self._st.keys()}
            else:
                sd = load_pth(path)
                for wrapper in ("state_dict", "model", "module"):
                    if isinstance(sd, dict) and set(sd) == {wrapper}:
                        sd = sd[wrapper]
                self._sd = sd
                self.shapes = {k: tuple(v.shape) for k, v in sd.items() if torch.is_tensor(v)}
        except CheckpointError:
            raise
        except Exception as e:  # unreadable, truncated, not a checkpoint
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {first})") from None

    def get(self, name):
        return self._st.get_tensor(name) if hasattr(self, "_st") else self._sd[name]


def load_pth(path):
    """A .pth/.pt state dict, read without running any of its pickled code (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise CheckpointError(f"{path}: holds Python objects besides tensors ({what.group(1) if what else 'unknown'}), "
                              "which are never loaded because unpickling them can run code; save the tensors "
                              "alone (a state dict, or .safetensors)") from None


def _fmt(items, n=8):
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_checkpoint_into(model, path, files, rename=lambda k: k, dtype=None, device=None, keep_fp32=None):
    """Assign checkpoint tensors to a model built on the meta device, one file at a time.

    Every missing, unexpected or mis-shaped tensor is reported together in one CheckpointError
    before any data is read. Only one tensor is ever held twice (during a dtype/device cast).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tfiles = [_TensorFile(f) for f in files]
    found, unexpected, wrong = {}, [], []
    for tf in tfiles:
        for name, shape in tf.shapes.items():
            key = rename(name)
            if key not in expected:
                unexpected.append(name)
            elif shape != expected[key]:
                wrong.append(f"{name}: checkpoint {list(shape)} vs model {list(expected[key])}")
            else:
                found[key] = (tf, name)
    missing = [k for k in expected if k not in found]
    if missing or unexpected or wrong:
        msg = [f"{path}: checkpoint does not match {type(model).__name__}"]
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                msg.append(f"  {what} ({len(items)}): {_fmt(items)}")
        raise CheckpointError("\n".join(msg))
    for key, (tf, name) in found.items():
        t = tf.get(name)
        to = torch.float32 if keep_fp32 is not None and keep_fp32.search(key) else dtype
        if to is not None and t.is_floating_point():
            t = t.to(to)
        if device is not None:
            t = t.to(device)
        mod_name, _, attr = key.rpartition(".")
        mod = model.get_submodule(mod_name)
        old = getattr(mod, attr)
        setattr(mod, attr, nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t)
    return model


def wan_config_from(shapes, config, path=""):
    """WanConfig from an official or diffusers config.json, falling back to tensor shapes; what neither
    gives (num_heads, text_len) is Wan's and said on stderr."""
    c = {}
    if config:
        if "num_attention_heads" in config:  # diffusers
            c = dict(dim=config["num_attention_heads"] * config["attention_head_dim"], num_heads=config["num_attention_heads"],
                     in_dim=config.get("in_channels"), out_dim=config.get("out_channels"), text_dim=config.get("text_dim"),
                     ffn_dim=config.get("ffn_dim"), num_layers=config.get("num_layers"), freq_dim=config.get("freq_dim"),
                     eps=config.get("eps"), patch_size=tuple(config["patch_size"]) if "patch_size" in config else None)
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
    c.setdefault("num_layers", len({k.split(".")[1] for k in shapes if k.startswith("blocks.")}))
    if "blocks.0.ffn.0.weight" in shapes:
        c.setdefault("ffn_dim", shapes["blocks.0.ffn.0.weight"][0])
    c.setdefault("text_dim", shapes["text_embedding.0.weight"][1])
    c.setdefault("freq_dim", shapes["time_embedding.0.weight"][1])
    c.setdefault("out_dim", shapes["head.head.weight"][0] // math.prod(c["patch_size"]))
    return WanConfig(**c)


def load_wan_dit(path, dtype=None, device=None, cfg=None):
    """Load Wan2.2 DiT weights (official or diffusers layout) into a WanDiT without a second copy in memory.

    The config comes from config.json or the tensor shapes unless cfg is given. dtype casts the
    weights (e.g. torch.bfloat16) except those the reference keeps in fp32.
    """
    if os.path.isdir(os.path.join(path, "transformer")):  # a diffusers pipeline folder
        path = os.path.join(path, "transformer")
    files, config = checkpoint_files(path, "diffusion_pytorch_model")
    shapes = {}
    for f in files:
        shapes.update({wan_key(k): v for k, v in _TensorFile(f).shapes.items()})
    try:
        cfg = cfg or wan_config_from(shapes, config, path)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = WanDiT(cfg)
    return load_checkpoint_into(model, path, files, wan_key, dtype, device, FP32_PARAMS if dtype else None)


def save_wan_dit(model, folder):
    """A WanDiT as an official Wan2.2 DiT checkpoint folder (diffusion_pytorch_model.safetensors + config.json),
    the format load_wan_dit and the Wan2.2 code read: e.g. the video stream pretrained by train.py --stage=video."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    c = model.cfg
    config = {"_class_name": "WanModel", "model_type": "ti2v", "dim": c.dim, "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim,
              "in_dim": c.in_dim, "num_heads": c.num_heads, "num_layers": c.num_layers, "out_dim": c.out_dim,
              "text_len": c.text_len, "eps": c.eps}
    path = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path + ".tmp")
    with open(os.path.join(folder, "config.json.tmp"), "w") as f:
        json.dump(config, f, indent=1)
    os.replace(path + ".tmp", path)
    os.replace(os.path.join(folder, "config.json.tmp"), os.path.join(folder, "config.json"))


def config_dict(cfg):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


# ----------------------------------------------------------------------------------------------
# WVM: the video stream above, joined layer by layer with the value stream of value_dit.py

class WVM(nn.Module):
    """Video DiT + value DiT with Mixture-of-Transformers attention (SPEC.md §3).

    Per layer both streams compute q/k/v, one joint attention runs over
    [current video | future video | value] (kernels/mot_attention.py), and each stream finishes
    its own block. Video tokens never attend to value tokens, so the video stream is exactly a
    Wan2.2 DiT whatever the value tokens hold; with the block-causal mask the value prediction
    needs only the current latent, whose per-layer K/V are computed once (predict_values).
    """

    def __init__(self, video_cfg, value_cfg, mask="causal", video_loss_weight=1.0, video_shift=5.0, value_shift=1.0):
        super().__init__()
        from value_dit import ValueDiT  # value_dit builds on the blocks of this file

        if value_cfg.num_layers != video_cfg.num_layers or (value_cfg.num_heads, value_cfg.head_dim) != (
                video_cfg.num_heads, video_cfg.head_dim):
            raise ValueError(f"value stream {value_cfg} must match the video stream's depth and attention space "
                             f"({video_cfg.num_layers} layers, {video_cfg.num_heads} x {video_cfg.head_dim})")
        if value_cfg.text_dim != video_cfg.text_dim:
            raise ValueError(f"text_dim differs between streams ({video_cfg.text_dim} vs {value_cfg.text_dim})")
        if mask not in ("causal", "full"):
            raise ValueError(f"mask {mask!r}: expected causal or full")
        self.video, self.value = WanDiT(video_cfg), ValueDiT(value_cfg)
        self.mask, self.video_loss_weight = mask, video_loss_weight
        self.video_shift, self.value_shift = video_shift, value_shift
        self.checkpointing = False  # activation checkpointing per layer (train.py turns it on for big models)
        self.video_only = False  # the world-model prior: train the video stream alone (train.py --stage=video)

    @property
    def chunk(self):
        return self.value.cfg.chunk

    def layer(self, vb, ub, x, z, vid, val, n_cur, n_fut):
        """One MoT layer: vid = (e0, context, rope) of the video stream, val = (e0, context) of the value stream."""
        qx, kx, vx = vb.qkv(x, vid[0], vid[2])
        qz, kz, vz = ub.qkv(z, val[0], None)
        o = mot_attention(torch.cat([qx, qz.to(qx.dtype)], 1), torch.cat([kx, kz.to(kx.dtype)], 1),
                          torch.cat([vx, vz.to(vx.dtype)], 1), n_cur, n_fut, self.mask == "causal")
        L = x.shape[1]
        return vb.finish(x, o[:, :L], vid[0], vid[1]), ub.finish(z, o[:, L:], val[0], val[1])

    def joint(self, x_in, t_vid, v_in, t_val, context):
        """Both streams through all layers: video latents [B, C, F, H, W] at per-frame times t_vid [B, F]
        (F = 2: current, future) and value tokens v_in [B, 1+h] at times t_val [B, 1+h]
        -> final video tokens, video time embedding e, final value tokens, value time embedding.
        """
        with low_precision_autocast(self.video, x_in.device.type):
            x, e, e0, ctx, rope = self.video.embed(x_in, t_vid, context)
            z, eu, e0u, ctxu = self.value.embed(v_in, t_val, context, self.video.cfg.text_len)
            n_cur = x.shape[1] // x_in.shape[2]
            n_fut = x.shape[1] - n_cur
            for vb, ub in zip(self.video.blocks, self.value.blocks):
                args = (vb, ub, x, z, (e0, ctx, rope), (e0u, ctxu), n_cur, n_fut)
                if self.checkpointing and torch.is_grad_enabled():
                    x, z = torch.utils.checkpoint.checkpoint(self.layer, *args, use_reentrant=False)
                else:
                    x, z = self.layer(*args)
            return x, e, z, eu

    def forward(self, batch):
        """Training losses (SPEC.md §4). batch:
        latents [B, C, 2, H, W]: clean current and future latent (the prefix latent already dropped);
        context [B, L, text_dim]; values [B, 1+h]: prefix value (maybe randomized) and the h chunk targets;
        optional sigma_video [B], noise_video [B, C, 1, H, W], sigma_value [B], noise_value [B, h]
        (drawn here from the global RNG when absent; train.py passes them seeded per sample).
        """
        from value_dit import hl_gauss_target

        lat, values = batch["latents"].float(), batch["values"].float()
        B, C, F_, H, W = lat.shape
        if F_ != 2:
            raise ValueError(f"latents {tuple(lat.shape)}: expected the current and the future latent frame")
        dev = lat.device
        cur, fut = lat[:, :, :1], lat[:, :, 1:]
        s_vid = batch.get("sigma_video", None)
        s_vid = flow.sample_sigma(B, self.video_shift, device=dev) if s_vid is None else s_vid.float()
        eps_vid = batch.get("noise_video", None)
        eps_vid = torch.randn_like(fut) if eps_vid is None else eps_vid.float()
        x_in = torch.cat([cur, flow.add_noise(fut, eps_vid, s_vid)], 2)
        t_vid = torch.stack([torch.zeros_like(s_vid), 1000 * s_vid], 1)
        if self.video_only:  # Wan's flow loss on the future latent given the clean current one, under the same mask
            v_fut = self.video(x_in, t_vid, batch["context"], future=1 if self.mask == "causal" else 0)[:, :, 1:]
            loss_video = F.mse_loss(v_fut, flow.velocity(fut, eps_vid))
            return {"loss": loss_video, "loss_value": torch.zeros((), device=dev), "loss_video": loss_video}

        h, head = self.chunk, self.value.cfg.head
        y = values[:, 1:]
        if head == "flow":
            s_val = batch.get("sigma_value", None)
            s_val = flow.sample_sigma(B, self.value_shift, device=dev) if s_val is None else s_val.float()
            eps_val = batch.get("noise_value", None)
            eps_val = torch.randn_like(y) if eps_val is None else eps_val.float()
            chunk_in, t_chunk = flow.add_noise(y, eps_val, s_val), 1000 * s_val[:, None].expand(B, h)
        else:
            chunk_in, t_chunk = torch.zeros_like(y), torch.zeros_like(y)
        v_in = torch.cat([values[:, :1], chunk_in], 1)
        t_val = torch.cat([torch.zeros_like(t_chunk[:, :1]), t_chunk], 1)  # the prefix token is clean

        x, e, z, eu = self.joint(x_in, t_vid, v_in, t_val, batch["context"])
        out = self.value.chunk_out(z, eu)
        if head == "flow":
            loss_value = F.mse_loss(out, flow.velocity(y, eps_val))
        elif head == "regression":
            loss_value = F.mse_loss(out, y)
        else:
            loss_value = F.cross_entropy(out.flatten(0, 1), hl_gauss_target(y, out.shape[-1]).flatten(0, 1))
        loss_video = torch.zeros((), device=dev)
        if self.video_loss_weight:
            n_cur = x.shape[1] // 2
            v_fut = self.video.unpatchify(self.video.head(x[:, n_cur:], e[:, 1:]), 1, H, W)
            loss_video = F.mse_loss(v_fut, flow.velocity(fut, eps_vid))
        return {"loss": loss_value + self.video_loss_weight * loss_video, "loss_value": loss_value,
                "loss_video": loss_video, "value_out": out.detach()}

    @torch.no_grad()
    def prefill(self, current, context, generator=None):
        """Per-layer K/V of the current video tokens, computed once for every value query against them.

        Under the causal mask the current tokens see only themselves, so the future is not needed;
        under the full mask the future is fed as pure noise (time 1000).
        """
        B = current.shape[0]
        t = torch.zeros(B, 1, device=current.device)
        x_in = current
        if self.mask == "full":
            x_in = torch.cat([current, randn_rows(current.shape, generator, current.device)], 2)
            t = torch.cat([t, torch.full_like(t, 1000.0)], 1)
        x, _, e0, ctx, rope = self.video.embed(x_in.float(), t, context)
        n_cur = x.shape[1] // x_in.shape[2]
        cache = []
        for i, vb in enumerate(self.video.blocks):
            q, k, v = vb.qkv(x, e0, rope)
            cache.append((k[:, :n_cur], v[:, :n_cur]))
            if i + 1 < len(self.video.blocks):  # the last layer's output is not needed by the value stream
                x = vb.finish(x, mot_attention(q, k, v, n_cur, x.shape[1] - n_cur, self.mask == "causal"), e0, ctx)
        return cache

    @torch.no_grad()
    def predict_values(self, current_latents, context, prefix_value, steps=1, samples=1, generator=None):
        """Value chunk [B, samples, h] for clean current latents [B, C, 1, H, W] and prefix values [B].

        The video stream runs once (prefill); each Euler step and each noise sample runs only the
        value stream against the cached video K/V. generator: one for the batch, or a list of B (one per
        row), so that a row's noise does not depend on which other rows share its batch.
        """
        from value_dit import hl_gauss_decode

        with low_precision_autocast(self.video, current_latents.device.type):
            B, S, h, dev = current_latents.shape[0], samples, self.chunk, current_latents.device
            cache = self.prefill(current_latents, context, generator)
            ctx = context.repeat_interleave(S, 0)
            prefix = prefix_value.float().to(dev).repeat_interleave(S, 0)[:, None]

            def run(chunk_in, s):
                z, e, e0, ctxu = self.value.embed(torch.cat([prefix, chunk_in], 1), torch.cat(
                    [torch.zeros_like(prefix), torch.full_like(chunk_in, 1000.0 * s)], 1), ctx, self.video.cfg.text_len)
                for ub, (k, v) in zip(self.value.blocks, cache):
                    z = ub.finish(z, attend_cached(*ub.qkv(z, e0, None), k, v), e0, ctxu)
                return self.value.chunk_out(z, e)

            head = self.value.cfg.head
            if head == "flow":
                eps = randn_rows((B, S * h), generator, dev).view(B * S, h)
                y = flow.euler_sample(run, eps, steps)
            elif head == "regression":
                y = run(torch.zeros(B * S, h, device=dev), 0.0)
            else:
                y = hl_gauss_decode(run(torch.zeros(B * S, h, device=dev), 0.0))
            return y.view(B, S, h)


def randn_rows(shape, generator, device):
    """Normal noise of `shape` [B, ...]: from one generator, or row b from generator[b] when given a list."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generator])
    return torch.randn(shape, generator=generator, device=device)


def attend_cached(q, k, v, k_vid, v_vid):
    """Value-only attention for S noise samples per trajectory: queries q [B*S, n, H, D] see their own value
    keys k, v [B*S, n, H, D] and the trajectory's cached current-video K/V [B, n_cur, H, D], which the S samples
    share instead of each holding a copy. Value queries are few, so plain fp32 softmax attention is cheap."""
    B, S = k_vid.shape[0], q.shape[0] // k_vid.shape[0]
    per_traj = lambda t: t.unflatten(0, (B, S)).float()  # noqa: E731
    q, k, v = per_traj(q) * q.shape[-1] ** -0.5, per_traj(k), per_traj(v)
    p = torch.cat([torch.einsum("bsqhd,bkhd->bshqk", q, k_vid.float()),
                   torch.einsum("bsqhd,bskhd->bshqk", q, k)], -1).softmax(-1)
    n = k_vid.shape[1]
    o = torch.einsum("bshqk,bkhd->bsqhd", p[..., :n], v_vid.float()) + torch.einsum("bshqk,bskhd->bsqhd", p[..., n:], v)
    return o.flatten(0, 1).to(k_vid.dtype)


def wvm_configs(name, head="flow"):
    """(video, value) configs by size name: "full" is the paper's 5.0B + 0.7B model."""
    from value_dit import VALUE_CONFIGS

    video, value = {"full": ("ti2v-5b", "paper"), "tiny": ("tiny", "tiny"), "small": ("small", "small"), "mid": ("mid", "mid")}[name]
    return WAN_CONFIGS[video], replace(VALUE_CONFIGS[value], head=head)


def save_wvm(model, path, run=None):
    """A WVM checkpoint: one safetensors file, configs and mask in its metadata; written atomically.

    run: what scoring needs to see frames as training did (train.py: resolution, fps, the VAE's and the text
    encoder's ids), kept in the metadata too and returned by load_wvm as model.run."""
    from safetensors.torch import save_file

    meta = {"video_cfg": json.dumps(config_dict(model.video.cfg)), "value_cfg": json.dumps(config_dict(model.value.cfg)),
            "mask": model.mask, "run": json.dumps(run or {})}
    tmp = f"{path}.tmp"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp, metadata=meta)
    os.replace(tmp, path)


def load_wvm(path, dtype=None, device=None, **kw):
    """Load a WVM checkpoint written by save_wvm (kw: WVM options such as video_loss_weight)."""
    from safetensors import safe_open

    from value_dit import ValueConfig

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        video_cfg = WanConfig(**{k: tuple(v) if k == "patch_size" else v for k, v in json.loads(meta["video_cfg"]).items()})
        value_cfg = ValueConfig(**json.loads(meta["value_cfg"]))
        run = json.loads(meta.get("run", "{}"))
    except Exception as e:
        raise CheckpointError(f"{path}: not a WVM checkpoint ({type(e).__name__}: {e})") from None
    with torch.device("meta"):
        model = WVM(video_cfg, value_cfg, mask=meta.get("mask", "causal"), **kw)
    model = load_checkpoint_into(model, path, [path], dtype=dtype, device=device, keep_fp32=FP32_PARAMS if dtype else None)
    model.run = run  # empty for checkpoints saved before runs recorded it
    return model


def wvm_from_wan(wan_path, value_cfg, dtype=None, device=None, **kw):
    """WVM whose video stream is a pretrained Wan2.2 DiT and whose value stream is fresh."""
    video = load_wan_dit(wan_path, dtype=dtype, device=device)
    with torch.device("meta"):
        model = WVM(video.cfg, value_cfg, **kw)
    model.video = video
    with torch.device(device or "cpu"):
        model.value = type(model.value)(value_cfg)
    return model

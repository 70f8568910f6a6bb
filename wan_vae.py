"""The Wan2.2 VAE (48 latent channels, 4x16x16 compression): WanVAEConfig, WanVAE, load_wan_vae, save_wan_vae.

Parameter names are the official Wan2.2 ones, so `Wan2.2_VAE.pth` loads without renaming; diffusers
`AutoencoderKLWan` checkpoints are renamed on the way in (`vae_key`). DESIGN.md lists the Wan2.2 facts
this file relies on.

The VAE is causal in time and runs chunk by chunk exactly like the reference: encode takes frame 0
alone, then groups of 4 frames; decode takes one latent frame at a time. Every temporal conv keeps
the last input frames of the previous chunk in a CausalCache, so activation memory depends on the
chunk, not on the video length, and a video can be streamed through several calls.

WVM never trains the VAE (it is frozen), so encode/decode run without autograd. `train_vae` fits a small one
to a corpus's video where no pretrained weights can be had (the CPU demo), through the same encoder and decoder.
"""
import argparse
import hashlib
import json
import math
import numbers
import os
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from checkpoint import (CheckpointError, TensorFile, check_sizes, checkpoint_files, load_into, out_file_problem,
                        read_metadata, sampled_digest, save_safetensors)
from data import ClipDataset, DataError, read_dataset

# Per-channel statistics of the released VAE's latents (its config in diffusers and the official code):
# encode returns (mu - mean) / std.
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

PATCH = 2  # the video is pixel-unshuffled 2x2 (3 -> 12 channels) before the encoder


@dataclass
class WanVAEConfig:
    z_dim: int = 48
    dim: int = 160  # encoder base width (diffusers base_dim)
    dec_dim: int = 256  # decoder base width (diffusers decoder_base_dim)
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level; decoder levels have one more
    temporal_downsample: tuple = (False, True, True)  # spelled "temperal_downsample" by Wan and diffusers
    latents_mean: tuple = field(default=WAN22_LATENTS_MEAN, repr=False)
    latents_std: tuple = field(default=WAN22_LATENTS_STD, repr=False)

    def __post_init__(self):
        self.dim_mult, self.temporal_downsample = tuple(self.dim_mult), tuple(self.temporal_downsample)
        self.latents_mean, self.latents_std = tuple(self.latents_mean), tuple(self.latents_std)
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temporal_downsample {self.temporal_downsample}: expected one flag per downsampling "
                             f"level ({len(self.dim_mult) - 1} for dim_mult {self.dim_mult})")
        check_sizes(self, ("z_dim", "dim", "dec_dim", "dim_mult", "num_res_blocks"))
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std have {len(self.latents_mean)}/{len(self.latents_std)} values, "
                             f"expected z_dim = {self.z_dim}")
        if not all(isinstance(s, numbers.Real) and 0 < s < math.inf for s in self.latents_std):  # z / std: inf, NaN
            raise ValueError(f"latents_std {self.latents_std}: every one must be a positive number")

    @property
    def frames_per_latent(self):  # 4: after the first frame, every 4 frames make one latent frame
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self):  # 16: the 2x2 patchify, then one 2x downsample per level but the last
        return PATCH * 2 ** (len(self.dim_mult) - 1)


VAE_CONFIGS = {
    "wan2.2": WanVAEConfig(),  # Wan2.2-TI2V-5B: 704,688,668 params
    "mid": WanVAEConfig(dim=64, dec_dim=96),  # benchmarks: big enough that convs dominate
    "tiny": WanVAEConfig(dim=16, dec_dim=16),  # CPU tests and smoke runs: same structure, same 48 latent channels
}


# ----------------------------------------------------------------------------------------------
# causal building blocks

class CausalCache:
    """What one causal encode (or decode) carries from a chunk to the next.

    frames[conv]: the last input frames of every temporal conv, its history for the next chunk.
    first: no chunk processed yet; the first frame is an image and some layers treat it apart.
    Passing the same cache to successive encode (or decode) calls streams a video in pieces.
    """

    def __init__(self):
        self.frames = {}
        self.first = True
        self.mode = None  # "encode" or "decode": the two directions need separate caches


class CausalConv3d(nn.Conv3d):
    """Conv3d that only looks back in time: all temporal padding goes in front.

    The frames in front are the previous chunk's last inputs (from the cache), zero frames at the
    start of the video. Spatial padding is symmetric and done by the conv itself (no padded copy).
    """

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(cin, cout, kernel, stride, padding=(0, ph, pw))
        self.past = 2 * pt  # frames of history each output needs

    def forward(self, x, cache=None):
        if self.past:
            prev = cache.frames.get(self) if cache is not None else None
            n_prev = 0 if prev is None else prev.shape[2]
            if prev is None:
                x = F.pad(x, (0, 0, 0, 0, self.past, 0))
            else:  # after a 1-frame first chunk the history is 1 frame: zeros make up the rest
                zeros = x.new_zeros(*x.shape[:2], self.past - n_prev, *x.shape[3:])
                x = torch.cat([zeros, prev, x], 2)
            if cache is not None:  # the last real frames (not the zeros), copied so the chunk itself can be freed
                cache.frames[self] = x[:, :, max(self.past - n_prev, x.shape[2] - self.past):].clone()
        return super().forward(x)


class RMSNorm(nn.Module):
    """Wan's RMS_norm: x / ||x|| over channels * sqrt(C) * gamma, computed in fp32 (eps 1e-12 on the norm)."""

    def __init__(self, dim, images=False):
        super().__init__()
        # gamma is [C, 1, 1, 1] for video tensors, [C, 1, 1] in the attention block (per-frame images)
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x):
        # square-sum-sqrt, not linalg.vector_norm: ~5x faster on CPU for this strided channel reduction
        norm = x.float().square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
        y = x / norm  # fp32 by type promotion
        return y.mul_(self.gamma.float() * self.gamma.shape[0] ** 0.5).to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        # a Sequential only so the parameter names match the official ones (residual.0/.2/.3/.6);
        # forward unrolls it to pass the cache. Index 5 was Dropout(0): nothing to do at inference.
        self.residual = nn.Sequential(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
                                      RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, cache):
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        # one statement per step: rebinding h frees each intermediate as soon as the next one exists
        h = F.silu(norm1(x), inplace=True)
        h = conv1(h, cache)
        h = F.silu(norm2(h), inplace=True)
        h = conv2(h, cache)
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention among the pixels of each frame (only at the bottleneck)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x, cache=None):
        B, C, T, H, W = x.shape
        y = self.to_qkv(self.norm(rearrange(x, "b c t h w -> (b t) c h w")))
        q, k, v = rearrange(y, "n (three c) h w -> three n 1 (h w) c", three=3)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=H))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=B)


class Resample(nn.Module):
    """2x spatial down/up-sampling of every frame, with a 2x temporal one (`time_conv`) for the 3d modes."""

    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        if mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        elif mode in ("upsample2d", "upsample3d"):
            # nearest-exact only copies values: exact in bf16 too (the reference upsamples in fp32)
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim, 3, padding=1))
        else:
            raise ValueError(f"Resample mode {mode!r}")
        if mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        if mode == "upsample3d":  # 2 output frames per input frame, as 2 x dim channels
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x, cache):
        if self.mode == "upsample3d":
            x = self.time_up(x, cache)
        T = x.shape[2]
        # the 2D ops run on the frames as one batch: 2D convs get oneDNN kernels where 3D ones fall back to im2col
        x = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        x = rearrange(x, "(b t) c h w -> b c t h w", t=T).contiguous()
        return self.time_down(x, cache) if self.mode == "downsample3d" else x

    def time_down(self, x, cache):
        if cache.first:  # frame 0 stays one latent frame; it is the history of the next chunk
            cache.frames[self] = x[:, :, -1:].clone()
            return x
        prev = cache.frames[self]
        cache.frames[self] = x[:, :, -1:].clone()
        return self.time_conv(torch.cat([prev, x], 2))  # stride 2, no padding: [last, 4 frames] -> 2 frames

    def time_up(self, x, cache):
        if cache.first:  # the first latent frame decodes to a single frame
            return x
        # no cache entry yet on the second chunk: zeros as history, the first frame does not count (reference "Rep")
        x = self.time_conv(x, cache)
        return rearrange(x, "b (two c) t h w -> b c (t two) h w", two=2)


def avg_down(x, cout, ft, fs):
    """Parameter-free shortcut of a down block: (ft, fs, fs) neighbourhoods to channels, channel groups averaged."""
    if ft == fs == 1 and x.shape[1] == cout:
        return x
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))  # causal: a lone first frame is averaged with a zero frame
    x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=ft, fh=fs, fw=fs)
    return x.unflatten(1, (cout, -1)).mean(2)


def dup_up(x, cout, ft, fs, first):
    """Parameter-free shortcut of an up block: channels repeated, then spread to (ft, fs, fs) neighbourhoods."""
    x = x.repeat_interleave(cout * ft * fs * fs // x.shape[1], dim=1)
    x = rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=ft, fh=fs, fw=fs)
    return x[:, :, ft - 1:] if first else x  # the first latent frame gives one frame, like time_up


class DownBlock(nn.Module):
    """Official Down_ResidualBlock: residual blocks + optional downsample, plus the avg_down shortcut."""

    def __init__(self, cin, cout, num_res_blocks, temporal, spatial):
        super().__init__()
        self.cout, self.ft, self.fs = cout, 2 if temporal else 1, 2 if spatial else 1
        layers = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res_blocks)]
        if spatial:
            layers.append(Resample(cout, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)

    def forward(self, x, cache):
        shortcut = avg_down(x, self.cout, self.ft, self.fs)
        for layer in self.downsamples:
            x = layer(x, cache)
        return x.add_(shortcut)


class UpBlock(nn.Module):
    """Official Up_ResidualBlock: residual blocks + optional upsample; the dup_up shortcut only if it upsamples."""

    def __init__(self, cin, cout, num_res_blocks, temporal, spatial):
        super().__init__()
        self.cout, self.ft, self.fs, self.spatial = cout, 2 if temporal else 1, 2, spatial
        layers = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res_blocks)]
        if spatial:
            layers.append(Resample(cout, "upsample3d" if temporal else "upsample2d"))
        self.upsamples = nn.ModuleList(layers)

    def forward(self, x, cache):
        h = x
        for layer in self.upsamples:
            h = layer(h, cache)
        return h.add_(dup_up(x, self.cout, self.ft, self.fs, cache.first)) if self.spatial else h


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n = len(cfg.dim_mult)
        dims = [cfg.dim * m for m in (1,) + cfg.dim_mult]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList(
            DownBlock(dims[i], dims[i + 1], cfg.num_res_blocks, temporal=i < n - 1 and cfg.temporal_downsample[i],
                      spatial=i < n - 1) for i in range(n))
        c = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c)])
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x, cache):
        """Patchified frames [B, 12, f, H/2, W/2] -> moments [B, 2 z_dim, f', H/16, W/16] of one chunk."""
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        x = F.silu(self.head[0](x), inplace=True)
        return self.head[2](x, cache)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n, m = len(cfg.dim_mult), cfg.dim_mult
        dims = [cfg.dec_dim * u for u in (m[-1],) + m[::-1]]
        temporal = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        self.upsamples = nn.ModuleList(
            UpBlock(dims[i], dims[i + 1], cfg.num_res_blocks + 1, temporal=i < n - 1 and temporal[i],
                    spatial=i < n - 1) for i in range(n))
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3 * PATCH * PATCH, 3, padding=1))

    def forward(self, x, cache):
        """One latent frame [B, z_dim, 1, h, w] -> patchified frames [B, 12, 4 (1 if first), 8h, 8w]."""
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        x = F.silu(self.head[0](x), inplace=True)
        return self.head[2](x, cache)


def patchify(x):
    # channel index c*4 + r*2 + q with r the width offset, q the height offset (official einops pattern)
    return rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=PATCH, r=PATCH)


def unpatchify(x):
    return rearrange(x, "b (c r q) f h w -> b c f (h q) (w r)", q=PATCH, r=PATCH)


# ----------------------------------------------------------------------------------------------
# the VAE

class WanVAE(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.cfg = cfg = cfg or WanVAEConfig()
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # -> mean and log-variance (the latter unused)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)

    @property
    def dtype(self):
        return self.conv2.weight.dtype

    def latent_stats(self):
        """mean and 1/std [1, z, 1, 1, 1] in fp32, made on the fly (no buffers: the model is built on meta)."""
        dev = self.conv2.weight.device
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.cfg.latents_std, dtype=torch.float32, device=dev).view(1, -1, 1, 1, 1)
        return mean, inv_std

    @torch.no_grad()
    def encode(self, video, cache=None):
        """video [B, 3, F, H, W] in [-1, 1] -> normalized latent mean [B, z, 1 + (F-1)/4, H/16, W/16] (fp32).

        F = 1 + 4k, H and W multiples of 16. Frame 0 is encoded alone, then groups of 4, so the latents
        of a prefix of the video do not depend on what follows. To stream a video, pass the same
        CausalCache to every call: 1 + 4k frames the first time, 4k frames afterwards.
        """
        return self.encode_with_grad(video, cache)

    def encode_with_grad(self, video, cache=None):
        """encode, differentiable (train_vae)."""
        cache = _start(cache, "encode")
        _check_video(video, cache.first, self.cfg)
        z, n = self.cfg.z_dim, self.cfg.frames_per_latent
        chunks = [video[:, :, :1]] if cache.first else []
        rest = video[:, :, len(chunks):]
        chunks += list(rest.split(n, dim=2)) if rest.shape[2] else []
        weight, bias = self.conv1.weight[:z], self.conv1.bias[:z]  # the mean half of the moments; log-variance unused
        mean, inv_std = self.latent_stats()
        out = []
        for chunk in chunks:  # chunks move to the model's device one at a time: the video may stay on the CPU
            h = self.encoder(patchify(chunk.to(self.conv2.weight.device, self.dtype)), cache)
            cache.first = False
            out.append((F.conv3d(h, weight, bias).float() - mean) * inv_std)
        return torch.cat(out, 2)

    @torch.no_grad()
    def decode(self, z, cache=None):
        """Normalized latents [B, z, T, h, w] -> frames [B, 3, 1 + 4(T-1), 16h, 16w] clamped to [-1, 1] (fp32).

        One latent frame at a time; pass the same CausalCache to stream (later calls give 4 frames per
        latent frame).
        """
        return self.decode_with_grad(z, cache).clamp_(-1, 1)

    def decode_with_grad(self, z, cache=None):
        """decode, differentiable and unclamped (train_vae)."""
        cache = _start(cache, "decode")
        _check_latents(z, self.cfg)
        B, _, T, h, w = z.shape
        n, s = self.cfg.frames_per_latent, self.cfg.spatial_factor
        dev = self.conv2.weight.device
        out = torch.empty(B, 3, n * T - (n - 1) * cache.first, h * s, w * s, device=dev)
        mean, inv_std = self.latent_stats()
        z = (z.to(dev).float() / inv_std + mean).to(self.dtype)  # as the reference: divide by the stored 1/std
        i = 0
        for t in range(T):
            x = unpatchify(self.decoder(self.conv2(z[:, :, t:t + 1]), cache))
            cache.first = False
            out[:, :, i:i + x.shape[2]] = x
            i += x.shape[2]
        return out


def _start(cache, mode):
    cache = CausalCache() if cache is None else cache
    if cache.mode not in (None, mode):
        raise ValueError(f"this CausalCache was used to {cache.mode}; use a fresh one to {mode}")
    cache.mode = mode
    return cache


def _check_video(video, first, cfg):
    n, s = cfg.frames_per_latent, cfg.spatial_factor
    if not torch.is_tensor(video) or video.dim() != 5 or video.shape[1] != 3 or video.shape[0] == 0:
        shape = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
        raise ValueError(f"video {shape}: expected [B, 3, F, H, W] (RGB in [-1, 1], B >= 1)")
    if not video.is_floating_point():
        raise ValueError(f"video dtype {video.dtype}: expected floats in [-1, 1] (uint8 frames: x / 127.5 - 1)")
    F_, H, W = video.shape[2:]
    if first and (F_ == 0 or (F_ - 1) % n):
        raise ValueError(f"video has {F_} frames: expected 1 + {n}k (1, {1 + n}, {1 + 2 * n}, ...), the VAE "
                         f"encodes frame 0 alone, then groups of {n}")
    if not first and (F_ == 0 or F_ % n):
        raise ValueError(f"video has {F_} frames: a streamed encode continues with a multiple of {n} frames")
    if H % s or W % s or H == 0 or W == 0:
        raise ValueError(f"video is {H}x{W} (HxW): height and width must be multiples of {s}")
    lo, hi = torch.aminmax(video)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise ValueError("video contains NaN or inf values")
    if lo < -2 or hi > 2:  # far outside [-1, 1]: most likely 0..255 pixel values
        raise ValueError(f"video values span [{lo.item():.3g}, {hi.item():.3g}]: expected [-1, 1]")
    if lo >= 0 and hi - lo > 0.5:  # frames with dark and bright parts, none below 0: most likely scaled to [0, 1]
        warnings.warn(f"video values span [{lo.item():.3g}, {hi.item():.3g}], none below 0: frames scaled to [0, 1] "
                      f"(x * 2 - 1 gives the [-1, 1] the VAE expects)?", stacklevel=3)


def _check_latents(z, cfg):
    if not torch.is_tensor(z) or z.dim() != 5 or z.shape[1] != cfg.z_dim or z.shape[2] == 0:
        shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
        raise ValueError(f"latents {shape}: expected [B, {cfg.z_dim}, T >= 1, h, w]")
    if not torch.isfinite(z).all():
        raise ValueError("latents contain NaN or inf values")


# ----------------------------------------------------------------------------------------------
# checkpoints: official Wan2.2_VAE.pth names, diffusers AutoencoderKLWan names

def vae_key(name, num_res_blocks=2):
    """Official Wan2.2 VAE name of a tensor given under official or diffusers names (convert_vae_22, inverted).

    num_res_blocks places the diffusers `downsampler` / `upsampler` after the residual blocks of a level.
    """
    n = num_res_blocks
    rules = (
        # residual-block internals first, while "resnets." still marks them (conv1 means more at the top)
        (r"(resnets\.\d+\.)norm1\.", r"\1residual.0."),
        (r"(resnets\.\d+\.)conv1\.", r"\1residual.2."),
        (r"(resnets\.\d+\.)norm2\.", r"\1residual.3."),
        (r"(resnets\.\d+\.)conv2\.", r"\1residual.6."),
        (r"(resnets\.\d+\.)conv_shortcut\.", r"\1shortcut."),
        (r"^quant_conv\.", "conv1."),
        (r"^post_quant_conv\.", "conv2."),
        (r"\.conv_in\.", ".conv1."),
        (r"\.mid_block\.resnets\.0\.", ".middle.0."),
        (r"\.mid_block\.attentions\.0\.", ".middle.1."),
        (r"\.mid_block\.resnets\.1\.", ".middle.2."),
        (r"\.down_blocks\.(\d+)\.resnets\.", r".downsamples.\1.downsamples."),
        (r"\.down_blocks\.(\d+)\.downsampler\.", rf".downsamples.\1.downsamples.{n}."),
        (r"\.up_blocks\.(\d+)\.resnets\.", r".upsamples.\1.upsamples."),
        (r"\.up_blocks\.(\d+)\.upsampler\.", rf".upsamples.\1.upsamples.{n + 1}."),
        (r"\.norm_out\.", ".head.0."),
        (r"\.conv_out\.", ".head.2."),
    )
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def _count_res_blocks(names):
    """Residual blocks per encoder level, counted in official or diffusers names."""
    pat = re.compile(r"encoder\.(?:down_blocks\.0\.resnets|downsamples\.0\.downsamples)\.(\d+)\."
                     r"(?:norm1|residual\.0)\.gamma$")
    return len({m.group(1) for m in map(pat.match, names) if m})


def _is_vae_config(config):
    return bool(config) and "z_dim" in config and "base_dim" in config  # not the DiT's config.json next to the .pth


def vae_config_from(shapes, config=None):
    """WanVAEConfig from a diffusers config.json, else from the tensor shapes (official names)."""
    for key in ("encoder.conv1.weight", "conv2.weight", "decoder.head.2.weight"):
        if key not in shapes:
            raise CheckpointError(f"no {key}: not a Wan VAE checkpoint")
    if shapes["encoder.conv1.weight"][1] != 3 * PATCH * PATCH:
        raise CheckpointError(f"encoder.conv1 takes {shapes['encoder.conv1.weight'][1]} channels, not 12: "
                              "only the Wan2.2 VAE (2x2-patchified RGB) is supported, not the Wan2.1 one")
    if _is_vae_config(config):
        if not config.get("is_residual", False) or config.get("patch_size") != PATCH:
            raise CheckpointError("config.json: is_residual must be true and patch_size 2 (the Wan2.2 VAE)")
        c = dict(z_dim=config["z_dim"], dim=config["base_dim"],
                 dec_dim=config.get("decoder_base_dim") or config["base_dim"])
        for ours, theirs in (("dim_mult", "dim_mult"), ("num_res_blocks", "num_res_blocks"),
                             ("temporal_downsample", "temperal_downsample"), ("latents_mean", "latents_mean"),
                             ("latents_std", "latents_std")):
            if config.get(theirs) is not None:
                c[ours] = config[theirs]
        return WanVAEConfig(**c)
    dim, z_dim = shapes["encoder.conv1.weight"][0], shapes["conv2.weight"][0]
    n_res = _count_res_blocks(shapes)
    levels = len({k.split(".")[2] for k in shapes if k.startswith("encoder.downsamples.")})
    try:
        mult = tuple(shapes[f"encoder.downsamples.{i}.downsamples.0.residual.2.weight"][0] // dim
                     for i in range(levels))
    except KeyError as e:
        raise CheckpointError(f"cannot infer the VAE widths: no {e.args[0]}") from None
    temporal = tuple(f"encoder.downsamples.{i}.downsamples.{n_res}.time_conv.weight" in shapes
                     for i in range(levels - 1))
    up = [f"decoder.upsamples.{levels - 2 - i}.upsamples.{n_res + 1}.time_conv.weight" for i in range(levels - 1)]
    for i, key in enumerate(up):  # the decoder mirrors the encoder: a time_conv on one side only is a missing key
        if temporal[i] != (key in shapes):
            missing = key if temporal[i] else f"encoder.downsamples.{i}.downsamples.{n_res}.time_conv.weight"
            raise CheckpointError(f"no {missing} (official name), which its counterpart on the other side implies")
    return WanVAEConfig(z_dim=z_dim, dim=dim, dec_dim=shapes["decoder.head.2.weight"][1] // mult[0], dim_mult=mult,
                        num_res_blocks=n_res, temporal_downsample=temporal)


def load_wan_vae(path, dtype=None, device=None, cfg=None):
    """Load a Wan2.2 VAE without a second copy of the weights in memory.

    path: the official Wan2.2_VAE.pth (or a .safetensors with official names), the official model
    folder holding it, a diffusers `vae/` folder, or a diffusers pipeline folder containing `vae/`.
    The config comes from the diffusers config.json or the tensor shapes unless cfg is given.
    dtype casts the weights (e.g. torch.bfloat16); the norms still compute in fp32. The per-channel latent
    statistics come from the file (save_wan_vae) or config.json; a file without them (the official .pth)
    gets Wan2.2's published ones, and stderr says so.
    """
    if os.path.isdir(os.path.join(path, "vae")):  # a diffusers pipeline folder
        path = os.path.join(path, "vae")
    elif os.path.isfile(os.path.join(path, "Wan2.2_VAE.pth")):  # the official model folder (DiT shards too)
        path = os.path.join(path, "Wan2.2_VAE.pth")
    files, config = checkpoint_files(path, "diffusion_pytorch_model")
    names = {}
    for f in files:
        names.update(TensorFile(f).shapes)
    if cfg is None and len(files) == 1 and files[0].endswith(".safetensors"):  # written by save_wan_vae
        saved = read_metadata(files[0]).get("wan_vae_config")
        try:
            cfg = WanVAEConfig(**json.loads(saved)) if saved else None
        except (ValueError, TypeError) as e:  # another tool's metadata, or a damaged one
            raise CheckpointError(f"{files[0]}: unreadable wan_vae_config metadata ({type(e).__name__}: {e})") from None
    config = config if _is_vae_config(config) else None  # e.g. the DiT's config.json next to Wan2.2_VAE.pth
    n_res = cfg.num_res_blocks if cfg else (config or {}).get("num_res_blocks") or _count_res_blocks(names)
    if type(n_res) is not int:  # it names tensors before the config is checked
        raise CheckpointError(f"{path}: num_res_blocks {n_res!r}: must be a positive whole number")
    rename = lambda k: vae_key(k, n_res)  # noqa: E731
    if cfg is None and not (config or {}).get("latents_mean"):
        print(f"{path}: no latent statistics in the file or a config.json; using Wan2.2's published per-channel "
              "mean and std (right for the released Wan2.2 VAE only)", file=sys.stderr)
    try:
        cfg = cfg or vae_config_from({rename(k): v for k, v in names.items()}, config)
    except (CheckpointError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    with torch.device("meta"):
        model = WanVAE(cfg)
    model = load_into(model, path, files, rename, dtype, device).eval()
    kinds = sorted({str(t.dtype) for t in model.state_dict().values() if t.is_floating_point()})
    if len(kinds) > 1:  # a conv's input would meet another dtype's weights: an error that names no file
        print(f"{path}: tensors of several float dtypes ({', '.join(kinds)}); loaded as float32", file=sys.stderr)
        model.float()
    return model


def save_wan_vae(vae, path):
    """Weights (official names) + the config (latent statistics included) in the safetensors metadata, so
    load_wan_vae restores both; written to a temporary name, then put in place. Never over an existing file (one
    made while this VAE was made, too): the models and latent caches made with that one would lose it for good."""
    save_safetensors(vae.state_dict(), path, {"wan_vae_config": json.dumps(asdict(vae.cfg))}, replace=False)


@torch.no_grad()
def calibrate_latents(vae, clips):
    """The VAE with per-channel latent mean/std measured on `clips` [B, 3, F, H, W].

    Wan2.2's 48 constants were measured on its trained VAE's latents; a randomly initialized VAE (the
    CPU demo has no weights) has latents of a very different scale and offset, whose per-clip variation
    is a small fraction of the total: measuring its own constants puts that variation back at unit scale.
    """
    raw = WanVAE(replace(vae.cfg, latents_mean=(0.0,) * vae.cfg.z_dim, latents_std=(1.0,) * vae.cfg.z_dim))
    raw.load_state_dict(vae.state_dict(), assign=True)
    z = raw.encode(clips).transpose(0, 1).flatten(1).double()  # [z, everything else]
    vae.cfg = replace(vae.cfg, latents_mean=tuple(z.mean(1).tolist()), latents_std=tuple(z.std(1).clamp_min(1e-6).tolist()))
    return vae


# ----------------------------------------------------------------------------------------------
# what identifies a VAE (the latent cache's folder, the run record)

def vae_fingerprint(vae):
    """A short id of a loaded VAE: config, weight dtype and a few of its tensors (cheap, not all 2.8 GB)."""
    h = hashlib.sha1(repr(sorted(asdict(vae.cfg).items())).encode())
    h.update(str(vae.dtype).encode())
    for t in (vae.conv1.weight, vae.conv2.weight, vae.encoder.conv1.bias, vae.decoder.head[2].bias):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def vae_ids(vae):
    """What a run, an exported prior and a latent cache record of their VAE: {"vae": vae_fingerprint (the id caches
    and models made before keep), "vae_weights": checkpoint.sampled_digest of every weight (a VAE fine-tuned in its
    inner layers alone shares the id, and its latents would pass as the other's)}."""
    return {"vae": vae_fingerprint(vae), "vae_weights": sampled_digest(vae.parameters())}


def other_vae(recorded, ids):
    """The first of the VAE ids in `recorded` (a run's record, a prior's) that is not `ids`' (vae_ids), or None. An
    id not recorded is not compared: records made before 2026-12-08 lack the digest."""
    return next((recorded[k] for k in ids if recorded.get(k) and recorded[k] != ids[k]), None)


# ----------------------------------------------------------------------------------------------
# a stand-in for Wan2.2_VAE.pth where no weights can be downloaded (the CPU demo)

def random_vae(clips, name="tiny", seed=0):
    """A fixed random Wan2.2 VAE (VAE_CONFIGS[name]) with its latent statistics measured on clips [B, 3, F, H, W]."""
    torch.manual_seed(seed)
    return calibrate_latents(WanVAE(VAE_CONFIGS[name]).eval(), clips)


def reconstruct(vae, video, noise=0.0):
    """video [B, 3, 1 + 4k, H, W] -> (reconstruction, latent means), differentiable: encode, then decode with
    Gaussian noise of std `noise` added to the latents (the bottleneck of a VAE at a fixed variance), unclamped."""
    z = vae.encode_with_grad(video)
    return vae.decode_with_grad(z + noise * torch.randn_like(z) if noise else z), z


def train_vae(name, dataset, steps, batch=16, lr=1e-3, noise=0.1, l2=1e-3, seed=0):
    """A VAE_CONFIGS[name] VAE fitted to reconstruct 5-frame clips (o_{t-4} .. o_t, what scoring encodes) of a
    ClipDataset's video, half of them mirrored; then its latent statistics measured on 256 clips.

    A stand-in for Wan2.2's pretrained VAE where no weights can be downloaded, trained in minutes on a CPU: mean
    squared error in [-1, 1], with latent noise (`noise`) and a small L2 pull on the latents (`l2`) in place of the
    KL term; AdamW, constant lr. At the demo's scale (50 steps) a linear probe of progress transfers better from its
    latents than from a random VAE's, and WVM does worse on them (docs/results.md).
    """
    torch.manual_seed(seed)
    cfg = replace(VAE_CONFIGS[name], latents_mean=(0.0,) * VAE_CONFIGS[name].z_dim,
                  latents_std=(1.0,) * VAE_CONFIGS[name].z_dim)
    vae = WanVAE(cfg).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(dataset)
    bar = tqdm(range(steps), desc="vae", dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(n, (batch,), generator=gen).tolist()
        video = torch.stack([dataset[i]["frames"][:, :5] for i in idx])
        flip = torch.rand(batch, generator=gen) < 0.5
        video[flip] = video[flip].flip(-1)
        rec, z = reconstruct(vae, video, noise)
        mse = F.mse_loss(rec, video)
        loss = mse + l2 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    vae.eval()
    clips = torch.stack([dataset[i]["frames"][:, :5] for i in torch.randint(n, (256,), generator=gen).tolist()])
    return calibrate_latents(vae, clips)


def main(argv):
    """python wan_vae.py --random tiny --data DATASET --resolution 64 --out vae.safetensors
    python wan_vae.py --train tiny --data DATASET[,DATASET ...] --steps 50 --resolution 64 --out vae.safetensors"""
    p = argparse.ArgumentParser(description="Make the frozen VAE for runs without Wan2.2's weights (the CPU demo): a "
                                            "fixed random one, or one trained on a corpus's video. Every run that "
                                            "shares it (--vae) shares its latents (--latent_cache).")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--random", choices=sorted(VAE_CONFIGS), help="a random VAE of this size (tiny for the CPU demo)")
    kind.add_argument("--train", choices=sorted(VAE_CONFIGS), help="a VAE of this size trained on --data's video")
    p.add_argument("--data", "--calibrate", required=True,
                   help="comma-separated datasets: their clips set the latent statistics (and train the VAE)")
    p.add_argument("--resolution", type=int, default=64, help="frame size of the clips, as train.py --resolution")
    p.add_argument("--fps", type=float, default=2.0, help="frame rate of the clips, as train.py --fps")
    p.add_argument("--clips", type=int, default=64, help="clips that set a random VAE's latent statistics")
    p.add_argument("--steps", type=int, default=50, help="--train: steps of --batch clips")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if min(args.resolution, args.clips, args.steps, args.batch) < 1 or not args.fps > 0:
        p.error("--resolution, --clips, --steps and --batch must be at least 1, --fps positive")
    if problem := out_file_problem(args.out, "--out"):  # before the VAE is made, not after
        p.error(problem)
    if os.path.exists(args.out):  # (save_wan_vae checks again when it writes)
        p.error(f"--out {args.out}: exists; delete it first or choose another --out")
    try:
        episodes = [ep for path in args.data.split(",") for ep in read_dataset(path)]
        # training reads plain clips; a random VAE keeps the clips (rewinds and all) that always calibrated it
        plain = dict(rewind=0.0, plateau=0.0) if args.train else {}
        dataset = ClipDataset(episodes, fps=args.fps, size=args.resolution, seed=args.seed, **plain)
    except (DataError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if args.random:
        clips = torch.stack([dataset[i]["frames"] for i in range(args.clips)])
        vae, what = random_vae(clips, args.random, args.seed), f"random {args.random} VAE, latent statistics from " \
            f"{args.clips} clips of {args.data}"
    else:
        vae = train_vae(args.train, dataset, args.steps, args.batch, seed=args.seed)
        what = f"{args.train} VAE trained for {args.steps} steps of {args.batch} clips of {args.data}"
    try:
        save_wan_vae(vae, args.out)
    except CheckpointError as e:
        raise SystemExit(f"--out {e}") from None
    print(f"{args.out}: {what}")


if __name__ == "__main__":
    main(sys.argv[1:])

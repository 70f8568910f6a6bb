"""WVM: the Wan2.2 video DiT (model.py) and the value DiT (value_dit.py) joined by Mixture-of-Transformers attention.

    clip_latents     the clip -> latents step: 2h + 1 frames through the frozen VAE -> [current | future] latents
    WVM.forward      the paper's joint objective L = L_value + λ·L_video (λ = 1, Table A.1)
    WVM.flow_noise   the flow times and noise of a batch, each sample's from its own seed
    WVM.predict_values   inference: the video stream once (prefill), then one Euler step of the value stream
    save_wvm, load_wvm, wvm_from_wan, wvm_configs   checkpoints and sizes

Per layer both streams compute q/k/v, one attention runs over [current video | future video | value] under the
asymmetric mask (kernels/mot_attention.py: value tokens read the video, video tokens never read the values), and each
stream finishes its own block. So the video stream is exactly a Wan2.2 DiT whatever the value tokens hold, and, with
the block-causal video mask (ours; DESIGN.md), the values depend on the current latent alone.
"""
import functools
import inspect
import json
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import flow
from checkpoint import CheckpointError, load_into, read_metadata, save_safetensors
from kernels import mot_attention
from model import (FP32_PARAMS, WAN_CONFIGS, WanConfig, WanDiT, checkpointed, config_dict, load_wan_dit,
                   low_precision_autocast, read_wan_checkpoint)
from value_dit import VALUE_CONFIGS, ValueConfig, ValueDiT


def clip_latents(vae, clips, h):
    """The clip -> latents step. clips [B, 3, F, S, S] in [-1, 1]: the frames o_{t-h} .. o_{t+h} (F = 2h + 1, training)
    or o_{t-h} .. o_t (F = h + 1, scoring) -> latents [B, C, 2 or 1, S/16, S/16]: the current latent (frames
    t-h+1 .. t) and, in training, the future one (frames t+1 .. t+h).

    The causal VAE encodes the first frame alone, then groups of h = 4 frames into one latent frame each, so the clip
    becomes [prefix | current | future]. The prefix frame is there so that the h current frames make a group of
    their own; its latent is dropped (the prefix value v_{t-h} reaches the model as the value stream's prefix token).

    Clips led by one more frame, the episode's first o_0 (F = 2h + 2 or h + 2; train.py --first_frame, not in the
    paper), get its latent first, encoded alone as an image: [o_0 | current (| future)].
    """
    if h < 2:  # 1 + 2h frames and h + 2 (led by o_0) would be the same count
        raise ValueError(f"h = {h}: the value chunk needs at least 2 values")
    if vae.cfg.frames_per_latent != h:
        raise ValueError(f"the VAE makes one latent frame of {vae.cfg.frames_per_latent} frames, but the value chunk "
                         f"has h = {h} values: the current latent must cover exactly the chunk's frames")
    if clips.shape[2] not in (h + 1, 2 * h + 1, h + 2, 2 * h + 2):
        raise ValueError(f"clips {tuple(clips.shape)}: expected 1 + h = {h + 1} or 1 + 2h = {2 * h + 1} frames, "
                         f"or one more led by the episode's first frame")
    if clips.shape[2] in (h + 2, 2 * h + 2):
        return torch.cat([vae.encode(clips[:, :, :1]), clip_latents(vae, clips[:, :, 1:], h)], 2)
    return vae.encode(clips)[:, :, 1:]


class WVM(nn.Module):
    """Video DiT + value DiT with Mixture-of-Transformers attention.

    mask: "causal" (ours: current video tokens see only the current latent, future ones see both) or "full" (the
    video tokens of both latents see each other, as in Wan). video_loss_weight is λ; video_shift and value_shift
    shift the flow times drawn for training (flow.shift_sigma).
    """

    def __init__(self, video_cfg, value_cfg, mask="causal", video_loss_weight=1.0, video_shift=5.0, value_shift=1.0):
        super().__init__()
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
        self.checkpointing = False  # activation checkpointing per layer, per block in video_only (train.py: big models)
        self.video_only = False  # the world-model prior: train the video stream alone (train.py --stage=video)

    @property
    def chunk(self):
        """h: values per chunk, and frames per latent (clip_latents checks that the VAE agrees)."""
        return self.value.cfg.chunk

    def layer(self, vb, ub, x, z, vid, val, n_cur, n_fut):
        """One MoT layer: vid = (e0, context, rope) of the video stream, val = (e0, context) of the value stream."""
        qx, kx, vx = vb.qkv(x, vid[0], vid[2])
        qz, kz, vz = ub.qkv(z, val[0], None)
        o = mot_attention(torch.cat([qx, qz.to(qx.dtype)], 1), torch.cat([kx, kz.to(kx.dtype)], 1),
                          torch.cat([vx, vz.to(vx.dtype)], 1), n_cur, n_fut, self.mask == "causal")
        L = x.shape[1]
        return vb.finish(x, o[:, :L], vid[0], vid[1]), ub.finish(z, o[:, L:], val[0], val[1])

    def joint(self, x_in, t_vid, v_in, t_val, context, state=None):
        """Both streams through all layers: video latents [B, C, F, H, W] at per-frame times t_vid [B, F]
        (F = 2: current, future; 3: o_0, current, future) and value tokens v_in [B, 1+h] at times t_val [B, 1+h]
        (with their state features [B, 1+h, 3d], ValueDiT.state_input, or None) -> final video tokens, video time
        embedding e, final value tokens, value time embedding.
        """
        with low_precision_autocast(self.video, x_in.device.type):
            x, e, e0, ctx, rope = self.video.embed(x_in, t_vid, context)
            z, eu, e0u, ctxu = self.value.embed(v_in, t_val, context, self.video.cfg.text_len, state)
            n_fut = x.shape[1] // x_in.shape[2]  # the last latent frame is the future one
            n_cur = x.shape[1] - n_fut
            for vb, ub in zip(self.video.blocks, self.value.blocks):
                # FSDP (train.py's parallelize) makes a layer one unit, gathered for its call: vb.mot_layer
                layer = getattr(vb, "mot_layer", None) or functools.partial(self.layer, vb, ub)
                x, z = checkpointed(layer, x, z, (e0, ctx, rope), (e0u, ctxu), n_cur, n_fut, on=self.checkpointing)
            return x, e, z, eu

    def flow_noise(self, seeds, latent_shape):
        """The flow times and noise of a batch, sample b's drawn from its own seed seeds[b] [B] (so neither the batch it
        shares nor the number of processes changes them). latent_shape: (C, 2, H, W) of clip_latents.
        -> sigma_video [B] (shifted by video_shift), noise_video [B, C, 1, H, W], sigma_value [B], noise_value [B, h]."""
        out = {"sigma_video": [], "noise_video": [], "sigma_value": [], "noise_value": []}
        C, _, H, W = latent_shape
        for seed in seeds.tolist():
            g = torch.Generator().manual_seed(seed)
            out["sigma_video"].append(flow.sample_sigma(1, self.video_shift, g))
            out["noise_video"].append(torch.randn(C, 1, H, W, generator=g))
            out["sigma_value"].append(flow.sample_sigma(1, self.value_shift, g))
            out["noise_value"].append(torch.randn(self.chunk, generator=g))
        return {k: torch.cat(v) if k.startswith("sigma") else torch.stack(v) for k, v in out.items()}

    def forward(self, batch):
        """The training losses. batch:
            latents [B, C, 2, H, W]   clean current and future latent (clip_latents; [B, C, 3, H, W] led by o_0's)
            context [B, L, text_dim]  umT5 features of the instruction
            values [B, 1+h]           the prefix value v_{t-h} (randomized with probability p) and the h chunk targets
            sigma_video [B], noise_video [B, C, 1, H, W], sigma_value [B], noise_value [B, h]   (flow_noise)
            state [B, 1+h, d], start_state [B, d], state_keep [B]   optional: the robot's state (state_dim d > 0)
        -> {"loss", "loss_value", "loss_video", "value_out"}: the paper's joint objective
        loss = loss_value + λ·loss_video with λ = video_loss_weight (1 in Table A.1), both flow-matching MSEs on
        the velocity (flow.py's convention) for the flow head.
        """
        lat, values = batch["latents"].float(), batch["values"].float()
        B, C, F_, H, W = lat.shape
        if F_ not in (2, 3):
            raise ValueError(f"latents {tuple(lat.shape)}: expected the current and the future latent frame (led by "
                             f"the first frame's or not)")
        cur, fut = lat[:, :, :-1], lat[:, :, -1:]                              # [B, C, F-1 | 1, H, W]
        s_vid, eps_vid = batch["sigma_video"].float(), batch["noise_video"].float()
        # the current latent (and o_0's) is clean context at time 0 (as TI2V's first frame); the future one is noised
        x_in = torch.cat([cur, flow.add_noise(fut, eps_vid, s_vid)], 2)       # [B, C, F, H, W]
        t_vid = torch.cat([torch.zeros_like(s_vid)[:, None].expand(-1, F_ - 1), 1000 * s_vid[:, None]], 1)  # [B, F]
        if self.video_only:  # Wan's flow loss on the future latent given the clean current one, under the same mask
            v_fut = self.video(x_in, t_vid, batch["context"], future=1 if self.mask == "causal" else 0,
                               checkpointing=self.checkpointing)[:, :, -1:]
            loss_video = F.mse_loss(v_fut, flow.velocity(fut, eps_vid))
            return {"loss": loss_video, "loss_value": torch.zeros((), device=lat.device), "loss_video": loss_video}

        y = values[:, 1:]                                                      # [B, h] chunk targets
        eps_val = batch["noise_value"].float()
        chunk_in, t_chunk = self.value.chunk_input(y, batch["sigma_value"].float(), eps_val)
        v_in = torch.cat([values[:, :1], chunk_in], 1)                         # [B, 1+h]
        t_val = torch.cat([torch.zeros_like(t_chunk[:, :1]), t_chunk], 1)      # the prefix token is clean
        state = (self.value.state_input(batch["state"], batch["start_state"], batch.get("state_keep"))
                 if batch.get("state") is not None else None)
        x, e, z, eu = self.joint(x_in, t_vid, v_in, t_val, batch["context"], state)
        out = self.value.chunk_out(z, eu)                                      # [B, h] (HL-Gauss: [B, h, bins])
        loss_value = self.value.chunk_loss(out, y, eps_val)                    # the chunk tokens only, never the prefix
        loss_video = torch.zeros((), device=lat.device)
        if self.video_loss_weight:
            n_cur = x.shape[1] * (F_ - 1) // F_
            v_fut = self.video.unpatchify(self.video.head(x[:, n_cur:], e[:, -1:]), 1, H, W)  # [B, C, 1, H, W]
            loss_video = F.mse_loss(v_fut, flow.velocity(fut, eps_vid))
        return {"loss": loss_value + self.video_loss_weight * loss_video, "loss_value": loss_value,
                "loss_video": loss_video, "value_out": out.detach()}

    @torch.no_grad()
    def prefill(self, current, context, generator=None, zero_noise=False):
        """Per-layer K/V [B, n_cur, heads, head_dim] of the current video tokens (current [B, C, 1, H, W], or
        [B, C, 2, H, W] led by o_0's latent), computed once for every value query against them.

        Under the causal mask the current tokens see only themselves, so the future latent is not needed. Under the
        full mask they see it, and scoring has none: it is fed as pure noise (time 1000; zeros, the noise's mean, with
        zero_noise). Training under the full mask showed the current tokens a future latent noised at the sampled
        time instead (shift 5: more signal than noise, s < 0.5, in one sample of six), so its current tokens meet pure
        noise at scoring time only.
        """
        B = current.shape[0]
        t = torch.zeros(B, current.shape[2], device=current.device)
        x_in = current
        if self.mask == "full":
            shape, dev = current[:, :, :1].shape, current.device
            fut = torch.zeros(shape, device=dev) if zero_noise else randn_rows(shape, generator, dev)
            x_in = torch.cat([current, fut], 2)
            t = torch.cat([t, torch.full_like(t[:, :1], 1000.0)], 1)
        x, _, e0, ctx, rope = self.video.embed(x_in.float(), t, context)
        n_cur = x.shape[1] * current.shape[2] // x_in.shape[2]  # the tokens of the current latent frames
        cache = []
        for i, vb in enumerate(self.video.blocks):
            q, k, v = vb.qkv(x, e0, rope)
            cache.append((k[:, :n_cur], v[:, :n_cur]))
            if i + 1 < len(self.video.blocks):  # the last layer's output is not needed by the value stream
                x = vb.finish(x, mot_attention(q, k, v, n_cur, x.shape[1] - n_cur, self.mask == "causal"), e0, ctx)
        return cache

    @torch.no_grad()
    def predict_values(self, current_latents, context, prefix_value, steps=1, samples=1, generator=None, state=None,
                       start_state=None, zero_noise=False, guidance=None):
        """Value chunk [B, samples, h] for clean current latents [B, C, 1, H, W] (led by o_0's: [B, C, 2, H, W]) and
        prefix values [B]; with the robot's state [B, 1+h, d] at the prefix and current frames and start_state [B, d]
        at frame 0 for a model that reads it (None: the video alone).

        The video stream runs once (prefill); each Euler step and each noise sample runs only the
        value stream against the cached video K/V. generator: one for the batch, or a list of B (one per
        row), so that a row's noise does not depend on which other rows share its batch. zero_noise (not in the
        paper): the flow starts from the noise distribution's mean, 0, instead of a draw, so that a window has one
        value, the same for any seed (eval.py's default; docs/experiments.md, "Scoring from zero noise").
        guidance w (not in the paper; classifier-free guidance, Ho & Salimans 2022): the value stream's output is
        u + w (c - u), c given the instruction and u given the empty one (all-zero features, as train.py's
        --text_dropout trains it), both streams run for each; None is c alone, as w = 1 is.
        """
        B = current_latents.shape[0]
        if current_latents.dim() != 5 or current_latents.shape[2] not in (1, 2):
            raise ValueError(f"current latents {tuple(current_latents.shape)}: expected [B, C, 1, H, W] (or 2 frames, "
                             "led by o_0's)")
        if not torch.is_tensor(prefix_value) or prefix_value.shape != (B,) or context.shape[0] != B:
            raise ValueError(f"batch {B}: prefix_value must be [B] (got {getattr(prefix_value, 'shape', prefix_value)}) "
                             f"and context [B, L, D] (got {tuple(context.shape)})")
        if isinstance(generator, (list, tuple)) and len(generator) != B:
            raise ValueError(f"batch {B}: {len(generator)} generators, one per row needed")
        if state is not None and (start_state is None or state.dim() != 3 or state.shape[:2] != (B, 1 + self.chunk)
                                  or start_state.shape != (B, state.shape[2])):  # else one row's state fed them all
            raise ValueError(f"batch {B}: state must be [B, 1 + h = {1 + self.chunk}, d] and start_state [B, d] (got "
                             f"{tuple(state.shape)}, {getattr(start_state, 'shape', None)})")
        with low_precision_autocast(self.video, current_latents.device.type):
            S, h, dev = samples, self.chunk, current_latents.device
            gens = [] if guidance is None else [  # guided: the empty instruction's pass sees the same future noise
                g for g in (generator if isinstance(generator, (list, tuple)) else [generator]) if g is not None]
            before = [g.get_state() for g in gens]
            cache = self.prefill(current_latents, context, generator, zero_noise)
            ctx = context.repeat_interleave(S, 0)
            if guidance is not None:
                for g, state_g in zip(gens, before):
                    g.set_state(state_g)
                empty = torch.zeros_like(context)
                cache_u, ctx_u = self.prefill(current_latents, empty, generator, zero_noise), empty.repeat_interleave(S, 0)
            prefix = prefix_value.float().to(dev).repeat_interleave(S, 0)[:, None]
            st = (None if state is None else
                  self.value.state_input(state.to(dev), start_state.to(dev)).repeat_interleave(S, 0))

            def stream(chunk_in, s, ctx, cache):  # the value stream alone, its chunk tokens at flow time s
                z, e, e0, ctxu = self.value.embed(torch.cat([prefix, chunk_in], 1), torch.cat(
                    [torch.zeros_like(prefix), torch.full_like(chunk_in, 1000.0 * s)], 1), ctx, self.video.cfg.text_len, st)
                for ub, (k, v) in zip(self.value.blocks, cache):
                    z = ub.finish(z, attend_cached(*ub.qkv(z, e0, None), k, v), e0, ctxu)
                return self.value.chunk_out(z, e)

            def run(chunk_in, s):
                c = stream(chunk_in, s, ctx, cache)
                if guidance is None:
                    return c
                u = stream(chunk_in, s, ctx_u, cache_u)
                return u + guidance * (c - u)

            noise = lambda: (torch.zeros(B * S, h, device=dev) if zero_noise  # noqa: E731
                             else randn_rows((B, S * h), generator, dev).view(B * S, h))
            return self.value.sample_chunk(run, B * S, noise, steps).view(B, S, h)


def randn_rows(shape, generator, device):
    """Normal noise of `shape` [B, ...] on `device`: from one generator, or row b from generator[b] when given a list.
    Drawn on each generator's own device (eval.py's are CPU ones), so that a seed gives the same noise, and the same
    values, whichever device the model runs on: CUDA and CPU generators draw different numbers from one seed."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def attend_cached(q, k, v, k_vid, v_vid):
    """The value queries' attention at inference: q [B*S, n, H, D] of S noise samples per trajectory see their own value
    keys k, v [B*S, n, H, D] and the trajectory's cached current-video K/V [B, n_cur, H, D], which the S samples share
    instead of each holding a copy (the asymmetric mask's value rows). Value queries are few, so plain fp32 softmax
    attention is cheap."""
    B, S = k_vid.shape[0], q.shape[0] // k_vid.shape[0]
    per_traj = lambda t: t.unflatten(0, (B, S)).float()  # noqa: E731
    q, k, v = per_traj(q) * q.shape[-1] ** -0.5, per_traj(k), per_traj(v)
    p = torch.cat([torch.einsum("bsqhd,bkhd->bshqk", q, k_vid.float()),
                   torch.einsum("bsqhd,bskhd->bshqk", q, k)], -1).softmax(-1)
    n = k_vid.shape[1]
    o = torch.einsum("bshqk,bkhd->bsqhd", p[..., :n], v_vid.float()) + torch.einsum("bshqk,bskhd->bsqhd", p[..., n:], v)
    return o.flatten(0, 1).to(k_vid.dtype)


# ----------------------------------------------------------------------------------------------
# sizes and checkpoints

SIZES = {"full": ("ti2v-5b", "paper"), **{n: (n, n) for n in ("tiny", "small", "base", "mid")}}


def wvm_configs(name, head="flow", pred="v"):
    """(video, value) configs by size name: "full" is the paper's 5.0B + 0.7B model."""
    video, value = SIZES[name]
    return WAN_CONFIGS[video], replace(VALUE_CONFIGS[value], head=head, pred=pred)


def save_wvm(model, path, run=None):
    """A WVM checkpoint: one safetensors file, configs and mask in its metadata; written atomically.

    run: what scoring needs to see frames as training did (train.py: resolution, fps, the VAE's and the text
    encoder's ids), kept in the metadata too and returned by load_wvm as model.run."""
    meta = {"video_cfg": json.dumps(config_dict(model.video.cfg)), "value_cfg": json.dumps(config_dict(model.value.cfg)),
            "mask": model.mask, "run": json.dumps(run or {})}
    save_safetensors(model.state_dict(), path, meta)


def load_wvm(path, dtype=None, device=None, **kw):
    """Load a WVM checkpoint written by save_wvm (kw: WVM options such as video_loss_weight)."""
    options = [p for p in inspect.signature(WVM).parameters if p not in ("video_cfg", "value_cfg", "mask")]
    if unknown := sorted(set(kw) - set(options)):  # the mask is the file's
        raise TypeError(f"load_wvm: no option {', '.join(unknown)} ({', '.join(options)})")
    try:
        meta = read_metadata(path)
        video_cfg = WanConfig(**json.loads(meta["video_cfg"]))  # (its patch_size, a JSON list, becomes a tuple)
        value_cfg = ValueConfig(**json.loads(meta["value_cfg"]))
        run = json.loads(meta.get("run", "{}"))
        if not isinstance(run, dict):
            raise TypeError(f"run record {run!r}: not a JSON object")
        with torch.device("meta"):  # the configs' values too: a model that cannot be built is no WVM checkpoint
            model = WVM(video_cfg, value_cfg, mask=meta.get("mask", "causal"), **kw)
    except Exception as e:
        raise CheckpointError(f"{path}: not a WVM checkpoint ({type(e).__name__}: {e})") from None
    model = load_into(model, path, [path], dtype=dtype, device=device, keep_fp32=FP32_PARAMS if dtype else None)
    model.run = run  # empty for checkpoints saved before runs recorded it
    return model


def wvm_from_wan(wan_path, value_cfg, dtype=None, device=None, size=None, video_cfg=None, **kw):
    """WVM whose video stream is a pretrained Wan2.2 DiT and whose value stream is fresh. size: the name of
    value_cfg's size (train.py's --size), for the message when the checkpoint does not fit it; video_cfg: the
    checkpoint's config where the caller has read it (read_wan_checkpoint)."""
    video_cfg = video_cfg or read_wan_checkpoint(wan_path)[2]  # checked before 5B weights are read
    shape = lambda c: f"{c.num_layers} layers, {c.num_heads} heads x {c.head_dim}, text_dim {c.text_dim}"  # noqa: E731
    if shape(video_cfg) != shape(value_cfg):  # the streams attend to each other in every layer
        fits = [n for n in SIZES if shape(wvm_configs(n)[1]) == shape(video_cfg)]
        raise CheckpointError(f"{wan_path}: a Wan DiT of {shape(video_cfg)}; the value stream of "
                              f"{f'--size={size}' if size else 'this model'} has {shape(value_cfg)}"
                              + (f": pass --size={fits[0]}" if fits else f": no size fits it ({', '.join(SIZES)})"))
    video = load_wan_dit(wan_path, dtype=dtype, device=device, cfg=video_cfg)
    with torch.device("meta"):
        model = WVM(video.cfg, value_cfg, **kw)
    model.video = video
    with torch.device(device or "cpu"):
        model.value = ValueDiT(value_cfg)
    return model

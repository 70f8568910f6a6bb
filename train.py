"""Train WVM: the paper's recipe (Table A.1) on LeRobot, EgoDex and manifest data.

    python train.py --data=data/metaworld/train --text_cache=runs/text --out_dir=runs/tiny      # one process
    torchrun --nproc_per_node=8 train.py config.py --wan=/ckpt/Wan2.2-TI2V-5B --vae=/ckpt/Wan2.2-TI2V-5B/Wan2.2_VAE.pth

Configuration, nanoGPT style: the TrainConfig defaults below, then any python files given as arguments (plain
assignments), then --key=value flags; every setting is checked before anything runs. The optimization and
augmentation defaults are the paper's recipe (Table A.1); the model defaults are not: size=tiny from random weights
at 256 x 256 runs on a CPU, and the paper's model is --size=full --wan=<Wan2.2-TI2V-5B folder>. The run folder
(out_dir) gets config.json, log.jsonl (one line per step), ckpt/ (the exact training state, for --resume),
vae.safetensors (the demo's random VAE) and wvm.safetensors (the model, for eval.py). A folder that holds a saved
run is never trained over without --resume (continue) or --overwrite (start again), and one process at a time writes
a run folder. config.json records a fingerprint of the data (data.fingerprint): a finished run resumed on data
regenerated at the same path stops rather than pass for a model of them.

Parallelism: DDP for small models, FSDP2 (`--parallel=fsdp`, one unit per MoT layer) for the 5.7B one, with
activation checkpointing per MoT layer (per block in the video stage); bf16 autocast with fp32 master weights on
GPU, fp32 on CPU (gloo).
Sample i of the run is a pure function of (seed, i) (data.ClipDataset) and so is its flow noise,
so the global batch of a step is the same whatever the number of processes, and a resumed run
repeats the uninterrupted one exactly.
"""
import ast
import contextlib
import functools
import inspect
import itertools
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import CheckpointError, inside, read_json, read_metadata, save_json
from data import (ClipDataset, DataError, LatentCache, Source, check_names_some, collate, fingerprint,
                  read_dataset, read_paraphrases)
from encode_text import TextCache, TextCacheError, encoder_id, pad_text
from model import read_wan_checkpoint, save_wan_dit
from wan_vae import load_wan_vae, other_vae, random_vae, save_wan_vae, vae_ids
from wvm import WVM, clip_latents, save_wvm, wvm_configs, wvm_from_wan


@dataclass
class TrainConfig:
    # data
    data: str = "data/metaworld/train"  # comma-separated sources: path[:weight[:fps]] (LeRobot, EgoDex, .jsonl manifest)
    camera: str = ""                    # LeRobot video key (default: the first one)
    text_cache: str = "data/metaworld/text_cache"  # umT5 embeddings from encode_text.py
    fps: float = 2.0                    # latent target fps
    resolution: int = 256              # frame side in pixels (square crops)
    rewind: float = 0.5
    plateau: float = 0.1
    prefix_p: float = 0.5
    text_dropout: float = 0.0           # share of clips trained with the empty instruction (all-zero text context)
    mirror: float = 0.0                 # share of clips mirrored left-right (not in the paper)
    rotate: float = 0.0                 # share of clips turned by 180 degrees (not in the paper)
    first_frame: bool = False           # lead each clip with the episode's first frame o_0 (not in the paper)
    mismatch: float = 0.0               # share of clips read with another task's instruction, values 0 (not in the paper)
    paraphrases: str = ""               # JSON {instruction: [other wordings]}: each clip reads one wording, drawn
                                        # uniformly (instruction augmentation; sim.py writes one for its corpus)
    state: str = ""                     # LeRobot column of the robot's state (e.g. observation.state) that the value
                                        # tokens read beside the video (not in the paper; value_dit.py)
    state_dropout: float = 0.0          # share of clips trained without it, so that data lacking it can be scored
    latent_cache: str = ""              # folder for VAE latents of clips (the VAE is frozen)
    num_workers: int = 2
    encode_in_loader: bool = False      # CPU: the loader workers encode the clips on the other cores while the
                                        # main process trains (in groups of LOADER_GROUP, see encode_grouped)
    # model
    stage: str = "value"                # value: WVM; video: the video stream alone (the world-model prior), saved
                                        # as an official Wan2.2 DiT folder out_dir/wan that --wan loads
    size: str = "tiny"                  # tiny | small | base | mid | full (wvm_configs; full is the paper's model)
    text_dim: int = 0                   # width of the text features: 0 is the size's (umT5's 4096 for full); another
                                        # encoder's (encode_text.py --model, not in the paper) sets its own. Under
                                        # --wan the checkpoint's
    value_head: str = "flow"            # flow | regression | hlgauss
    value_pred: str = "v"               # the flow head's output: v (the paper's) or x0 (value_dit.ValueDiT)
    mask: str = "causal"
    wan: str = ""                       # Wan2.2 DiT checkpoint for the video stream (else random init)
    vae: str = ""                       # Wan2.2 VAE checkpoint (else a random tiny VAE, saved with the run)
    video_loss_weight: float = 1.0      # lambda
    video_shift: float = 5.0
    value_shift: float = 1.0
    # optimization (the paper's Table A.1)
    max_steps: int = 30000
    batch_size: int = 1024              # global, reached by gradient accumulation
    micro_batch: int = 8                # per process and forward
    lr: float = 1e-4
    video_lr: float = 1.0               # the video stream's learning rate, as a share of lr (not in the paper)
    min_lr_ratio: float = 0.1
    warmup: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # system
    parallel: str = "ddp"               # ddp | fsdp
    checkpointing: bool = False         # activation checkpointing per MoT layer (per block in the video stage)
    dtype: str = "auto"                 # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    out_dir: str = "runs/wvm"
    ckpt_every: int = 1000
    log_every: int = 1
    resume: bool = False                # continue the run in out_dir from ckpt/
    overwrite: bool = False             # replace the run in out_dir (its model and checkpoint are deleted)
    seed: int = 0


CHOICES = {"stage": ("value", "video"), "size": ("tiny", "small", "base", "mid", "full"),
           "value_head": ("flow", "regression", "hlgauss"), "value_pred": ("v", "x0"), "mask": ("causal", "full"),
           "parallel": ("ddp", "fsdp"),
           "dtype": ("auto", "bf16", "fp32")}


def configure(argv):
    """TrainConfig from python files (assignments) and --key=value flags, in order, then checked."""
    cfg, types = TrainConfig(), {f.name: f.type for f in fields(TrainConfig)}
    if {"-h", "--help"} & set(argv):  # the settings with their defaults and comments, as this file writes them
        print(f"{__doc__}\nSettings (--key=value), with their defaults:\n\n{inspect.getsource(TrainConfig)}")
        raise SystemExit(0)

    def setkey(k, v, where):
        if k not in types:
            raise SystemExit(f"{where}: unknown config key {k!r}; known: {', '.join(types)}")
        if isinstance(v, str) and types[k] is not str:
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                raise SystemExit(f"{where}: {k}={v!r}: expected {types[k].__name__}") from None
        if types[k] is float and type(v) is int:
            v = float(v)
        if type(v) is not types[k]:  # type(), not isinstance: True is an int, but never a step count
            raise SystemExit(f"{where}: {k}={v!r}: expected {types[k].__name__}")
        setattr(cfg, k, v)

    for arg in argv:
        if arg.startswith("--"):
            k, eq, v = arg[2:].partition("=")
            if not eq and types.get(k, bool) is not bool:  # a bare --lr must not become lr = True = 1.0
                raise SystemExit(f"{arg}: needs a value (--{k}=...)")
            setkey(k, v if eq else "True", arg)
        else:
            scope = {}
            try:
                with open(arg) as f:
                    exec(compile(f.read(), arg, "exec"), scope)
            except OSError as e:
                raise SystemExit(f"{arg}: cannot read config file ({e.strerror})") from None
            except Exception as e:
                line = getattr(e, "lineno", None) or (e.__traceback__.tb_next.tb_lineno if e.__traceback__.tb_next else "?")
                raise SystemExit(f"{arg}:{line}: {type(e).__name__}: {e}") from None
            for k, v in scope.items():
                if not k.startswith("__"):
                    setkey(k, v, arg)
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Every setting within its range, all problems in one message, before anything runs."""
    bad = []

    def need(ok, key, why):
        if not ok:
            bad.append(f"{key}={getattr(cfg, key)!r}: {why}")

    for k, allowed in CHOICES.items():
        need(getattr(cfg, k) in allowed, k, f"expected {' | '.join(allowed)}")
    for k in ("max_steps", "batch_size", "micro_batch", "ckpt_every", "log_every"):
        need(getattr(cfg, k) >= 1, k, "must be at least 1")
    for k in ("warmup", "num_workers", "seed"):
        need(getattr(cfg, k) >= 0, k, "must not be negative")
    need(cfg.seed < 2 ** 32, "seed", "must be below 2**32")  # torch's and numpy's seeds (seed + 1 among them)
    for k in ("rewind", "plateau", "prefix_p", "text_dropout", "mirror", "rotate", "mismatch", "state_dropout",
              "min_lr_ratio"):
        need(0 <= getattr(cfg, k) <= 1, k, "a probability or ratio: must lie in [0, 1]")
    for k in ("beta1", "beta2"):
        need(0 <= getattr(cfg, k) < 1, k, "must lie in [0, 1)")
    need(0 < cfg.lr <= 1, "lr", "must lie in (0, 1]")
    for k in ("fps", "grad_clip", "video_shift", "value_shift", "video_lr"):
        need(0 < getattr(cfg, k) < math.inf, k, "must be positive")
    for k in ("video_loss_weight", "weight_decay"):
        need(0 <= getattr(cfg, k) < math.inf, k, "must not be negative")
    need(cfg.resolution > 0 and cfg.resolution % 32 == 0, "resolution", "must be a positive multiple of 32 "
         "(VAE stride 16 x patch 2)")
    for k in ("data", "text_cache", "out_dir"):
        need(bool(getattr(cfg, k)), k, "must be given")
    need(not (cfg.resume and cfg.overwrite), "overwrite", "contradicts resume=True: choose one")
    need(not cfg.encode_in_loader or cfg.num_workers > 0, "encode_in_loader", "needs loader workers (num_workers)")
    need(cfg.text_dim >= 0, "text_dim", "must not be negative (0: the size's)")
    need(not cfg.state_dropout or cfg.state, "state_dropout", "needs state=<column>")
    need(not cfg.state or cfg.stage == "value", "state", "the value stream reads it; stage=video trains none")
    need(not cfg.mismatch or cfg.stage == "value", "mismatch", "pairs a clip with a wrong instruction for the value "
         "stream to score 0; stage=video would learn the scene from the wrong words")
    need(cfg.value_pred == "v" or cfg.value_head == "flow", "value_pred", "x0 is the flow head's; value_head=flow")
    if cfg.stage == "video":  # set for a stage that trains no value stream, they would do nothing, silently
        for k in ("value_head", "value_pred", "value_shift", "prefix_p", "mask"):
            need(getattr(cfg, k) == getattr(TrainConfig, k), k, "a setting of the value stream, which stage=video "
                 "does not train")
    try:
        data_specs(cfg)
    except ValueError as e:
        bad.append(str(e))
    if bad:
        raise SystemExit("bad config: " + "; ".join(bad))


def data_specs(cfg):
    """[(path, weight, fps or None)] from data = path[:weight[:fps]],..."""
    specs = []
    for spec in cfg.data.split(","):
        path, *rest = spec.split(":")
        try:
            weight = float(rest[0]) if rest else 1.0
            fps = float(rest[1]) if len(rest) > 1 else None
        except ValueError:
            weight = fps = math.nan
        # finite: an inf weight made the mixture's shares NaN, an inf fps read the source at its own rate
        if not path or len(rest) > 2 or not 0 <= weight < math.inf or (fps is not None and not 0 < fps < math.inf):
            raise ValueError(f"data source {spec!r}: expected path[:weight >= 0[:fps > 0]], finite")
        specs.append((path, weight, fps))
    return specs


# ----------------------------------------------------------------------------------------------
# data

def open_sources(cfg, h):
    """The training mixture's ClipDataset, clips of 2h + 1 frames (h: the model's value chunk)."""
    sources = [Source(read_dataset(path, camera=cfg.camera or None, state=cfg.state or None), weight, fps)
               for path, weight, fps in data_specs(cfg)]
    paraphrases = read_paraphrases(cfg.paraphrases) if cfg.paraphrases else None
    if paraphrases is not None:
        check_names_some(cfg.paraphrases, paraphrases, [ep.instruction for s in sources for ep in s.episodes],
                         "paraphrases")
    return ClipDataset(sources, fps=cfg.fps, size=cfg.resolution, h=h, seed=cfg.seed, rewind=cfg.rewind,
                       plateau=cfg.plateau, prefix=cfg.prefix_p, text_dropout=cfg.text_dropout,
                       paraphrases=paraphrases, mirror=cfg.mirror, rotate=cfg.rotate, mismatch=cfg.mismatch,
                       first_frame=cfg.first_frame, state=bool(cfg.state), state_dropout=cfg.state_dropout,
                       length=cfg.max_steps * cfg.batch_size)


class StepBatches(torch.utils.data.Sampler):
    """Sample indices of this process's micro-batches from start_step on: the global batch of step s is
    samples [s*G, (s+1)*G), split the same way whatever the number of processes."""

    def __init__(self, start_step, max_steps, accum, micro, rank, world):
        self.start, self.max_steps, self.accum, self.micro, self.rank, self.world = (
            start_step, max_steps, accum, micro, rank, world)

    def __iter__(self):
        G = self.accum * self.micro * self.world
        for step in range(self.start, self.max_steps):
            for m in range(self.accum):
                base = step * G + (m * self.world + self.rank) * self.micro
                yield list(range(base, base + self.micro))

    def __len__(self):
        return (self.max_steps - self.start) * self.accum


def fill_latents(batch, encode, latent_cache=None):
    """The batch's latents, a list: those the loader found cached, the rest encoded together (encode: clips ->
    latents) and stored in the cache."""
    keys, lat = batch["clip_key"], list(batch["latents"])  # latents the loader found cached, else None
    miss = [i for i, z in enumerate(lat) if z is None]
    frames = batch.get("frames")  # exactly the misses', in order (None when every clip was cached)
    if miss and latent_cache is not None:
        # The loader runs batches ahead: a clip it found uncached may have been encoded by a step since. Read it back
        # instead of encoding it again, since an encode rounds differently with the number of clips in it (~1e-5): each
        # clip then has one latent, and training is the same whatever the loader's timing and whether the cache was
        # cold or warm.
        again = [latent_cache.load(keys[i]) for i in miss]
        frames = frames[[j for j, z in enumerate(again) if z is None]]
        for i, z in zip(miss, again):
            lat[i] = z
        miss = [i for i in miss if lat[i] is None]
    if miss:  # encode the clips not cached yet in one batch
        z = encode(frames)
        for j, i in enumerate(miss):
            lat[i] = z[j]
            if latent_cache is not None:
                latent_cache.put(keys[i], z[j])
    return lat


LOADER_GROUP = 8  # clips per VAE call in the loader workers: on a CPU about as fast per clip as 16 or 32


def encode_grouped(vae, frames, h, n=LOADER_GROUP, spares=(), latent_cache=None):
    """clip_latents in calls of exactly n clips. A call rounds differently with the number of clips in it (~1e-5)
    but, on the CPUs measured (tests/test_train.py checks the one it runs on), not with which clips they are or in
    what order: each clip then gets the same latents whichever worker encodes it, and in whatever batch, so training
    does not depend on the workers' timing. The last call's empty places take clips to come (spares: (key, frames),
    stored in latent_cache), and copies of a clip where there are none: in the default demo run, copies were 45% of
    all the clips encoded."""
    extra = list(itertools.islice(spares, -len(frames) % n))
    x = torch.cat([frames, *(f[None] for _, f in extra)])
    pad = -len(x) % n
    x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) if pad else x
    z = torch.cat([clip_latents(vae, c, h) for c in x.split(n)])
    for (key, _), zi in zip(extra, z[len(frames):]):
        latent_cache.put(key, zi)
    return z[:len(frames)]


def upcoming(samples, latent_cache, world=1, ahead=8):
    """(key, frames) of the clips not cached yet in this loader worker's next `ahead` batches, each once and none of
    this batch's. A DataLoader deals its batches to the workers in turn, and StepBatches gives each of the `world`
    processes every world-th run of B consecutive samples."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    ds, B, seen = info.dataset, len(samples), {s["clip_key"] for s in samples}
    for k in range(1, ahead + 1):
        first = samples[0]["index"] + k * info.num_workers * world * B
        for j in range(first, min(first + B, len(ds))):
            p = ds.plan(j)
            try:
                key = ds.sample_key(p)
            except OSError:  # its video is gone: left to the batch that reads it, which says so
                continue
            if ds.bad_key(p["episode"]) in ds.bad or key in seen or os.path.exists(latent_cache.path(key)):
                continue
            s = ds[j]  # decoded (another attempt's clip if the episode turned out bad)
            if s["frames"] is not None and s["clip_key"] not in seen:
                seen.add(s["clip_key"])
                yield s["clip_key"], s["frames"]


def encoded_batch(samples, vae, h, latent_cache, world=1):
    """collate, then the latents of the clips not cached yet (--encode_in_loader: in a loader worker), encoded in
    groups filled with clips of the worker's next batches."""
    batch = collate(samples)
    if batch["frames"] is not None:
        spares = upcoming(samples, latent_cache, world) if latent_cache is not None else ()
        batch["latents"] = torch.stack(fill_latents(
            batch, lambda f: encode_grouped(vae, f, h, spares=spares, latent_cache=latent_cache), latent_cache))
        batch["frames"] = None
    return batch


def forward_backward(model, inputs, accum, device, dtype):
    """One micro-batch: the forward under autocast (bf16 where dtype says), the backward outside it. Autocast is
    carried into the backward pass, whose matmuls would then be bf16 even for what model.py keeps in fp32 (time
    embedding, modulation, head): their gradients rounded to bf16."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = model(inputs)
    (out["loss"] / accum).backward()
    return out


def model_inputs(batch, wvm, vae, text_cache, device, latent_cache=None):
    """A collated ClipDataset batch -> the dict WVM.forward takes (latents, text features, seeded flow noise)."""
    lat = fill_latents(batch, lambda f: clip_latents(vae, f.to(device), wvm.chunk), latent_cache)
    lat = torch.stack([z.to(device) for z in lat]).float()  # [B, C, 2, h, w]: current, future
    # a dropped instruction is the empty context: all zeros, as Wan pads every context to text_len
    features = [text_cache.get(t) for t in batch["text"]]
    context = pad_text([torch.zeros_like(f) if dropped else f for f, dropped in zip(features, batch["text_dropped"])])
    noise = wvm.flow_noise(batch["seed"], lat.shape[1:])
    state = {"state": batch["state"], "start_state": batch["start_state"], "state_keep": ~batch["state_dropped"]} \
        if "state" in batch else {}
    return {"latents": lat, "context": context.to(device), "values": batch["values"].to(device),
            **{k: v.to(device) for k, v in (noise | state).items()}}


# ----------------------------------------------------------------------------------------------
# model, parallelism, schedule, MFU

def state_stats(dataset):
    """Per-dim mean and std of the robot's state over every frame of the training episodes: the standardization the
    model keeps (ValueDiT.state_mean / state_std); 1e-3 keeps a constant dim finite."""
    widths = {}  # width -> the first episode of it (sources of one folder name: keyed by name, one hid the other)
    for ep in (ep for src in dataset.sources for ep in src.episodes):
        widths.setdefault(ep.extra["state"].shape[1], ep)
    if len(widths) > 1:
        each = ", ".join(f"{d} in {ep.id} ({ep.video})" for d, ep in widths.items())
        raise DataError(f"the episodes' states differ in width ({each}); one model reads one state")
    s = np.concatenate([ep.extra["state"] for src in dataset.sources for ep in src.episodes]).astype(np.float64)
    return torch.tensor(s.mean(0), dtype=torch.float32), torch.tensor(s.std(0) + 1e-3, dtype=torch.float32)


def model_configs(cfg):
    """(video, value) configs: the size's, the video stream's read from --wan where given, and text_dim set by
    --text_dim or, under --wan, by the checkpoint (the streams attend to the same text features)."""
    video_cfg, value_cfg = wvm_configs(cfg.size, head=cfg.value_head, pred=cfg.value_pred)
    if cfg.wan:
        video_cfg = read_wan_checkpoint(cfg.wan)[2]
        if cfg.text_dim and cfg.text_dim != video_cfg.text_dim:
            raise SystemExit(f"--text_dim={cfg.text_dim}: the Wan DiT --wan={cfg.wan} reads text features of width "
                             f"{video_cfg.text_dim}")
    text_dim = video_cfg.text_dim if cfg.wan else cfg.text_dim or video_cfg.text_dim
    return replace(video_cfg, text_dim=text_dim), replace(value_cfg, text_dim=text_dim)


def build_model(cfg, device, state=None, configs=None):
    """The model before parallelism; state: (mean, std) of the robot's state for a value stream that reads it;
    configs: model_configs(cfg), where the caller has them (under --wan they are read from the checkpoint)."""
    video_cfg, value_cfg = configs or model_configs(cfg)
    if state is not None:
        value_cfg = replace(value_cfg, state_dim=len(state[0]))
    opts = dict(mask=cfg.mask, video_loss_weight=cfg.video_loss_weight, video_shift=cfg.video_shift,
                value_shift=cfg.value_shift)
    torch.manual_seed(cfg.seed)  # the same fresh weights on every process
    if cfg.wan:
        # fp32 master weights whatever the file holds (official and ComfyUI files are bf16 / fp16): AdamW updates
        # them, autocast computes in bf16
        model = wvm_from_wan(cfg.wan, value_cfg, dtype=torch.float32, size=cfg.size, video_cfg=video_cfg, **opts)
    else:
        model = WVM(video_cfg, value_cfg, **opts)
    model.checkpointing = cfg.checkpointing
    model.video_only = cfg.stage == "video"
    if state is not None:  # a resumed run reads its own back from the checkpoint
        with torch.no_grad():
            model.value.state_mean.copy_(state[0])
            model.value.state_std.copy_(state[1])
    return model


def build_vae(cfg, device, dataset):
    """The frozen VAE: --vae's weights, else the run's random tiny VAE, made (and calibrated on this run's data)
    when the run starts and read back from vae.safetensors on resume, so it never changes under a trained model."""
    own = os.path.join(cfg.out_dir, "vae.safetensors")
    if cfg.vae:
        vae = load_wan_vae(cfg.vae)
    elif cfg.resume and os.path.exists(own):  # a new run's own is made anew (the old one is cleared later)
        vae = load_wan_vae(own)
    else:  # no weights can be downloaded for the demo: a fixed random tiny VAE (saved with the run)
        clips = [dataset[i]["frames"][:, -(2 * dataset.h + 1):] for i in range(64)]  # without a leading o_0
        vae = random_vae(torch.stack(clips), "tiny", cfg.seed + 1)
    return vae.to(device).eval().requires_grad_(False)


def check_prior(wan, ids, text_id):
    """A --wan that a train.py --stage=video run exported (its out_dir/wan) learned the latents of that run's VAE and
    the features of its text encoder; a run without --vae makes a random one of its own (another with another seed,
    or other clips to calibrate it on), whose latents the prior never saw. The folder's config.json names both
    ("wvm_vae" and "wvm_vae_weights", "wvm_text_encoder"), wherever the folder is copied; one exported before it did
    is checked against the run it lies in. ids: this run's VAE's (wan_vae.vae_ids); text_id: its text cache's encoder
    id (None: unrecorded, not compared)."""
    folder = os.path.abspath(wan if os.path.isdir(wan) else os.path.dirname(os.path.abspath(wan)))
    run_dir = os.path.dirname(folder)
    try:  # read_wan_checkpoint has read this config.json already
        config = read_json(os.path.join(folder, "config.json")) or {}
        learned = {"vae": config.get("wvm_vae"), "vae_weights": config.get("wvm_vae_weights"),
                   "text_encoder": config.get("wvm_text_encoder")}
        exporter = os.path.join(run_dir, "wvm.safetensors")
        if not (learned["vae"] and learned["text_encoder"]) and os.path.basename(folder) == "wan" and os.path.isfile(
                exporter):
            was = json.loads(read_metadata(exporter).get("run", "{}"))
            if was.get("stage") == "video":
                learned = {k: v or was.get(k) for k, v in learned.items()}
    except Exception:  # noqa: BLE001 (a file that does not read is no train.py run's record: nothing to check)
        return
    try:  # the exporting run's inputs, as hints
        used = read_json(os.path.join(run_dir, "config.json")) or {}
    except CheckpointError:
        used = {}
    if theirs := other_vae(learned, ids):
        own = os.path.join(run_dir, "vae.safetensors")  # the --vae it was given, else the random one it saved
        hint = used.get("vae") or (own if os.path.isfile(own) else None)
        raise SystemExit(f"--wan={wan}: its video stream learned the latents of another VAE ({theirs}), and "
                         f"this run's is {' / '.join(ids.values())}: pass " + (f"--vae={hint}" if hint else
                                                             "the VAE of the run that exported it with --vae"))
    if learned["text_encoder"] and text_id and learned["text_encoder"] != text_id:
        hint = used.get("text_cache")
        raise SystemExit(f"--wan={wan}: its video stream learned the text features of another encoder "
                         f"({learned['text_encoder']}), and --text_cache holds {text_id}'s: pass "
                         + (f"--text_cache={hint}" if hint else "the text cache of the run that exported it"))


def parallelize(model, cfg, device, world):
    if world == 1 and cfg.parallel == "ddp":
        return model.to(device)
    if cfg.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(device.type, (world,))
        # no param_dtype: a bf16 one would cast every parameter, FP32_PARAMS too (the time embedding, modulation,
        # norms and head that run in fp32 under DDP and in eval); autocast makes the matmuls bf16 as under DDP, at
        # the price of fp32 all-gathers. The fp32 parameters' gradients reduce in fp32 with no reduce_dtype; one
        # would break accumulation where blocks never run (the value stream in --stage=video)
        mp = MixedPrecisionPolicy()
        # a layer's outputs are views (gated_add's reshape; a block's too in the video stage); FSDP2 warns that an
        # in-place op on a view would skip its pre-backward hook, and nothing writes to them in place (the
        # two-process tests match one)
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPBlock(, FSDPBlock)?\) returned a view")
        if cfg.stage == "video":  # one unit per block, gathered by its forward (the value
            for block in [*model.video.blocks, *model.value.blocks]:  # stream's never run: never gathered)
                fully_shard(block, mesh=mesh, mp_policy=mp)
        else:  # one unit per MoT layer (video block i + value block i), gathered once for the layer's call, not for
            # each qkv and finish of each block (four gathers a layer, twice the traffic, in forward and backward)
            for vb, ub in zip(model.video.blocks, model.value.blocks):
                fully_shard([vb, ub], mesh=mesh, mp_policy=mp)
                vb.mot_layer = functools.partial(model.layer, vb, ub)  # WVM.joint calls it where it is set
                register_fsdp_forward_method(vb, "mot_layer")
        return fully_shard(model, mesh=mesh, mp_policy=mp)
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = model.to(device)
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                   # lambda = 0 leaves the video head unused, the video stage the whole value stream
                   find_unused_parameters=cfg.video_loss_weight == 0 or cfg.stage == "video")
    raise SystemExit(f"parallel={cfg.parallel!r}: expected ddp or fsdp")


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_flops_per_sample(model, n_tokens_per_frame, context_frames=1):
    """Matmul FLOPs of one training sample (forward + backward = 3x forward), attention included. context_frames:
    the clean latent frames before the future one (2 with the episode's first frame, --first_frame)."""
    v, u = model.video.cfg, model.value.cfg
    c, N = context_frames, n_tokens_per_frame
    n, nu, txt = (c + 1) * N, 1 + u.chunk, v.text_len
    A = v.num_heads * v.head_dim

    def stream(tokens, dim, ffn):
        per_token = 4 * dim * A + 2 * dim * dim + 2 * dim * ffn   # q,k,v,o + cross q,o + ffn
        return tokens * per_token + txt * 2 * dim * dim           # + cross k,v over the text

    macs = v.num_layers * (stream(n, v.dim, v.ffn_dim) + stream(nu, u.dim, u.ffn_dim))
    # video rows: block-causal, the context sees itself and the future everything; or all of it (mask=full); value
    # rows: the context's tokens and their own
    pairs = N ** 2 * ((c * c + c + 1) if model.mask == "causal" else (c + 1) ** 2) + nu * (c * N + nu)
    macs += v.num_layers * (2 * pairs * A + (n * v.dim + nu * u.dim) * txt * 2)  # self + cross attention
    return 3 * 2 * macs


def peak_flops(device, dtype=torch.bfloat16):
    """Peak dense FLOP/s of known GPUs in the run's dtype (bf16 tensor cores; fp32 without TF32, which torch leaves
    off); on CPU the fp32 matmul rate measured here (so MFU is relative)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # the PCIe and NVL cards first: their names contain H100 / H200 too, and they run slower than the SXM ones
        for key, bf16, fp32 in (("H100 PCIe", 756e12, 51e12), ("H100 NVL", 835e12, 60e12), ("H200 NVL", 835e12, 60e12),
                                ("H200", 989e12, 67e12), ("H100", 989e12, 67e12), ("A100", 312e12, 19.5e12),
                                ("L40S", 362e12, 91.6e12), ("A10", 125e12, 31.2e12)):
            if key in name:
                return fp32 if dtype == torch.float32 else bf16
        return float("nan")
    a = torch.randn(1024, 1024)
    a @ a
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ a
        n += 1
    return n * 2 * 1024 ** 3 / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# the run folder and its checkpoints. ckpt/ holds the exact training state in formats that cannot run
# code when read: rank{r}.safetensors per process (its model tensors, FSDP shards as they lie, its AdamW
# moments and step counts, its RNG state) and state.json (step, world size, parallel mode, optimizer
# settings, and what the model's inputs depend on). wvm.safetensors is the whole model for eval.py. A
# save writes ckpt.tmp, then the model files, then ckpt.tmp's state.json, and swaps it in; recover_checkpoint
# settles a save a crash cut.

MODEL_SETTINGS = ("value_head", "value_pred", "mask")  # in a run's record since 2026-12-05
SCHEDULE = ("batch_size", "seed", "max_steps", "warmup", "lr", "min_lr_ratio")  # what data and LR a step gets
RUN_FILES = ("ckpt", "ckpt.tmp", "ckpt.old", "wvm.safetensors", "wan", "vae.safetensors", "config.json", "log.jsonl")
RUN_KEYS = {"out_dir", "data", "max_steps", "world", "accum"}  # in every config.json run_config wrote
HELD = {}  # run folder -> this process's lock on it: a later train() here (tests, notebooks) takes over a failed one's


def open_run(cfg):
    """Lock out_dir for this process (the lock lives as long as the returned file stays open), settle an
    interrupted checkpoint swap, and refuse to start over a saved run unless told to resume or overwrite.
    Returns (lock, the files a new run clears: the leftovers of a run that saved nothing, or the run --overwrite
    replaces); clear_run deletes them once the new run's inputs have been read, so that a mistyped input costs no
    run."""
    import fcntl

    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
    except OSError as e:  # a file of that name, or a folder that cannot be made
        raise SystemExit(f"--out_dir={cfg.out_dir}: cannot be made ({e.strerror or e})") from None
    if os.path.realpath(cfg.out_dir) in HELD:
        HELD.pop(os.path.realpath(cfg.out_dir)).close()
    try:
        lock = open(os.path.join(cfg.out_dir, ".lock"), "a+")
    except OSError as e:  # a folder this user may not write in (a read-only disk)
        raise SystemExit(f"--out_dir={cfg.out_dir}: cannot hold the run's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        who = lock.read().strip() or "another process"
        lock.close()
        raise SystemExit(f"{cfg.out_dir}: in use by {who}; wait for it to finish or choose another --out_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"train.py (pid {os.getpid()} on {socket.gethostname()})\n")
    lock.flush()
    HELD[os.path.realpath(cfg.out_dir)] = lock
    try:  # train.py's own config.json (run_config): the other files are then that run's, not another tool's
        ours = RUN_KEYS <= set(read_json(os.path.join(cfg.out_dir, "config.json")) or {})
    except CheckpointError:
        ours = False
    if ours:  # elsewhere a ckpt.tmp or ckpt.old is someone else's, never deleted or renamed unasked
        recover_checkpoint(cfg.out_dir)
    # (a run's wan/: a video prior exported, which a later stage may read although its checkpoint was deleted for
    # space; another tool's is refused below)
    saved = [f for f in ("ckpt", "wvm.safetensors") + ("wan",) * ours if os.path.exists(os.path.join(cfg.out_dir, f))]
    refusal = (f"--resume: no checkpoint in {cfg.out_dir}" if cfg.resume and "ckpt" not in saved else
               f"{cfg.out_dir} already holds a run ({' and '.join(saved)}): "
               + ("continue it with --resume, " if "ckpt" in saved else "")
               + "choose another --out_dir, or pass --overwrite to replace it"
               if saved and not (cfg.resume or cfg.overwrite) else None)
    if refusal:
        lock.close()
        raise SystemExit(refusal)
    if cfg.resume:
        return lock, []
    present = [f for f in RUN_FILES if os.path.lexists(os.path.join(cfg.out_dir, f))]
    cleared = [os.path.join(cfg.out_dir, f) for f in present]
    # an input among the files cleared, or one that holds one of them (--wan=out_dir: its config.json)
    used = [f"--{k}={p}" for k in ("vae", "wan", "text_cache", "paraphrases", "latent_cache")
            if (p := getattr(cfg, k)) and any(inside(p, q) or inside(q, p) for q in cleared)]
    refusal = (f"{cfg.out_dir}: a new run clears {', '.join(present)} there, and {', '.join(used)} is, holds or lies "
               f"in one of them: move it or choose another --out_dir" if used else
               f"{cfg.out_dir} holds {', '.join(present)}, which no train.py run left there: choose another "
               f"--out_dir, or pass --overwrite to delete them" if present and not ours and not cfg.overwrite
               else None)
    if refusal:
        lock.close()
        raise SystemExit(refusal)
    return lock, present


def clear_run(out_dir, files):
    """Delete the files open_run found a new run clears."""
    for f in files:
        path = os.path.join(out_dir, f)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def recover_checkpoint(out_dir):
    """Leave only ckpt/ (if any), whatever moment of a save a crash interrupted: the newest complete one of
    ckpt.tmp (written, not yet swapped in), ckpt and ckpt.old (swapped out, not yet deleted) becomes ckpt.
    A checkpoint is complete once its state.json exists; it is written last."""
    ckpt = os.path.join(out_dir, "ckpt")
    tmp, old = ckpt + ".tmp", ckpt + ".old"
    best = next((d for d in (tmp, ckpt, old) if os.path.exists(os.path.join(d, "state.json"))), None)
    if best is not None and best != ckpt:
        if os.path.exists(ckpt):
            shutil.rmtree(ckpt)
        os.replace(best, ckpt)
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)


def local(t):
    """This process's part of a tensor: its shard of an FSDP (DTensor) one, else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def training_state(model, opt, device):
    """This process's tensors of the exact training state, by name: model/<param>, optim/<param>/<state>, rng/..."""
    m = unwrap(model)
    names = {p: n for n, p in m.named_parameters()}
    out = {"model/" + n: local(t) for n, t in m.state_dict().items()}
    for p, state in opt.state.items():
        out |= {f"optim/{names[p]}/{k}": local(v) for k, v in state.items()}
    out["rng/torch"] = torch.get_rng_state()
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}  # copies: never a view of the model


def save_checkpoint(model, opt, step, cfg, rank, world, device, run):
    from safetensors.torch import save_file

    ckpt = os.path.join(cfg.out_dir, "ckpt")
    tmp, old = ckpt + ".tmp", ckpt + ".old"
    if rank == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    barrier()
    os.makedirs(tmp, exist_ok=True)
    save_file(training_state(model, opt, device), os.path.join(tmp, f"rank{rank:05d}.safetensors"))
    full = {}
    for n, t in unwrap(model).state_dict().items():  # every process takes part in gathering FSDP shards
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        if rank == 0:
            full[n] = t.detach().cpu()
    barrier()
    if rank == 0:
        groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items() if k != "params"}
                  for g in opt.param_groups]
        # the model files before the checkpoint is complete (state.json): a crash between them leaves the step
        # before as the newest checkpoint, which a resume trains from and exports again; the other way round a
        # finished run would keep the model of an earlier step
        export = unwrap(model)
        with torch.device("meta"):
            shell = WVM(export.video.cfg, export.value.cfg, mask=export.mask)
        shell.load_state_dict(full, assign=True)
        save_wvm(shell, os.path.join(cfg.out_dir, "wvm.safetensors"), run)
        if cfg.stage == "video":  # the pretrained video stream, as the official checkpoint --wan reads
            save_wan_dit(shell.video, os.path.join(cfg.out_dir, "wan"), run["vae"], run["text_encoder"],
                         run.get("vae_weights"))
        save_json({"step": step, "world": world, "parallel": cfg.parallel, "run": run, "param_groups": groups,
                   "schedule": {k: getattr(cfg, k) for k in SCHEDULE}}, os.path.join(tmp, "state.json"))
        if os.path.exists(old):  # left by a crash after the swap: os.replace cannot overwrite a folder
            shutil.rmtree(old)
        if os.path.exists(ckpt):
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def read_state(cfg, world):
    """ckpt/state.json, checked against this launch's world size and parallel mode."""
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    path = os.path.join(ckpt, "state.json")
    if not os.path.exists(path):
        if os.path.exists(os.path.join(ckpt, ".metadata")):
            raise SystemExit(f"{ckpt}: saved by an older train.py (torch.distributed.checkpoint), whose files are "
                             f"pickles that resuming no longer loads; start a new run (wvm.safetensors still scores)")
        raise SystemExit(f"{ckpt}: incomplete checkpoint (no state.json)")
    try:
        with open(path) as f:
            state = json.load(f)
        step, saved_world, parallel = int(state["step"]), state["world"], state["parallel"]
        if step < 0:
            raise ValueError(f"step {step}: negative")
        for k, kind in (("param_groups", list), ("run", dict), ("schedule", dict)):  # edited by hand, or cut
            if not isinstance(state[k] if k == "param_groups" else state.get(k, {}), kind):
                raise TypeError(f"{k} {state[k]!r}: not a JSON {'list' if kind is list else 'object'}")
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if (saved_world, parallel) != (world, cfg.parallel):
        raise SystemExit(f"{ckpt}: saved by {saved_world} process(es) with parallel={parallel}; resume it the "
                         f"same way (this launch: {world} process(es), parallel={cfg.parallel})")
    return state | {"step": step}


def load_checkpoint(model, opt, cfg, rank, world, device, run):
    from safetensors.torch import load_file

    state = read_state(cfg, world)
    saved_run = state.get("run", {})
    # both ways: a setting recorded only when on (first_frame) must not be dropped by a launch without it; the
    # sources may change (source_fps), not their inputs; runs saved before the model's settings (or the VAE's weights'
    # digest, since 2026-12-08) were recorded lack them
    changed = [f"{k} {saved_run.get(k)!r} -> {run.get(k)!r}" for k in dict.fromkeys([*saved_run, *run])
               if k != "source_fps" and saved_run.get(k) != run.get(k)
               and not (k in (*MODEL_SETTINGS, "vae_weights") and k not in saved_run)]
    if changed:
        raise SystemExit(f"{cfg.out_dir}: the run was trained on other inputs than this launch gives it "
                         f"({'; '.join(changed)}); resume with the run's settings, or start a new run")
    path = os.path.join(cfg.out_dir, "ckpt", f"rank{rank:05d}.safetensors")
    try:
        saved = load_file(path)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise SystemExit(f"{path}: unreadable checkpoint ({type(e).__name__}: {first})") from None
    m = unwrap(model)
    params = dict(m.named_parameters())
    own = {"model/" + n: t for n, t in m.state_dict().items()}
    for k, v in saved.items():
        if k.startswith("optim/") and k.count("/") == 2 and k.split("/")[1] in params:
            p = params[k.split("/")[1]]
            own[k] = torch.zeros((), dtype=v.dtype) if k.endswith("/step") else torch.zeros_like(p)
    wrong = [k for k in own if k in saved and saved[k].shape != local(own[k]).shape]
    odd = sorted(set(own) ^ {k for k in saved if not k.startswith("rng/")}) + wrong
    if odd or "rng/torch" not in saved:
        raise SystemExit(f"{path}: does not match this model ({len(odd)} missing, unexpected or mis-shaped tensors: "
                         f"{', '.join(odd[:4])})")
    fused = any(g.get("fused") or g.get("capturable") for g in opt.param_groups)  # AdamW keeps step on the device
    with torch.no_grad():
        for k, t in own.items():
            if k.startswith("optim/"):
                _, name, key = k.split("/")
                if key == "step" and fused:
                    t = t.to(params[name].device)
                opt.state[params[name]][key] = t
            local(t).copy_(saved[k])
    # this launch's optimizer settings hold (its --video_lr, --weight_decay, betas), as config.json records them
    was, now = optimizer_settings(state["param_groups"]), optimizer_settings(opt.param_groups)
    if rank == 0 and was != now:
        print(f"{cfg.out_dir}: resuming at step {state['step']} with this launch's optimizer settings {now} "
              f"(until now {was})")
    before = state.get("schedule", {})  # runs saved before it was recorded: not compared
    moved = [f"{k} {before[k]!r} -> {getattr(cfg, k)!r}" for k in SCHEDULE if k in before and before[k] != getattr(cfg, k)]
    if rank == 0 and moved:  # allowed (a run may go on longer, or on another batch), never unsaid
        step, then = state["step"], replace(cfg, **{k: before[k] for k in SCHEDULE if k in before})
        print(f"{cfg.out_dir}: resuming at step {step} with {'; '.join(moved)}: the samples and learning rates from "
              f"here on are not the uninterrupted run's (the learning rate goes from {lr_at(step - 1, then):.3g} to "
              f"{lr_at(step, cfg):.3g})")
    torch.set_rng_state(saved["rng/torch"])
    if "rng/cuda" in saved and device.type == "cuda":
        torch.cuda.set_rng_state(saved["rng/cuda"], device)
    return state["step"]


def optimizer_settings(groups):
    """AdamW's settings (betas as a list, as state.json holds them), the same in every parameter group, and the video
    stream's share of the learning rate (--video_lr: its group's lr_scale, 1 where one group holds everything)."""
    g = groups[0]
    return {k: list(g[k]) if k == "betas" else g[k] for k in ("betas", "weight_decay", "eps") if k in g} | {
        "video_lr": groups[-1].get("lr_scale", 1.0)}


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def barrier():
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------

def setup_distributed():
    """(world, rank, device) from torchrun's environment; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if torch.cuda.is_available():
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
        if per_node > gpus:  # every process stops alike, none left waiting for the others
            raise SystemExit(f"{per_node} processes on this machine but {gpus} GPU(s): one GPU per process; run "
                             f"--nproc_per_node={gpus} or fewer, or CUDA_VISIBLE_DEVICES= for CPU processes (gloo)")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # device_id: NCCL binds each process to its own GPU up front instead of guessing it from the rank
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return world, rank, device


def train(cfg, world, rank, device):
    """Run (or resume) training; returns the (wrapped) model, or None for a run that had already finished."""
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp32": torch.float32}[cfg.dtype]
    if cfg.encode_in_loader and device.type != "cpu":
        raise SystemExit(f"encode_in_loader=True: the loader worker encodes on the CPU, not on the {device.type}, "
                         f"where the main process encodes faster; leave it off")
    if cfg.parallel == "fsdp" and not dist.is_initialized() and "RANK" not in os.environ:
        # FSDP2's device mesh needs torchrun's process group: without it torch fails deep inside asking for RANK
        raise SystemExit("parallel=fsdp shards the model over torchrun's processes: launch it with torchrun "
                         "--nproc_per_node=N train.py ..., or train in one process with parallel=ddp") from None
    accum, rem = divmod(cfg.batch_size, cfg.micro_batch * world)
    if rem or accum == 0:
        raise SystemExit(f"batch_size {cfg.batch_size} is not a multiple of micro_batch {cfg.micro_batch} x "
                         f"{world} processes")
    master = rank == 0
    missing = [path for path, _, _ in data_specs(cfg) if not os.path.exists(path)]
    if missing:  # named before a run folder is made for it
        raise SystemExit(f"--data: {', '.join(missing)}: not found") from None
    if cfg.latent_cache and master:  # likewise
        try:
            os.makedirs(cfg.latent_cache, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"--latent_cache={cfg.latent_cache}: cannot be made ({e.strerror or e})") from None
        if not os.access(cfg.latent_cache, os.W_OK | os.X_OK):
            raise SystemExit(f"--latent_cache={cfg.latent_cache}: not writable") from None
    lock, leftovers = open_run(cfg) if master else (None, [])
    barrier()
    saved = read_state(cfg, world) if cfg.resume else {"step": 0}
    done = saved["step"]
    h = wvm_configs(cfg.size)[1].chunk  # one h for the clips, the value chunk and (clip_latents checks) the VAE
    before = (read_json(os.path.join(cfg.out_dir, "config.json")) or {}) if cfg.resume else {}
    recorded = before.get("data_fingerprint")
    if done >= cfg.max_steps:
        if master:
            if recorded:  # a finished model is reported as trained on --data: it must have been
                check_data(cfg, open_sources(cfg, h), recorded, finished=True)
            print(f"{cfg.out_dir}: the run is finished (step {done} of max_steps {cfg.max_steps}); raise --max_steps "
                  f"to train it further")
            lock.close()
        return None

    if master and cfg.warmup >= cfg.max_steps:
        print(f"note: warmup {cfg.warmup} >= max_steps {cfg.max_steps}: the learning rate stops at "
              f"{lr_at(cfg.max_steps - 1, cfg):.3g}, short of --lr={cfg.lr:g}, and never decays", flush=True)
    dataset = open_sources(cfg, h)
    data_id = check_data(cfg, dataset, recorded, finished=False) if master else None
    text_cache = TextCache(cfg.text_cache)
    texts = {w for src in dataset.sources for ep in src.episodes
             for w in (ep.instruction, *dataset.paraphrases.get(ep.instruction, ()))}
    text_cache.require(texts, [path for path, _, _ in data_specs(cfg)] + ([cfg.paraphrases] if cfg.paraphrases else []))
    configs = model_configs(cfg)
    video_cfg = configs[0]
    text_cache.check_fits(texts, video_cfg.text_len, video_cfg.text_dim, f"the Wan DiT {cfg.wan}" if cfg.wan else
                          f"--size={cfg.size}" + (f" --text_dim={cfg.text_dim}" if cfg.text_dim else ""))
    vae = build_vae(cfg, device, dataset)
    if vae.cfg.z_dim != video_cfg.in_dim:  # else the first step's patch embedding fails naming no file
        raise SystemExit(f"--vae={cfg.vae}: {vae.cfg.z_dim} latent channels, and the video stream reads "
                         f"{video_cfg.in_dim} ({f'--wan={cfg.wan}' if cfg.wan else f'--size={cfg.size}'})") from None
    ids = vae_ids(vae)
    if cfg.wan and not cfg.resume:
        check_prior(cfg.wan, ids, encoder_id(text_cache.encoder))
    latent_cache = None
    if cfg.latent_cache:  # an input too (one of another VAE is refused): read before the old run is cleared
        # latents encoded in the loader's groups (encode_grouped) round otherwise than the main process's: own folder
        latent_cache = dataset.latent_cache = LatentCache(
            cfg.latent_cache, ids["vae"] + (f"-by{LOADER_GROUP}" if cfg.encode_in_loader else ""), ids["vae_weights"])
    # what scoring must reproduce to feed the model the inputs it was trained on (eval.py checks it)
    run = {"resolution": cfg.resolution, "fps": cfg.fps, **ids,
           "text_encoder": encoder_id(text_cache.encoder), "stage": cfg.stage}
    run |= {k: getattr(cfg, k) for k in MODEL_SETTINGS}  # what the weights mean: a resume cannot change it
    if cfg.first_frame:  # recorded only when on, so that runs saved before the option resume as they were
        run["first_frame"] = True
    if cfg.text_dropout:  # eval.py --guidance reads the empty instruction the model then learned
        run["text_dropout"] = cfg.text_dropout
    stats = state_stats(dataset) if cfg.state else None
    if cfg.state:  # so is the state: its column and width, and how often training went without it
        run |= {"state": cfg.state, "state_dim": len(stats[0]), "state_dropout": cfg.state_dropout}
    # sources trained at their own fps are scored at it (eval.dataset_fps); a resumed run may read other sources,
    # and its record keeps those of earlier launches; a source of this launch is read at this launch's fps (its own
    # or the run's: an earlier launch's would have it scored at an fps it no longer trains at)
    here = {os.path.realpath(path): fps for path, _, fps in data_specs(cfg)}
    source_fps = {p: f for p, f in saved.get("run", {}).get("source_fps", {}).items() if p not in here} | {
        p: f for p, f in here.items() if f is not None}
    if source_fps:
        run["source_fps"] = source_fps
    model = parallelize(build_model(cfg, device, stats, configs), cfg, device, world)
    # one group unless the video stream learns at its own rate (a run saved with one group resumes as it was)
    bare = unwrap(model)
    groups = model.parameters() if cfg.video_lr == 1 else [
        {"params": list(bare.value.parameters())}, {"params": list(bare.video.parameters()), "lr_scale": cfg.video_lr}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay, fused=device.type == "cuda",
                            foreach=device.type != "cuda")  # CPU: one op per step for all tensors, not a Python loop
    start = load_checkpoint(model, opt, cfg, rank, world, device, run) if cfg.resume else 0
    if master:
        clear_run(cfg.out_dir, leftovers)  # every input has been read: the new run's files replace them now
        config = run_config(cfg, world, accum) | {"data_fingerprint": data_id}
        if moved := other_settings(before, config):  # allowed (a run may change its recipe), never unsaid
            print(f"{cfg.out_dir}: resuming at step {start} with settings other than the run's until now "
                  f"({'; '.join(moved)}): the steps from here on are not the uninterrupted run's", flush=True)
        save_json(config, os.path.join(cfg.out_dir, "config.json"))
        own = os.path.join(cfg.out_dir, "vae.safetensors")
        if not cfg.vae and not os.path.exists(own):  # written once, when the run starts
            save_wan_vae(vae, own)

    tokens_per_frame = (cfg.resolution // 32) ** 2
    flops = train_flops_per_sample(unwrap(model), tokens_per_frame, 2 if cfg.first_frame else 1) * cfg.batch_size
    # before the loader starts: its workers, decoding (and encoding) ahead, would take the cores the CPU's rate is
    # measured on (a third of the idle rate on 2 cores, MFU logged over 100%)
    peak = peak_flops(device, dtype) * world
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(start, cfg.max_steps, accum, cfg.micro_batch, rank, world),
        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0, worker_init_fn=ignore_stop_signals,
        prefetch_factor=4 if cfg.num_workers > 0 else None, collate_fn=collate if not cfg.encode_in_loader else
        functools.partial(encoded_batch, vae=vae, h=h, latent_cache=latent_cache, world=world))
    batches = iter(loader)

    if master and start:
        trim_log(os.path.join(cfg.out_dir, "log.jsonl"), start)
    log_file = open(os.path.join(cfg.out_dir, "log.jsonl"), "a") if master else None
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not master, desc="train", dynamic_ncols=True)
    step, t_last, bad = start, time.perf_counter(), 0
    with stop_signals() as stop:  # SIGTERM or Ctrl-C: the step ends, is saved, and training stops
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            sums = torch.zeros(3, device=device)
            for m in range(accum):
                inputs = model_inputs(next(batches), unwrap(model), vae, text_cache, device, latent_cache)
                last = m == accum - 1
                if cfg.parallel == "fsdp" and world > 1:
                    model.set_requires_gradient_sync(last)
                ddp_no_sync = cfg.parallel == "ddp" and world > 1 and not last
                sync = model.no_sync() if ddp_no_sync else contextlib.nullcontext()
                with sync:
                    out = forward_backward(model, inputs, accum, device, dtype)
                sums += torch.stack([out[k].detach() for k in ("loss", "loss_value", "loss_video")]) / accum
                del out  # its graph would otherwise live through the next forward (0.3 GiB more peak on the mid bench)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            if torch.isfinite(grad_norm):  # the same norm on every process: they all step, or all skip
                opt.step()
                bad = 0
            else:  # one bad batch (an overflow, a broken sample) must not reach the weights, nor a checkpoint
                bad += 1
                if master:
                    print(f"step {step + 1}: the gradient is not finite (norm {grad_norm.item()}); the step is skipped",
                          flush=True)
                if bad == MAX_BAD_STEPS:
                    raise SystemExit(f"{cfg.out_dir}: {bad} steps in a row with a gradient that is not finite: "
                                     f"stopped, the weights untouched by them; ckpt/ holds the last step saved (lower "
                                     f"--lr, or check the data)")
            opt.zero_grad(set_to_none=True)
            if world > 1:
                dist.all_reduce(sums)
                sums /= world
            step += 1
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            if master and (step % cfg.log_every == 0 or step == cfg.max_steps):
                mfu = flops / dt / peak  # NaN on a GPU peak_flops does not know
                rec = {"step": step, "loss": sums[0].item(), "loss_value": sums[1].item(), "loss_video": sums[2].item(),
                       "lr": lr, "grad_norm": grad_norm.item(), "samples_per_s": cfg.batch_size / dt, "mfu": mfu}
                # strict JSON: a skipped step's NaN loss and norm, an unknown GPU's MFU, are null, which any reader
                # parses
                rec = {k: v if math.isfinite(v) else None for k, v in rec.items()} | ({"skipped": True} if bad else {})
                log_file.write(json.dumps(rec, allow_nan=False) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{sums[0].item():.4f}", value=f"{sums[1].item():.4f}", mfu=f"{mfu:.1%}")
            bar.update(1)
            stop_now = torch.tensor(float(stop["now"] is not None), device=device)
            if world > 1:  # every process must agree before saving
                dist.all_reduce(stop_now)
            if (step % cfg.ckpt_every == 0 and not bad) or step == cfg.max_steps or stop_now.item():
                save_checkpoint(model, opt, step, cfg, rank, world, device, run)
                t_last = time.perf_counter()  # the next step's time (samples/s, MFU) is its training alone
            if stop_now.item():
                if master:
                    print(f"{stop['now'] or 'Stopped'}: saved the state of step {step} in {cfg.out_dir}/ckpt; continue "
                          "with --resume")
                break
    bar.close()
    if master:
        if step == cfg.max_steps:  # a stopped run said so above, and its model is not finished
            print(f"done: step {step}/{cfg.max_steps}, loss {sums[0].item():.4f} (value {sums[1].item():.4f}, video "
                  f"{sums[2].item():.4f}), model in {os.path.join(cfg.out_dir, 'wvm.safetensors')}")
        log_file.close()
        lock.close()
    return model


def trim_log(path, step):
    """Keep the log's lines of steps up to `step`, where a resume goes on: a run that died after its last checkpoint
    logged steps it will now train again, and each step is logged once."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line the crash cut short
                pass
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


MAX_BAD_STEPS = 5  # non-finite gradients in a row before training stops


@contextlib.contextmanager
def stop_signals():
    """While training, SIGTERM (torchrun, scancel) or Ctrl-C (SIGINT) sets stop["now"] to the signal's name, so that the
    loop saves at the end of its step and stops; a second Ctrl-C stops at once (KeyboardInterrupt), without saving. The
    handlers before are put back however training ends."""
    stop = {"now": None}

    def on_stop(signum, _):
        stop["now"] = stop["now"] or signal.Signals(signum).name  # the first: a Ctrl-C reaches demo.py's steps twice
        signal.signal(signal.SIGINT, signal.default_int_handler)
    before = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def ignore_stop_signals(_):
    """In each loader worker: torchrun and scancel send SIGTERM to the whole process group, and a terminal's Ctrl-C
    SIGINT; a worker it kills takes the trainer down before the trainer's own handler can save the checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# said on resume by load_checkpoint (SCHEDULE, the optimizer's) or check_data, or not changing what a step computes
RESUME_QUIET = {*SCHEDULE, "video_lr", "weight_decay", "beta1", "beta2", "resume", "overwrite", "num_workers",
                "ckpt_every", "log_every", "data_fingerprint", "checkpointing", "out_dir"}


def other_settings(before, config):
    """The settings in which a resumed run's config.json (`config`) differs from the one it had (`before`; {} for a
    new run), as "key old -> new"; a key the old one lacks (a setting added since) is not compared."""
    return [f"{k} {before[k]!r} -> {v!r}" for k, v in config.items()
            if k in before and k not in RESUME_QUIET and before[k] != v]


def check_data(cfg, dataset, recorded, finished):
    """The data's fingerprint, checked against the one the run recorded (None: a new run, or one saved before runs
    recorded it). On data that differ (a dataset regenerated or edited at the same path) a finished run stops, since
    its model would be taken for one trained on them; an unfinished one is told and goes on (a run may be continued
    on other data), and records the new fingerprint."""
    eps = [ep for src in dataset.sources for ep in src.episodes]
    now = fingerprint(eps)
    if recorded is None or now == recorded:
        return now
    what = (f"{cfg.out_dir}: the data in --data={cfg.data} ({len(eps)} episodes, fingerprint {now}) "
            f"are not those the run recorded (fingerprint {recorded}): regenerated or edited since, or read through "
            f"another --camera or --state")
    if finished:
        raise SystemExit(f"{what}, so its model was not trained on them. Train a new run on them (another --out_dir, "
                         f"or --overwrite), or point --data at the data it was trained on.")
    print(f"note: {what}; the rest of the run trains on them.", flush=True)
    return now


def message(e):
    """An error's own message, also where a loader worker raised it: the DataLoader raises it again in the trainer
    with the worker's traceback as its text, the error's line last."""
    lines, name = str(e).splitlines(), type(e).__name__
    if len(lines) > 1 and lines[0].startswith(f"Caught {name} in DataLoader worker"):
        for line in reversed(lines):
            for head in (f"{type(e).__module__}.{name}: ", f"{name}: "):
                if line.startswith(head):
                    return line[len(head):]
    return str(e)


def run_config(cfg, world, accum):
    """config.json: the settings, every path absolute so the run folder is usable from any directory."""
    c = asdict(cfg)
    c["data"] = ",".join(os.path.abspath(path) + colon + rest  # path[:weight[:fps]]
                         for path, colon, rest in (spec.partition(":") for spec in cfg.data.split(",")))
    for k in ("text_cache", "paraphrases", "vae", "wan", "latent_cache", "out_dir"):
        c[k] = os.path.abspath(c[k]) if c[k] else c[k]
    return {**c, "world": world, "accum": accum}


def main(argv):
    cfg = configure(argv)
    try:
        train(cfg, *setup_distributed())
    except (DataError, TextCacheError, CheckpointError) as e:  # bad input: its message, not a traceback
        raise SystemExit(message(e)) from None
    finally:
        # loader workers ignore SIGTERM (ignore_stop_signals), so one still busy with the batches it prefetched would
        # hang the exit, which terminates and then joins them: whatever ended training, they are done
        for p in multiprocessing.active_children():
            p.kill()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Train WVM (SPEC.md §6).

    python train.py --data=data/metaworld/train --text_cache=runs/text --out_dir=runs/tiny      # one process
    torchrun --nproc_per_node=8 train.py config.py --wan=/ckpt/Wan2.2-TI2V-5B --vae=/ckpt/Wan2.2-TI2V-5B/Wan2.2_VAE.pth

Configuration, nanoGPT style: the TrainConfig defaults below (the paper's recipe), then any python
files given as arguments (plain assignments), then --key=value flags. The run folder (out_dir) gets
config.json, log.jsonl (one line per step), ckpt/ (the exact training state, for --resume) and
wvm.safetensors (the model, for eval.py).

Parallelism: DDP for small models, FSDP2 (`--parallel=fsdp`) for the 5.7B one, with activation
checkpointing per MoT layer; bf16 autocast with fp32 master weights on GPU, fp32 on CPU (gloo).
Sample i of the run is a pure function of (seed, i) (data.ClipDataset) and so is its flow noise,
so the global batch of a step is the same whatever the number of processes, and a resumed run
repeats the uninterrupted one exactly.
"""
import ast
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from tqdm import tqdm

import flow
from model import WVM, save_wvm, wvm_configs, wvm_from_wan


@dataclass
class TrainConfig:
    # data
    data: str = "data/metaworld/train"  # comma-separated sources: path[:weight[:fps]] (LeRobot, EgoDex, .jsonl manifest)
    camera: str = ""                    # LeRobot video key (default: the first one)
    text_cache: str = "data/metaworld/text_cache"  # umT5 embeddings from encode_text.py
    fps: float = 2.0                    # latent target fps
    resolution: int = 256
    rewind: float = 0.5
    plateau: float = 0.1
    prefix_p: float = 0.5
    latent_cache: str = ""              # folder for VAE latents of clips (the VAE is frozen)
    num_workers: int = 2
    # model
    size: str = "tiny"                  # tiny | mid | full (wvm_configs)
    value_head: str = "flow"            # flow | regression | hlgauss
    mask: str = "causal"
    wan: str = ""                       # Wan2.2 DiT checkpoint for the video stream (else random init)
    vae: str = ""                       # Wan2.2 VAE checkpoint (else a random tiny VAE, saved with the run)
    video_loss_weight: float = 1.0      # lambda
    video_shift: float = 5.0
    value_shift: float = 1.0
    # optimization (paper Table A.1)
    max_steps: int = 30000
    batch_size: int = 1024              # global, reached by gradient accumulation
    micro_batch: int = 8                # per process and forward
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # system
    parallel: str = "ddp"               # ddp | fsdp
    checkpointing: bool = False         # activation checkpointing per MoT layer
    dtype: str = "auto"                 # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    out_dir: str = "runs/wvm"
    ckpt_every: int = 1000
    log_every: int = 1
    resume: bool = False
    seed: int = 0


def configure(argv):
    """TrainConfig from python files (assignments) and --key=value flags, in order."""
    cfg, types = TrainConfig(), {f.name: f.type for f in fields(TrainConfig)}

    def setkey(k, v):
        if k not in types:
            raise SystemExit(f"unknown config key {k!r}; known: {', '.join(types)}")
        if isinstance(v, str) and types[k] is not str:
            v = ast.literal_eval(v)
        if types[k] is float and isinstance(v, int):
            v = float(v)
        if not isinstance(v, types[k]):
            raise SystemExit(f"config {k}={v!r}: expected {types[k].__name__}")
        setattr(cfg, k, v)

    for arg in argv:
        if arg.startswith("--"):
            k, _, v = arg[2:].partition("=")
            setkey(k, v if v else "True")
        else:
            scope = {}
            with open(arg) as f:
                exec(f.read(), scope)
            for k, v in scope.items():
                if not k.startswith("__"):
                    setkey(k, v)
    return cfg


# ----------------------------------------------------------------------------------------------
# data

def open_sources(cfg):
    from data import ClipDataset, Source, read_dataset

    sources = []
    for spec in cfg.data.split(","):
        path, *rest = spec.split(":")
        weight = float(rest[0]) if rest else 1.0
        fps = float(rest[1]) if len(rest) > 1 else None
        sources.append(Source(read_dataset(path, camera=cfg.camera or None), weight, fps))
    return ClipDataset(sources, fps=cfg.fps, size=cfg.resolution, seed=cfg.seed, rewind=cfg.rewind,
                       plateau=cfg.plateau, prefix=cfg.prefix_p, length=cfg.max_steps * cfg.batch_size)


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


def flow_noise(seeds, latent_shape, h, video_shift, value_shift):
    """Per-sample flow times and noise, each drawn from the sample's own seed."""
    out = {"sigma_video": [], "noise_video": [], "sigma_value": [], "noise_value": []}
    C, _, H, W = latent_shape
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(seed)
        out["sigma_video"].append(flow.sample_sigma(1, video_shift, g))
        out["noise_video"].append(torch.randn(C, 1, H, W, generator=g))
        out["sigma_value"].append(flow.sample_sigma(1, value_shift, g))
        out["noise_value"].append(torch.randn(h, generator=g))
    return {k: torch.cat(v) if k.startswith("sigma") else torch.stack(v) for k, v in out.items()}


def model_inputs(batch, vae, text_cache, cfg, chunk, device, latent_cache=None):
    """A collated ClipDataset batch -> the dict WVM.forward takes (latents, text features, seeded noise)."""
    keys, lat = batch["clip_key"], list(batch["latents"])  # latents the loader found cached, else None
    miss = [i for i, z in enumerate(lat) if z is None]
    if miss:  # encode the clips not cached yet in one batch (frames holds exactly those, in order)
        z = vae.encode(batch["frames"].to(device))
        for j, i in enumerate(miss):
            lat[i] = z[j]
            if latent_cache is not None:
                latent_cache.put(keys[i], z[j])
    lat = torch.stack([z.to(device) for z in lat])[:, :, 1:].float()  # drop the prefix latent: current, future
    ctx = [text_cache.get(t) for t in batch["text"]]
    L = max(c.shape[0] for c in ctx)
    context = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, L - c.shape[0])) for c in ctx])
    noise = flow_noise(batch["seed"], lat.shape[1:], chunk, cfg.video_shift, cfg.value_shift)
    return {"latents": lat, "context": context.to(device), "values": batch["values"].to(device),
            **{k: v.to(device) for k, v in noise.items()}}


# ----------------------------------------------------------------------------------------------
# model, parallelism, schedule, MFU

def build_model(cfg, device):
    video_cfg, value_cfg = wvm_configs(cfg.size, head=cfg.value_head)
    opts = dict(mask=cfg.mask, video_loss_weight=cfg.video_loss_weight, video_shift=cfg.video_shift,
                value_shift=cfg.value_shift)
    torch.manual_seed(cfg.seed)  # the same fresh weights on every process
    if cfg.wan:
        model = wvm_from_wan(cfg.wan, value_cfg, **opts)
    else:
        model = WVM(video_cfg, value_cfg, **opts)
    model.checkpointing = cfg.checkpointing
    return model


def build_vae(cfg, device, dataset):
    from wan_vae import VAE_CONFIGS, WanVAE, calibrate_latents, load_wan_vae

    if cfg.vae:
        vae = load_wan_vae(cfg.vae)
    else:  # no weights can be downloaded for the demo: a fixed random tiny VAE (saved with the run)
        torch.manual_seed(cfg.seed + 1)
        vae = WanVAE(VAE_CONFIGS["tiny"]).eval()
        calibrate_latents(vae, torch.stack([dataset[i]["frames"] for i in range(64)]))
    return vae.to(device).eval().requires_grad_(False)


def parallelize(model, cfg, device, world, mp_dtype):
    if world == 1 and cfg.parallel == "ddp":
        return model.to(device)
    if cfg.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mesh = init_device_mesh(device.type, (world,))
        mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
        for block in [*model.video.blocks, *model.value.blocks]:
            fully_shard(block, mesh=mesh, mp_policy=mp)
            for method in ("qkv", "finish"):  # the MoT loop calls these, not forward
                register_fsdp_forward_method(block, method)
        return fully_shard(model, mesh=mesh, mp_policy=mp)
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = model.to(device)
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                   find_unused_parameters=cfg.video_loss_weight == 0)  # lambda = 0 leaves the video head unused
    raise SystemExit(f"parallel={cfg.parallel!r}: expected ddp or fsdp")


def lr_at(step, cfg):
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_flops_per_sample(model, n_tokens_per_frame):
    """Matmul FLOPs of one training sample (forward + backward = 3x forward), attention included."""
    v, u = model.video.cfg, model.value.cfg
    n, nu, txt = 2 * n_tokens_per_frame, 1 + u.chunk, v.text_len
    A = v.num_heads * v.head_dim

    def stream(tokens, dim, ffn):
        per_token = 4 * dim * A + 2 * dim * dim + 2 * dim * ffn   # q,k,v,o + cross q,o + ffn
        return tokens * per_token + txt * 2 * dim * dim           # + cross k,v over the text

    macs = v.num_layers * (stream(n, v.dim, v.ffn_dim) + stream(nu, u.dim, u.ffn_dim))
    pairs = n_tokens_per_frame ** 2 * 3 + nu * (n_tokens_per_frame + nu)  # block-causal video + value rows
    macs += v.num_layers * (2 * pairs * A + (n * v.dim + nu * u.dim) * txt * 2)  # self + cross attention
    return 3 * 2 * macs


def peak_flops(device):
    """Peak dense bf16 FLOP/s of known GPUs; on CPU the fp32 matmul rate measured here (so MFU is relative)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)):
            if key in name:
                return flops
        return float("nan")
    a = torch.randn(1024, 1024)
    a @ a
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ a
        n += 1
    return n * 2 * 1024 ** 3 / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# checkpoints: ckpt/ holds the exact training state (torch.distributed.checkpoint, sharded under
# FSDP); wvm.safetensors the model for eval. Both are replaced atomically (write, then rename).

def save_checkpoint(model, opt, step, cfg, rank):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    ckpt, tmp = os.path.join(cfg.out_dir, "ckpt"), os.path.join(cfg.out_dir, "ckpt.tmp")
    if rank == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    barrier()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save({"step": step, "torch_rng": torch.get_rng_state()}, os.path.join(tmp, f"trainer_rank{rank}.pt"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    barrier()
    if rank == 0:
        if os.path.exists(ckpt):
            os.replace(ckpt, ckpt + ".old")
        os.replace(tmp, ckpt)
        shutil.rmtree(ckpt + ".old", ignore_errors=True)
        export = unwrap(model)
        with torch.device("meta"):
            shell = WVM(export.video.cfg, export.value.cfg, mask=export.mask)
        shell.load_state_dict(full, assign=True)
        save_wvm(shell, os.path.join(cfg.out_dir, "wvm.safetensors"))
    barrier()


def load_checkpoint(model, opt, cfg, rank):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if not os.path.isdir(ckpt) and os.path.isdir(ckpt + ".old"):  # died between the two renames
        ckpt += ".old"
    if not os.path.isdir(ckpt):
        raise SystemExit(f"--resume: no checkpoint in {cfg.out_dir}")
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = torch.load(os.path.join(ckpt, f"trainer_rank{rank}.pt"), weights_only=True)
    torch.set_rng_state(trainer["torch_rng"])
    return trainer["step"]


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
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def train(cfg, world, rank, device):
    """Run (or resume) training; returns the (wrapped) model."""
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp32": torch.float32}[cfg.dtype]
    accum, rem = divmod(cfg.batch_size, cfg.micro_batch * world)
    if rem or accum == 0:
        raise SystemExit(f"batch_size {cfg.batch_size} is not a multiple of micro_batch {cfg.micro_batch} x "
                         f"{world} processes")
    os.makedirs(cfg.out_dir, exist_ok=True)
    master = rank == 0

    from data import collate
    from encode_text import TextCache

    dataset = open_sources(cfg)
    text_cache = TextCache(cfg.text_cache)
    vae = build_vae(cfg, device, dataset)
    model = build_model(cfg, device)
    chunk = model.chunk
    model = parallelize(model, cfg, device, world, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    start = load_checkpoint(model, opt, cfg, rank) if cfg.resume else 0
    if master:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump({**asdict(cfg), "world": world, "accum": accum}, f, indent=1)
        if not cfg.vae:
            from wan_vae import save_wan_vae
            save_wan_vae(vae, os.path.join(cfg.out_dir, "vae.safetensors"))
    latent_cache = None
    if cfg.latent_cache:
        from wan_vae import LatentCache
        latent_cache = LatentCache(cfg.latent_cache, vae)
        dataset.latent_dir = latent_cache.dir

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(start, cfg.max_steps, accum, cfg.micro_batch, rank, world),
        num_workers=cfg.num_workers, collate_fn=collate, persistent_workers=cfg.num_workers > 0,
        prefetch_factor=4 if cfg.num_workers > 0 else None)
    batches = iter(loader)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))

    tokens_per_frame = (cfg.resolution // 32) ** 2
    flops = train_flops_per_sample(unwrap(model), tokens_per_frame) * cfg.batch_size
    peak = peak_flops(device) * world
    log_file = open(os.path.join(cfg.out_dir, "log.jsonl"), "a") if master else None
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not master, desc="train", dynamic_ncols=True)
    step, t_last = start, time.perf_counter()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        sums = torch.zeros(3, device=device)
        for m in range(accum):
            inputs = model_inputs(next(batches), vae, text_cache, cfg, chunk, device, latent_cache)
            last = m == accum - 1
            if cfg.parallel == "fsdp" and world > 1:
                model.set_requires_gradient_sync(last)
            sync = model.no_sync() if (cfg.parallel == "ddp" and world > 1 and not last) else contextlib.nullcontext()
            with sync, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = model(inputs)
                (out["loss"] / accum).backward()
            sums += torch.stack([out["loss"].detach(), out["loss_value"].detach(), out["loss_video"].detach()]) / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(sums)
            sums /= world
        step += 1
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if master and (step % cfg.log_every == 0 or step == cfg.max_steps):
            rec = {"step": step, "loss": sums[0].item(), "loss_value": sums[1].item(), "loss_video": sums[2].item(),
                   "lr": lr, "grad_norm": grad_norm.item(), "samples_per_s": cfg.batch_size / dt,
                   "mfu": flops / dt / peak}
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", value=f"{rec['loss_value']:.4f}", mfu=f"{rec['mfu']:.1%}")
        bar.update(1)
        stop_now = torch.tensor(float(stop["now"]), device=device)
        if world > 1:  # every process must agree before saving
            dist.all_reduce(stop_now)
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps or stop_now.item():
            save_checkpoint(model, opt, step, cfg, rank)
        if stop_now.item():
            if master:
                print(f"SIGTERM: saved the state of step {step} in {cfg.out_dir}/ckpt; continue with --resume")
            break
    bar.close()
    if master:
        print(f"done: step {step}/{cfg.max_steps}, loss {sums[0].item():.4f} (value {sums[1].item():.4f}, video "
              f"{sums[2].item():.4f}), model in {os.path.join(cfg.out_dir, 'wvm.safetensors')}")
        log_file.close()
    return model


def main(argv):
    cfg = configure(argv)
    train(cfg, *setup_distributed())
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

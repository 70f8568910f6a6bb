"""train.py: config parsing, schedule, DDP / FSDP2 equivalence with one process (torchrun + gloo), exact resume."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from data import write_lerobot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny LeRobot v3.0 dataset (a block sliding right) and its text cache."""
    import encode_text

    root = tmp_path_factory.mktemp("train")

    def episodes():
        for e in range(4):
            T = 24 + 4 * e
            frames = np.full((T, 32, 32, 3), 40, np.uint8)
            for t in range(T):
                x = int(2 + 22 * t / (T - 1))
                frames[t, 10:22, x:x + 6] = (250, 120, 10)
            yield {"frames": frames, "task": ["push the block right", "slide the block"][e % 2]}

    write_lerobot(root / "ds", episodes(), fps=8, codec="libx264")
    tok, enc = encode_text.tiny_random_encoder(["push the block right", "slide the block"], d_model=32)
    encode_text.build_cache(["push the block right", "slide the block"], tok, enc, root / "text", dtype=torch.float32,
                            text_len=16)
    return root


def args(dataset, out, **kw):
    base = dict(data=str(dataset / "ds"), text_cache=str(dataset / "text"), out_dir=str(out), resolution=32,
                max_steps=4, batch_size=4, micro_batch=2, warmup=2, lr=2e-3, ckpt_every=2, num_workers=0, log_every=1)
    base.update(kw)
    return [f"--{k}={v}" for k, v in base.items()]


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in recs}  # a resumed run appends; the last record of a step wins


def run(cmd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_configure_files_then_flags(tmp_path):
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("lr = 3e-4\nsize = 'mid'\nmax_steps = 10\n")
    cfg = train.configure([str(cfg_file), "--max_steps=20", "--checkpointing", "--data=a:2,b"])
    assert (cfg.lr, cfg.size, cfg.max_steps, cfg.checkpointing, cfg.data) == (3e-4, "mid", 20, True, "a:2,b")
    assert cfg.beta2 == 0.95 and cfg.batch_size == 1024 and cfg.warmup == 500  # the paper's recipe by default
    with pytest.raises(SystemExit, match="unknown config key 'lrr'"):
        train.configure(["--lrr=1"])
    with pytest.raises(SystemExit, match="expected int"):
        train.configure(["--max_steps=1.5"])


def test_lr_schedule_hand_values():
    cfg = train.TrainConfig(lr=1e-4, warmup=500, max_steps=30000, min_lr_ratio=0.1)
    assert train.lr_at(0, cfg) == pytest.approx(1e-4 / 500)
    assert train.lr_at(499, cfg) == pytest.approx(1e-4)
    assert train.lr_at(500, cfg) == pytest.approx(1e-4)
    mid = 500 + (30000 - 500) // 2
    assert train.lr_at(mid, cfg) == pytest.approx(1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert train.lr_at(30000, cfg) == pytest.approx(1e-5)


def test_step_batches_split_the_same_global_batch():
    one = [i for b in train.StepBatches(0, 2, accum=4, micro=2, rank=0, world=1) for i in b]
    two = [sorted(i for b in train.StepBatches(0, 2, accum=2, micro=2, rank=r, world=2) for i in b) for r in (0, 1)]
    assert one == list(range(16)) and sorted(two[0] + two[1]) == one
    resumed = [i for b in train.StepBatches(1, 2, accum=4, micro=2, rank=0, world=1) for i in b]
    assert resumed == list(range(8, 16))


PARAMS_DUMP = """
import sys, torch, torch.distributed as dist
import train
cfg = train.configure(sys.argv[2:])
model = train.train(cfg, *train.setup_distributed())
sd = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in train.unwrap(model).state_dict().items()}
flat = torch.cat([v.flatten().float() for _, v in sorted(sd.items())])
out = [torch.zeros_like(flat) for _ in range(dist.get_world_size())] if dist.is_initialized() else [flat]
if dist.is_initialized():
    dist.all_gather(out, flat)
if not dist.is_initialized() or dist.get_rank() == 0:
    torch.save({"ranks": out}, sys.argv[1])
if dist.is_initialized():
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(dataset, tmp_path, parallel):
    script = tmp_path / "dump.py"
    script.write_text(PARAMS_DUMP)
    single = run([sys.executable, str(script), str(tmp_path / "p1.pt"), *args(dataset, tmp_path / "one", max_steps=3)])
    assert single.returncode == 0, single.stderr[-3000:]
    multi = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                 str(tmp_path / "p2.pt"), *args(dataset, tmp_path / "two", max_steps=3, parallel=parallel)])
    assert multi.returncode == 0, multi.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == [1, 2, 3] and sorted(b) == [1, 2, 3]
    for s in a:  # same global batch, same noise: same loss up to fp32 summation order
        assert a[s] == pytest.approx(b[s], rel=1e-4), (s, a[s], b[s])
    ranks = torch.load(tmp_path / "p2.pt")["ranks"]
    assert torch.equal(ranks[0], ranks[1])  # every process holds the same model
    ref = torch.load(tmp_path / "p1.pt")["ranks"][0]
    torch.testing.assert_close(ranks[0], ref, rtol=1e-3, atol=1e-5)


def test_sigterm_then_resume_repeats_the_uninterrupted_run(dataset, tmp_path):
    full = run([sys.executable, "train.py", *args(dataset, tmp_path / "full", max_steps=6, ckpt_every=100)])
    assert full.returncode == 0, full.stderr[-3000:]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "train.py", *args(dataset, tmp_path / "cut", max_steps=6, ckpt_every=100)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved the state of step" in out
    stopped = max(losses(tmp_path / "cut"))
    assert 2 <= stopped < 6
    resumed = run([sys.executable, "train.py", *args(dataset, tmp_path / "cut", max_steps=6, ckpt_every=100, resume=True)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 7))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # exactly, not approximately


def test_flops_count_matches_hand_count():
    from model import WVM, wvm_configs
    with torch.device("meta"):
        m = WVM(*wvm_configs("full"))
    # 256 x 256 frames: 8 x 8 = 64 tokens per latent frame, 2 frames, 5 value tokens, 512 text tokens
    n, nu, txt, A = 128, 5, 512, 3072
    video = n * (4 * 3072 * A + 2 * 3072 ** 2 + 2 * 3072 * 14336) + txt * 2 * 3072 ** 2
    value = nu * (4 * 512 * A + 2 * 512 ** 2 + 2 * 512 * 14336) + txt * 2 * 512 ** 2
    attn = 2 * (64 * 64 * 3 + 5 * 69) * A + (n * 3072 + nu * 512) * txt * 2
    assert train.train_flops_per_sample(m, 64) == 6 * 30 * (video + value + attn)


def test_latent_cache_gives_the_same_training(dataset, tmp_path):
    """The VAE is frozen: a run that fills the latent cache and a run that only reads it repeat the run
    that encodes every clip on the fly, loss for loss."""
    base = run([sys.executable, "train.py", *args(dataset, tmp_path / "base", max_steps=3)])
    assert base.returncode == 0, base.stderr[-3000:]
    cache = tmp_path / "latents"
    stored = []
    for name in ("fill", "read"):
        r = run([sys.executable, "train.py", *args(dataset, tmp_path / name, max_steps=3, latent_cache=str(cache))])
        assert r.returncode == 0, r.stderr[-3000:]
        assert losses(tmp_path / name) == losses(tmp_path / "base")
        stored.append(len(list(cache.rglob("*.safetensors"))))
    ds = train.open_sources(train.configure(args(dataset, tmp_path / "x", max_steps=3)))
    distinct = len({ds[i]["clip_key"] for i in range(12)})  # 3 steps x 4 samples; a clip can repeat
    assert stored == [distinct, distinct]  # each clip stored once, nothing re-encoded on the second run
    ds.latent_dir = str(next(cache.iterdir()))  # what train.py sets: loader workers then skip decoding
    assert all(ds[i]["frames"] is None and ds[i]["latents"].shape == (48, 3, 2, 2) for i in range(12))

"""train.py: config parsing, schedule, DDP / FSDP2 equivalence with one process (torchrun + gloo), exact resume."""
import json
from dataclasses import replace
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from conftest import spoil_frames
from sim import write_lerobot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the processes these tests start are CPU ones (gloo), also on a machine with a GPU: two of them need two devices
CPU = dict(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def block_episodes(n, shift=0):
    """n episodes of a block sliding right (starting `shift` pixels further right), with the robot's state."""
    for e in range(n):
        T = 24 + 4 * e
        frames = np.full((T, 32, 32, 3), 40, np.uint8)
        for t in range(T):
            x = int(2 + shift + (22 - shift) * t / (T - 1))
            frames[t, 10:22, x:x + 6] = (250, 120, 10)
        state = np.stack([np.linspace(0, 1, T), np.full(T, e), np.sin(np.arange(T)), np.ones(T)], 1)  # the robot's
        yield {"frames": frames, "task": ["push the block right", "slide the block"][e % 2], "observation.state": state}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny LeRobot v3.0 dataset (a block sliding right) and its text cache."""
    import encode_text

    root = tmp_path_factory.mktemp("train")

    write_lerobot(root / "ds", block_episodes(4), fps=8, codec="libx264")
    tok, enc = encode_text.tiny_random_encoder(32)
    encode_text.build_cache(["push the block right", "slide the block"], tok, enc, root / "text", dtype=torch.float32,
                            text_len=16, encoder={"id": "tiny:32", "flags": "--tiny_random 32 --text_len 16"})
    return root


def args(dataset, out, **kw):
    base = dict(data=str(dataset / "ds"), text_cache=str(dataset / "text"), out_dir=str(out), resolution=32,
                max_steps=4, batch_size=4, micro_batch=2, warmup=2, lr=2e-3, ckpt_every=2, num_workers=0, log_every=1)
    base.update(kw)
    return [f"--{k}={v}" for k, v in base.items()]


def wait_for_log(out, lines, timeout=300):
    """Until the run in `out` has logged this many steps (0: until its log exists), polling every 10 ms."""
    log, deadline = out / "log.jsonl", time.time() + timeout
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= lines):
        time.sleep(0.01)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in recs}  # a resumed run appends; the last record of a step wins


def run(cmd, **kw):
    env = dict(os.environ, **CPU, PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **{"timeout": 600, **kw})


def test_undecodable_data_or_cache_stops_with_one_line(dataset, tmp_path):
    """Every video undecodable, read in a loader worker: the worker's error as one line, and the run exits (its
    workers ignore SIGTERM, and one busy with its prefetched batches hung the exit); an unreadable latent cache file
    likewise, from the main process."""
    ds = tmp_path / "ds"
    shutil.copytree(dataset / "ds", ds)
    for mp4 in ds.rglob("*.mp4"):
        spoil_frames(mp4)
    r = run([sys.executable, "train.py", *args(dataset, tmp_path / "out", data=ds, max_steps=1, num_workers=1)],
            timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("ClipDataset: sample ")
    assert "episodes in a row failed to decode" in r.stderr.strip().splitlines()[-1]
    cache = tmp_path / "latents"
    assert run([sys.executable, "train.py", *args(dataset, tmp_path / "a", max_steps=1, latent_cache=cache)]
               ).returncode == 0
    spoiled = sorted(cache.rglob("*.safetensors"))[0]
    spoiled.write_bytes(b"garbage")
    r = run([sys.executable, "train.py", *args(dataset, tmp_path / "b", max_steps=1, latent_cache=cache)], timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"{spoiled}: unreadable latent cache file (")


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
    # a quarter of the way: cosine, 0.1 + 0.45 (1 + cos(pi / 4)) of lr (a linear decay matches at the middle only)
    assert train.lr_at(500 + 29500 // 4, cfg) == pytest.approx(1e-4 * (0.1 + 0.45 * (1 + 2 ** -0.5)))
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
del model, sd  # the FSDP model holds the process group: freed at interpreter exit, gloo's threads may outlive it
import gc
gc.collect()
if dist.is_initialized():  # together: a rank that tore gloo down while the other saved aborted once under load
    dist.barrier()
    dist.destroy_process_group()
"""


# FSDP2 with two parameter groups, and with activation checkpointing; the video stage (the value stream never runs)
# with two micro-batches per process, and checkpointing per block
@pytest.mark.parametrize("parallel,kw", [("ddp", {}), ("fsdp", dict(video_lr=0.5)), ("fsdp", dict(checkpointing=True)),
                                         ("fsdp", dict(stage="video", rewind=0.0, batch_size=8, checkpointing=True))])
def test_two_processes_match_one(dataset, tmp_path, parallel, kw):
    script = tmp_path / "dump.py"
    script.write_text(PARAMS_DUMP)
    single = run([sys.executable, str(script), str(tmp_path / "p1.pt"),
                  *args(dataset, tmp_path / "one", max_steps=3, **kw)])
    assert single.returncode == 0, single.stderr[-3000:]
    multi = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                 str(tmp_path / "p2.pt"), *args(dataset, tmp_path / "two", max_steps=3, parallel=parallel, **kw)])
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "Warning" not in multi.stderr, multi.stderr[-3000:]  # a warning on every run teaches users to skip them
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == [1, 2, 3] and sorted(b) == [1, 2, 3]
    for s in a:  # same global batch, same noise: same loss up to fp32 summation order
        assert a[s] == pytest.approx(b[s], rel=1e-4), (s, a[s], b[s])
    ranks = torch.load(tmp_path / "p2.pt")["ranks"]
    assert torch.equal(ranks[0], ranks[1])  # every process holds the same model
    ref = torch.load(tmp_path / "p1.pt")["ranks"][0]
    torch.testing.assert_close(ranks[0], ref, rtol=1e-3, atol=1e-5)


GATHERS = """
import sys, types, torch, torch.distributed as dist
import train
from wvm import WVM, wvm_configs
count = {"all_gather": 0, "reduce_scatter": 0}
for name in count:  # what FSDP2's default collectives call
    def counted(*a, _f=getattr(dist, name + "_single"), _n=name, **k):
        count[_n] += 1
        return _f(*a, **k)
    setattr(dist, name + "_single", counted)
dist.init_process_group("gloo")
torch.manual_seed(0)
m = WVM(*wvm_configs("tiny"))
m.video_only = sys.argv[2] == "video"
g = torch.Generator().manual_seed(2)
batch = {"latents": torch.randn(2, 48, 2, 8, 6, generator=g), "context": torch.randn(2, 7, 32, generator=g),
         "values": torch.rand(2, 5, generator=g), "sigma_video": torch.tensor([0.3, 0.8]),
         "noise_video": torch.randn(2, 48, 1, 8, 6, generator=g), "sigma_value": torch.tensor([0.5, 0.2]),
         "noise_value": torch.randn(2, 4, generator=g)}
f = train.parallelize(m, types.SimpleNamespace(parallel="fsdp", stage=sys.argv[2]), torch.device("cpu"), 2)
f(batch)["loss"].backward()
if dist.get_rank() == 0:
    torch.save(count, sys.argv[1])
del f, m  # as in PARAMS_DUMP: the FSDP model holds the process group
import gc
gc.collect()
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("stage", ["value", "video"])
def test_fsdp_gathers_each_layer_once_per_pass(tmp_path, stage):
    """FSDP2 gathers a unit's parameters for each call registered as its forward, and reshards after it: a block's
    qkv and finish, both registered, gathered it twice in forward and twice in backward. One unit per MoT layer,
    called once (WVM.layer as the video block's mot_layer), and per block in the video stage: one forward and one
    backward gather per layer (the tiny model's 2), one for the root (1 + 2 + 2, where there were 1 + 8 + 8 and, in
    the video stage, 1 + 4 + 4), one reduce-scatter per unit whose parameters have gradients."""
    script = tmp_path / "gathers.py"
    script.write_text(GATHERS)
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
             str(tmp_path / "count.pt"), stage])
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(tmp_path / "count.pt") == {"all_gather": 5, "reduce_scatter": 3}


def test_fsdp_keeps_the_fp32_parameters_in_fp32_under_bf16(tmp_path):
    """FSDP2 computes in bf16 through autocast, as DDP does, not by casting every parameter: the time embedding,
    modulation, norms and head stay fp32 in the forward, and the loss equals the unwrapped model's."""
    import copy
    import types

    import torch.distributed as dist
    from wvm import WVM, wvm_configs

    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    with torch.no_grad():  # the value head starts at zero; randomize it so that its output means something
        m.value.head.head.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(2)
    batch = {"latents": torch.randn(2, 48, 2, 8, 6, generator=g), "context": torch.randn(2, 7, 32, generator=g),
             "values": torch.rand(2, 5, generator=g), "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.randn(2, 48, 1, 8, 6, generator=g), "sigma_value": torch.tensor([0.5, 0.2]),
             "noise_value": torch.randn(2, 4, generator=g)}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        f, seen = copy.deepcopy(m), {}
        block, qkv = f.value.blocks[0], f.value.blocks[0].qkv  # called inside the layer, its unit's parameters gathered
        block.qkv = lambda *a, **k: (seen.update(modulation=block.modulation.dtype), qkv(*a, **k))[1]
        f = train.parallelize(f, types.SimpleNamespace(parallel="fsdp", stage="value"), torch.device("cpu"), 1)
        f.video.head.register_forward_pre_hook(lambda mod, _: seen.update(head=mod.head.weight.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = m(batch), f(batch)
    finally:
        dist.destroy_process_group()
    assert seen == {"head": torch.float32, "modulation": torch.float32}
    for k in ("loss_value", "loss_video"):
        assert got[k].item() == want[k].item()


def test_the_backward_pass_runs_outside_autocast():
    """Autocast is carried into the backward pass: run inside it, the matmuls of what the forward keeps in fp32 (the
    head, the time embedding, modulation) were bf16 there, their gradients rounded to bf16 (a helper measured 0.13 on
    one F.linear's weight). No gradient of a training step is computed under autocast; the loss is the forward's."""
    from wvm import WVM, wvm_configs

    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    g = torch.Generator().manual_seed(2)
    batch = {"latents": torch.randn(2, 48, 2, 8, 6, generator=g), "context": torch.randn(2, 7, 32, generator=g),
             "values": torch.rand(2, 5, generator=g), "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.randn(2, 48, 1, 8, 6, generator=g), "sigma_value": torch.tensor([0.5, 0.2]),
             "noise_value": torch.randn(2, 4, generator=g)}
    under = []
    for name in ("video.head.head.weight", "video.time_embedding.0.weight", "value.blocks.0.modulation"):
        m.get_parameter(name).register_hook(lambda grad: under.append(torch.is_autocast_enabled("cpu")))
    out = train.forward_backward(m, batch, 2, torch.device("cpu"), torch.bfloat16)
    assert under == [False, False, False]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert out["loss"].item() == m(batch)["loss"].item()


def test_sigterm_then_resume_repeats_the_uninterrupted_run(dataset, tmp_path):
    # 20 short steps: the notice must land before the last one, on a busy machine too
    full = run([sys.executable, "train.py", *args(dataset, tmp_path / "full", max_steps=20, ckpt_every=100)])
    assert full.returncode == 0, full.stderr[-3000:]
    env = dict(os.environ, **CPU)
    cmd = [sys.executable, "train.py", *args(dataset, tmp_path / "cut", max_steps=20, ckpt_every=100)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log(tmp_path / "cut", 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM: saved the state of step" in out
    assert "done:" not in out and "done:" in full.stdout  # a stopped run is not called done
    stopped = max(losses(tmp_path / "cut"))
    assert 2 <= stopped < 20
    resumed = run([sys.executable, "train.py", *args(dataset, tmp_path / "cut", max_steps=20, ckpt_every=100, resume=True)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 21))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # exactly, not approximately


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_sigterm_to_the_process_group_with_loader_workers_saves(dataset, tmp_path, name):
    """torchrun and scancel signal every process of the group (SIGTERM), and so does a terminal's Ctrl-C (SIGINT),
    the loader workers too: the trainer still saves, and says which signal stopped it."""
    cmd = [sys.executable, "train.py", *args(dataset, tmp_path / "cut", max_steps=200, ckpt_every=1000, num_workers=1)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **CPU), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for_log(tmp_path / "cut", 2)
    os.killpg(proc.pid, getattr(signal, name))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"{name}: saved the state of step" in out
    assert (tmp_path / "cut" / "ckpt" / "state.json").exists()


def test_a_step_whose_gradient_is_not_finite_is_skipped(dataset, tmp_path, monkeypatch, capsys):
    """An inf in one micro-batch: that step leaves the weights as they were (they and every checkpoint stay finite,
    the run goes on), and as many such steps in a row as MAX_BAD_STEPS stop the run with the checkpoint untouched."""
    from safetensors.torch import load_file
    real, calls = train.model_inputs, {"n": 0, "bad": {5}}

    def poisoned(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] in calls["bad"]:
            out["latents"][0, 0, -1, 0, 0] = float("inf")
        return out
    monkeypatch.setattr(train, "model_inputs", poisoned)
    train.main(args(dataset, tmp_path / "one", max_steps=6))  # accum 2: call 5 is step 3's first micro-batch
    def strict(word):
        raise ValueError(f"{word} is not JSON")  # what JavaScript's or jq's reader would say
    log = [json.loads(line, parse_constant=strict) for line in open(tmp_path / "one" / "log.jsonl")]
    assert [r["grad_norm"] is not None and math.isfinite(r["grad_norm"]) for r in log] == [True] * 2 + [False] + [True] * 3
    assert [r.get("skipped", False) for r in log] == [False, False, True, False, False, False]
    assert "step 3: the gradient is not finite" in capsys.readouterr().out
    saved = load_file(tmp_path / "one" / "ckpt" / "rank00000.safetensors")
    assert all(torch.isfinite(v).all() for k, v in saved.items() if k.startswith("model/"))
    calls.update(n=0, bad=set(range(5, 100)))
    with pytest.raises(SystemExit, match=rf"{train.MAX_BAD_STEPS} steps in a row with a gradient that is not finite"):
        train.main(args(dataset, tmp_path / "many", max_steps=20))
    state = json.loads((tmp_path / "many" / "ckpt" / "state.json").read_text())
    assert state["step"] == 2
    saved = load_file(tmp_path / "many" / "ckpt" / "rank00000.safetensors")
    assert all(torch.isfinite(v).all() for k, v in saved.items() if k.startswith("model/"))


def test_a_crash_while_the_model_is_exported_is_repaired_by_resume(dataset, tmp_path, monkeypatch):
    """Killed while the final wvm.safetensors is written: ckpt/ still holds the step before, so --resume trains the
    last steps again and exports the final model (not a finished run with the model of an earlier step)."""
    from safetensors.torch import load_file
    real, calls = train.save_wvm, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the final save, at step 4
            raise KeyboardInterrupt("killed while writing the model")
        real(*a, **k)
    monkeypatch.setattr(train, "save_wvm", crashing)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(dataset, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "ckpt" / "state.json").read_text())["step"] == 2
    train.main(args(dataset, tmp_path / "run", resume=True))
    assert json.loads((tmp_path / "run" / "ckpt" / "state.json").read_text())["step"] == 4
    ckpt, model = load_file(tmp_path / "run" / "ckpt" / "rank00000.safetensors"), load_file(tmp_path / "run" /
                                                                                            "wvm.safetensors")
    assert all(torch.equal(ckpt["model/" + k], v) for k, v in model.items())


def test_a_resume_on_another_schedule_says_so(dataset, tmp_path, capsys):
    """A finished run resumed with more steps and another batch: allowed (a run may go on), but the samples and the
    learning rate no longer follow one run's, and the launch says how; a warm-up as long as the run is said too."""
    train.main(args(dataset, tmp_path / "run", max_steps=2, warmup=4))
    assert "note: warmup 4 >= max_steps 2: the learning rate stops at 0.001, short of --lr=0.002" in capsys.readouterr().out
    train.main(args(dataset, tmp_path / "run", max_steps=3, warmup=4, resume=True))  # the same batch: only max_steps
    train.main(args(dataset, tmp_path / "run", max_steps=5, batch_size=8, warmup=2, resume=True))
    out = capsys.readouterr().out
    lr_then = train.lr_at(2, train.configure(args(dataset, tmp_path, max_steps=3, warmup=4)))
    assert (f"resuming at step 2 with max_steps 2 -> 3: the samples and learning rates from here on are not the "
            f"uninterrupted run's (the learning rate goes from 0.001 to {lr_then:.3g})") in out
    assert "resuming at step 3 with batch_size 4 -> 8; max_steps 3 -> 5; warmup 4 -> 2:" in out
    # so are the recipe's other settings (augmentation, loss, the mixture's weights), which config.json then records
    train.main(args(dataset, tmp_path / "run", max_steps=6, batch_size=8, warmup=2, resume=True, rewind=0.0,
                    video_loss_weight=0.5, data=f"{dataset / 'ds'}:2"))
    assert (f"{tmp_path / 'run'}: resuming at step 5 with settings other than the run's until now (data "
            f"'{dataset / 'ds'}' -> '{dataset / 'ds'}:2'; rewind 0.5 -> 0.0; video_loss_weight 1.0 -> 0.5): the steps "
            f"from here on are not the uninterrupted run's") in capsys.readouterr().out


def test_a_resume_logs_each_step_once(dataset, tmp_path, monkeypatch):
    """A run that died after logging steps past its last checkpoint trains them again on --resume: log.jsonl keeps
    one line per step, the resumed run's."""
    real = train.save_checkpoint

    def dying(model, opt, step, *a, **k):
        if step == 4:
            raise KeyboardInterrupt("killed")
        real(model, opt, step, *a, **k)
    monkeypatch.setattr(train, "save_checkpoint", dying)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(dataset, tmp_path / "run"))  # logs steps 1-4, saved at step 2
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # and a line the crash cut
    monkeypatch.setattr(train, "save_checkpoint", real)
    train.main(args(dataset, tmp_path / "run", resume=True))
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl")] == [1, 2, 3, 4]


def test_a_checkpoint_save_is_not_counted_in_the_next_steps_speed(dataset, tmp_path, monkeypatch):
    """The logged samples/s and MFU of the step after a save measure that step's training, not the save."""
    real, clock = train.save_checkpoint, {"skew": 0.0}
    monkeypatch.setattr(train.time, "perf_counter", lambda real_clock=time.perf_counter: real_clock() + clock["skew"])

    def slow(*a, **k):  # a save that takes 1000 s on this clock
        real(*a, **k)
        clock["skew"] += 1000.0
    monkeypatch.setattr(train, "save_checkpoint", slow)
    train.main(args(dataset, tmp_path / "run"))  # saves at steps 2 and 4
    speed = {r["step"]: r["samples_per_s"] for r in map(json.loads, open(tmp_path / "run" / "log.jsonl"))}
    assert speed[3] > 4 / 100  # 4 samples in far less than 100 s; with the save counted, under 4 / 1000


def test_a_gpu_without_a_known_peak_logs_its_mfu_as_null(dataset, tmp_path, monkeypatch):
    """peak_flops is NaN on a GPU missing from its table (an L40, an RTX card): the run trains and logs MFU null."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA L40")
    assert math.isnan(train.peak_flops(torch.device("cuda")))
    monkeypatch.setattr(train, "peak_flops", lambda *a: float("nan"))
    train.main(args(dataset, tmp_path / "run", max_steps=2))
    recs = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["mfu"] for r in recs] == [None, None] and all(r["samples_per_s"] > 0 for r in recs)


def test_the_mfu_peak_is_that_of_the_runs_dtype(monkeypatch):
    """--dtype fp32 on a GPU: MFU against the fp32 peak, not the bf16 tensor cores' (15x more on an H100)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    gpu = torch.device("cuda")
    assert train.peak_flops(gpu) == train.peak_flops(gpu, torch.bfloat16) == 989e12
    assert train.peak_flops(gpu, torch.float32) == 67e12


def test_an_h100_pcie_gets_its_own_peak(monkeypatch):
    """The PCIe H100 (756 TFLOP/s dense bf16) and the NVL cards (835) are not the SXM ones (989)."""
    for name, peak in (("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200 NVL", 835e12),
                       ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, name=name: name)
        assert train.peak_flops(torch.device("cuda")) == peak, name


def test_the_cpu_peak_is_measured_before_the_loader_workers_start(dataset, tmp_path, monkeypatch):
    """On CPU the MFU's peak is a matmul rate measured at start; loader workers already decoding and encoding then
    took the cores (a third of the idle rate on 2, the MFU logged over 100%)."""
    import multiprocessing

    real, busy = train.peak_flops, []
    monkeypatch.setattr(train, "peak_flops", lambda *a: busy.append(len(multiprocessing.active_children())) or real(*a))
    train.main(args(dataset, tmp_path / "run", max_steps=2, num_workers=2, encode_in_loader=True))
    assert busy == [0]


def test_dropped_instructions_get_the_empty_context():
    class Cache:  # features [len(text), 3] filled with len(text)
        def get(self, text):
            return torch.full((len(text), 3), float(len(text)))

    class Model:
        def flow_noise(self, seeds, shape):
            return {}

    batch = {"clip_key": ["a", "b", "c"], "latents": torch.zeros(3, 48, 2, 1, 1), "values": torch.zeros(3, 5),
             "seed": torch.arange(3), "text": ["ab", "abcd", "abc"], "text_dropped": [False, True, False]}
    context = train.model_inputs(batch, Model(), None, Cache(), "cpu")["context"]
    expected = torch.zeros(3, 4, 3)
    expected[0, :2], expected[2, :3] = 2.0, 3.0  # kept: its features, zero-padded; dropped: zeros throughout
    assert torch.equal(context, expected)


def test_flops_count_matches_hand_count():
    from wvm import WVM, wvm_configs
    with torch.device("meta"):
        m = WVM(*wvm_configs("full"))
    # 256 x 256 frames: 8 x 8 = 64 tokens per latent frame, 2 frames, 5 value tokens, 512 text tokens
    n, nu, txt, A = 128, 5, 512, 3072
    video = n * (4 * 3072 * A + 2 * 3072 ** 2 + 2 * 3072 * 14336) + txt * 2 * 3072 ** 2
    value = nu * (4 * 512 * A + 2 * 512 ** 2 + 2 * 512 * 14336) + txt * 2 * 512 ** 2
    attn = 2 * (64 * 64 * 3 + 5 * 69) * A + (n * 3072 + nu * 512) * txt * 2
    assert train.train_flops_per_sample(m, 64) == 6 * 30 * (video + value + attn)
    # led by the episode's first frame: 3 latent frames, the first two the context (each sees both), the future all
    n = 192
    video = n * (4 * 3072 * A + 2 * 3072 ** 2 + 2 * 3072 * 14336) + txt * 2 * 3072 ** 2
    attn = 2 * (128 * 128 + 64 * 192 + 5 * (128 + 5)) * A + (n * 3072 + nu * 512) * txt * 2
    assert train.train_flops_per_sample(m, 64, context_frames=2) == 6 * 30 * (video + value + attn)
    m.mask = "full"  # every video token sees every other
    attn = 2 * (192 * 192 + 5 * (128 + 5)) * A + (n * 3072 + nu * 512) * txt * 2
    assert train.train_flops_per_sample(m, 64, context_frames=2) == 6 * 30 * (video + value + attn)


def test_latent_cache_gives_the_same_training(dataset, tmp_path):
    """The VAE is frozen: a run that fills the latent cache and a run that only reads it repeat the run
    that encodes every clip on the fly, loss for loss: exactly for a step whose clips are all new, and within the
    rounding of an encode for a step that met a clip encoded before (the filling run encodes only the other clips,
    and an encode rounds with the number of clips in it, by ~1e-6 on some CPUs); the reading run repeats the
    filling run exactly."""
    base = run([sys.executable, "train.py", *args(dataset, tmp_path / "base", max_steps=3)])
    assert base.returncode == 0, base.stderr[-3000:]
    cache = tmp_path / "latents"
    stored, seen, fresh = [], set(), []
    ds = train.open_sources(train.configure(args(dataset, tmp_path / "x", max_steps=3)), h=4)
    for step in range(3):  # 4 samples a step
        keys = [ds.clip_key(p["episode"], p["frame_index"]) for p in map(ds.plan, range(4 * step, 4 * step + 4))]
        fresh.append(len(set(keys)) == 4 and not set(keys) & seen)  # within a step too: 2 micro-batches of 2
        seen |= set(keys)
    for name in ("fill", "read"):
        r = run([sys.executable, "train.py", *args(dataset, tmp_path / name, max_steps=3, latent_cache=str(cache))])
        assert r.returncode == 0, r.stderr[-3000:]
        got, want = losses(tmp_path / name), losses(tmp_path / "base")
        assert got.keys() == want.keys() == {1, 2, 3} and fresh[0]
        for step, new in zip((1, 2, 3), fresh):
            assert got[step] == want[step] if new else got[step] == pytest.approx(want[step], rel=1e-5, abs=0)
        stored.append(len(list(cache.rglob("*.safetensors"))))
    assert losses(tmp_path / "read") == losses(tmp_path / "fill")
    distinct = len(seen)  # 3 steps x 4 samples; a clip can repeat
    assert stored == [distinct, distinct]  # each clip stored once, nothing re-encoded on the second run
    vae = train.load_wan_vae(str(tmp_path / "fill" / "vae.safetensors"))
    ds.latent_cache = train.LatentCache(str(cache), train.vae_ids(vae)["vae"])  # what train.py sets
    assert os.listdir(cache) == [os.path.basename(ds.latent_cache.dir)]  # the run's VAE's folder, the only one
    # loader workers then skip decoding: the cache holds the current and the future latent of each clip
    assert all(ds[i]["frames"] is None and ds[i]["latents"].shape == (48, 2, 2, 2) for i in range(12))


def test_a_clip_cached_since_the_loader_looked_is_read_not_encoded_again(dataset, tmp_path):
    """The loader checks the cache batches ahead of training; a clip it found missing but that a step has encoded
    since is read back, so the clip keeps the one latent it was stored with (an encode rounds differently with the
    number of clips in it) and only the clips still missing are encoded, together."""
    from encode_text import TextCache
    from wan_vae import VAE_CONFIGS, WanVAE
    from wvm import WVM, clip_latents, wvm_configs

    torch.manual_seed(0)
    vae, wvm = WanVAE(VAE_CONFIGS["tiny"]).eval(), WVM(*wvm_configs("tiny"))
    cache = train.LatentCache(str(tmp_path / "lat"), "vae")
    frames = torch.rand(2, 3, 9, 32, 32) * 2 - 1  # the loader's frames of its two misses, "a" and "b"
    stored_a, cached_c = torch.full((48, 2, 2, 2), 7.0), torch.full((48, 2, 2, 2), -3.0)
    cache.put("a", stored_a)  # encoded by a step after the loader looked
    batch = {"clip_key": ["a", "b", "c"], "latents": [None, None, cached_c], "frames": frames,
             "text": ["push the block right"] * 3, "text_dropped": [False] * 3, "values": torch.zeros(3, 5),
             "seed": torch.tensor([1, 2, 3])}
    lat = train.model_inputs(batch, wvm, vae, TextCache(str(dataset / "text")), torch.device("cpu"), cache)["latents"]
    assert torch.equal(lat[0], stored_a) and torch.equal(lat[2], cached_c)
    alone = clip_latents(vae, frames[1:], 4)[0]  # b, encoded by itself
    assert torch.equal(lat[1], alone) and torch.equal(cache.load("b"), alone)
    assert torch.equal(cache.load("a"), stored_a)  # never overwritten


def test_clips_encoded_in_the_loader_do_not_depend_on_their_batch(dataset, tmp_path):
    """--encode_in_loader: the workers encode in calls of exactly LOADER_GROUP clips, so a clip's latents are the
    same bits whichever clips share its call and in whatever order (close to an encode of its own), and training with
    two workers, whose timing decides who encodes what, repeats training with one, loss for loss; its latents get
    their own folder in the cache, apart from the main process's."""
    from wan_vae import VAE_CONFIGS, WanVAE
    from wvm import clip_latents

    torch.manual_seed(0)
    vae = WanVAE(VAE_CONFIGS["tiny"]).eval().requires_grad_(False)
    clips = torch.rand(11, 3, 9, 32, 32) * 2 - 1
    z = train.encode_grouped(vae, clips, 4)  # a call of 8, then one of 3 padded to 8
    assert z.shape == (11, 48, 2, 2, 2)
    order = [10, 3, 7, 0, 5, 9, 1, 8, 2, 6, 4]
    assert torch.equal(train.encode_grouped(vae, clips[order], 4), z[order])
    for i in (0, 4, 10):
        assert torch.equal(train.encode_grouped(vae, clips[i:i + 1], 4)[0], z[i])
        torch.testing.assert_close(z[i], clip_latents(vae, clips[i:i + 1], 4)[0], rtol=1e-4, atol=1e-5)
    # a call's empty places take clips to come, which are stored; what is left over stays for the next call
    stored = train.LatentCache(str(tmp_path / "spares"), "vae")
    spares = iter([("nine", clips[9]), ("ten", clips[10]), ("zero", clips[0])])
    assert torch.equal(train.encode_grouped(vae, clips[:6], 4, spares=spares, latent_cache=stored), z[:6])
    assert torch.equal(stored.load("nine"), z[9]) and torch.equal(stored.load("ten"), z[10])
    assert next(spares)[0] == "zero" and stored.load("zero") is None
    cache = tmp_path / "lat"
    for name, workers in (("one", 1), ("two", 2)):
        r = run([sys.executable, "train.py", *args(dataset, tmp_path / name, max_steps=3, latent_cache=str(cache / name),
                                                   encode_in_loader=True, num_workers=workers)])
        assert r.returncode == 0, r.stderr[-3000:]
    assert losses(tmp_path / "two") == losses(tmp_path / "one")
    # the workers fill their calls with their next batches' clips, never with clips the run does not read
    ds = train.open_sources(train.configure(args(dataset, tmp_path / "x", max_steps=3)), h=4)
    distinct = {ds.sample_key(ds.plan(i)) for i in range(12)}
    for name in ("one", "two"):
        (folder,) = (cache / name).iterdir()
        assert len(list(folder.glob("*.safetensors"))) == len(distinct) and (folder / "vae.json").is_file()
    main = run([sys.executable, "train.py", *args(dataset, tmp_path / "main", max_steps=3, latent_cache=str(cache / "one"))])
    assert main.returncode == 0, main.stderr[-3000:]
    assert losses(tmp_path / "main") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert sorted(p.name.endswith(f"-by{train.LOADER_GROUP}") for p in (cache / "one").iterdir()) == [False, True]


@pytest.mark.parametrize("world", [1, 2])
def test_a_loader_worker_fills_its_calls_with_its_next_batches_clips(dataset, tmp_path, monkeypatch, world):
    """upcoming: the clips not cached yet of the worker's next batches (with 2 workers and batches of 2 samples,
    after samples 0-1: samples 4-5, 8-9, ... in one process, 8-9, 16-17, ... in each of two), each once, none of the
    current batch's, decoded as the loader does."""
    ds = train.open_sources(train.configure(args(dataset, tmp_path / "x", max_steps=20)), h=4)
    ds.latent_cache = cache = train.LatentCache(str(tmp_path / "lat"), "vae")
    worker = type("Info", (), {"dataset": ds, "num_workers": 2})
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
    batch = [ds[0], ds[1]]
    cache.put(ds[4 * world]["clip_key"], torch.zeros(1))  # cached: passed over
    want, seen = [], {s["clip_key"] for s in batch}
    for i in [4 * world * k + j for k in range(1, 6) for j in (0, 1)]:
        s = ds[i]
        if s["clip_key"] not in seen and cache.load(s["clip_key"]) is None:
            seen.add(s["clip_key"])
            want.append(s)
    got = list(train.upcoming(batch, cache, world, ahead=5))
    assert [k for k, _ in got] == [s["clip_key"] for s in want] and len(got) >= 6
    assert all(torch.equal(f, s["frames"]) for (_, f), s in zip(got, want))
    assert list(train.upcoming(batch, cache, world, ahead=0)) == []
    # found bad since: its clips are left to the batches that read them
    ds.bad.add(ds.bad_key(ds.plan(want[0]["index"])["episode"]))
    later = [k for k, _ in train.upcoming(batch, cache, world, ahead=5)]
    assert later == [s["clip_key"] for s in want if s["episode"] != want[0]["episode"]]


def test_fsdp_sigterm_then_resume_repeats_the_uninterrupted_run(dataset, tmp_path):
    """FSDP2 over 2 processes: each saves and reloads its own shards (no pickles), and the resumed run
    repeats the uninterrupted one exactly."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    # 20 short steps: the notice must land before the last one, on a busy machine too (5 once did not)
    opts = dict(max_steps=20, ckpt_every=100, parallel="fsdp")
    full = run([*launch, *args(dataset, tmp_path / "full", **opts)])
    assert full.returncode == 0, full.stderr[-3000:]
    env = dict(os.environ, **CPU)
    proc = subprocess.Popen([*launch, *args(dataset, tmp_path / "cut", **opts)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log(tmp_path / "cut", 2)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    for pid in workers:  # the workers, as a cluster's preemption notice reaches them
        os.kill(int(pid), signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert sorted(p.name for p in (tmp_path / "cut" / "ckpt").iterdir()) == [
        "rank00000.safetensors", "rank00001.safetensors", "state.json"]
    stopped = max(losses(tmp_path / "cut"))
    assert 2 <= stopped < 20
    resumed = run([*launch, *args(dataset, tmp_path / "cut", resume=True, **opts)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 21))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]


# ----------------------------------------------------------------------------------------------
# bad settings, run folders that hold work, checkpoints that a crash or a stranger left behind

@pytest.mark.parametrize("argv,msg", [
    (["--lr"], "--lr: needs a value"),                       # was lr = True = 1.0
    (["--max_steps"], "--max_steps: needs a value"),         # was max_steps = True
    (["--max_steps=True"], "max_steps=True: expected int"),
    (["--lr=abc"], "lr='abc': expected float"),
    (["--size=huge"], "size='huge': expected tiny | small | base | mid | full"),
    (["--max_steps=0"], "max_steps=0: must be at least 1"),
    (["--micro_batch=0"], "micro_batch=0: must be at least 1"),
    (["--batch_size=0"], "batch_size=0: must be at least 1"),
    (["--ckpt_every=0"], "ckpt_every=0: must be at least 1"),
    (["--lr=-1e-4"], "lr=-0.0001: must lie in (0, 1]"),
    (["--lr=3"], "lr=3.0: must lie in (0, 1]"),
    (["--rewind=1.5"], "rewind=1.5: a probability"),
    (["--prefix_p=-0.1"], "prefix_p=-0.1: a probability"),
    (["--plateau=2"], "plateau=2.0: a probability"),
    (["--text_dropout=1.5"], "text_dropout=1.5: a probability"),
    (["--resolution=48"], "resolution=48: must be a positive multiple of 32"),
    (["--data=a:heavy"], "data source 'a:heavy'"),
    (["--data=a:inf,b"], "data source 'a:inf': expected path[:weight >= 0[:fps > 0]], finite"),
    (["--data=a:1:inf"], "data source 'a:1:inf'"),
    (["--resume", "--overwrite"], "overwrite=True: contradicts resume=True"),
    (["--seed=4294967296"], "seed=4294967296: must be below 2**32"),  # torch's seeds overflowed deep inside
    (["--state_dropout=0.2"], "state_dropout=0.2: needs state=<column>"),
    (["--state=observation.state", "--stage=video"], "state='observation.state': the value stream reads it"),
    (["--value_pred=x0", "--value_head=regression"], "value_pred='x0': x0 is the flow head's"),
    (["--value_pred=eps"], "value_pred='eps': expected v | x0"),
    (["--mismatch=0.2", "--stage=video"], "mismatch=0.2: pairs a clip with a wrong instruction"),
    (["--stage=video", "--value_head=regression", "--prefix_p=0.1"], "value_head='regression': a setting of the value "
     "stream, which stage=video does not train; prefix_p=0.1: a setting of the value stream"),
    (["--stage=video", "--mask=full"], "mask='full': a setting of the value stream"),
])
def test_every_setting_is_checked_at_start(argv, msg):
    with pytest.raises(SystemExit) as e:
        train.configure(argv)
    assert msg in str(e.value)


def test_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        train.configure(["--lr=2e-4", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "lr: float = 1e-4" in out and "batch_size: int = 1024" in out and "warmup: int = 500" in out
    assert all(f"    {f.name}: " in out for f in train.fields(train.TrainConfig))


def test_config_file_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("lr = 1e-4\nmax_steps = 10 +\n")
    with pytest.raises(SystemExit, match=rf"{bad}:2: SyntaxError"):
        train.configure([str(bad)])
    with pytest.raises(SystemExit, match="cannot read config file"):
        train.configure([str(tmp_path / "missing.py")])


def train_here(dataset, out, **kw):
    """train.train in this process (no interpreter start-up): a fraction of a subprocess's time."""
    return train.train(train.configure(args(dataset, out, **kw)), 1, 0, torch.device("cpu"))


def digest(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A finished 2-step run (checkpoint at step 2); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train_here(dataset, out, max_steps=2, fps=4.0)
    return out


def test_checkpoint_holds_no_pickles_and_resume_runs_none(dataset, trained, tmp_path, monkeypatch):
    import pickle
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["rank00000.safetensors", "state.json"]
    marker = tmp_path / "pwned"

    class Payload:  # what a crafted run folder would hold: unpickling it runs code
        def __reduce__(self):
            return (open, (str(marker), "w"))
    for name in (".metadata", "__0_0.distcp", "trainer_rank0.pt"):
        (out / "ckpt" / name).write_bytes(pickle.dumps(Payload()))

    def refuse(*a, **k):
        raise AssertionError("resume unpickled something")
    for mod, fn in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, fn, refuse)
    train_here(dataset, out, max_steps=3, fps=4.0, resume=True)
    assert not marker.exists()
    assert sorted(losses(out)) == [1, 2, 3]


@pytest.mark.parametrize("left,chosen", [
    ({"ckpt.tmp": 3, "ckpt": 2}, 3),          # written, not swapped in yet
    ({"ckpt.tmp": None, "ckpt": 2}, 2),       # cut while writing
    ({"ckpt.tmp": 3, "ckpt.old": 2}, 3),      # cut between the two renames
    ({"ckpt": 3, "ckpt.old": 2}, 3),          # cut before the old one was deleted
    ({"ckpt": 3, "ckpt.old": None}, 3),       # cut while deleting it
    ({"ckpt.old": 2}, 2),
    ({"ckpt.tmp": 1}, 1),                     # the first save, cut before its rename
    ({"ckpt.tmp": None}, None),
])
def test_recovery_from_every_interrupted_save(tmp_path, left, chosen):
    for name, step in left.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "rank00000.safetensors").write_bytes(b"partial")
        if step is not None:  # complete: state.json is written last
            (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
    train.recover_checkpoint(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if chosen is None else ["ckpt"])
    if chosen is not None:
        assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == chosen


def test_resume_after_a_crash_between_the_renames_keeps_saving(dataset, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    shutil.copytree(out / "ckpt", out / "ckpt.old")  # the crash left the previous state beside the new one
    train_here(dataset, out, max_steps=4, fps=4.0, ckpt_every=1, resume=True)  # saves at steps 3 and 4
    assert json.loads((out / "ckpt" / "state.json").read_text())["step"] == 4
    assert not (out / "ckpt.old").exists()


def test_a_saved_run_is_never_trained_over(dataset, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {f: digest(out / f) for f in ("wvm.safetensors", "log.jsonl", "ckpt/rank00000.safetensors")}
    with pytest.raises(SystemExit, match=r"already holds a run \(ckpt and wvm.safetensors\): continue it with "
                                         r"--resume, choose another --out_dir, or pass --overwrite"):
        train_here(dataset, out, max_steps=2)
    assert before == {f: digest(out / f) for f in before}
    # a video prior whose checkpoint and model file were deleted to save space: its wan/ (and the VAE it learned)
    # were deleted by the next run in the folder, unasked
    (out / "wan").mkdir()
    (out / "wan" / "config.json").write_text("{}")
    shutil.rmtree(out / "ckpt")
    os.remove(out / "wvm.safetensors")
    with pytest.raises(SystemExit, match=r"already holds a run \(wan\): choose another --out_dir, or pass "
                                         r"--overwrite to replace it$"):
        train_here(dataset, out, max_steps=2)
    assert (out / "wan" / "config.json").exists()
    train_here(dataset, out, max_steps=3, overwrite=True)  # asked for: a fresh run, a fresh log
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    # a finished run says so instead of crashing
    assert train_here(dataset, out, max_steps=3, resume=True) is None
    assert "the run is finished (step 3 of max_steps 3)" in capsys.readouterr().out


def test_a_new_run_deletes_only_what_a_run_left(dataset, trained, tmp_path):
    """A run that saved nothing leaves files a new one clears; files no run left there, or an input of the new
    run among them, stop it instead, untouched."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    shutil.rmtree(out / "ckpt")
    os.remove(out / "wvm.safetensors")  # a run that saved nothing: its config.json, log and VAE are cleared
    train_here(dataset, out, max_steps=1, fps=4.0)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(out / "vae.safetensors", mine / "vae.safetensors")  # e.g. wan_vae.py --out mine/vae.safetensors
    before = digest(mine / "vae.safetensors")
    with pytest.raises(SystemExit) as e:
        train_here(dataset, mine, max_steps=1)
    assert str(e.value) == (f"{mine} holds vae.safetensors, which no train.py run left there: choose another "
                            f"--out_dir, or pass --overwrite to delete them")
    with pytest.raises(SystemExit) as e:
        train_here(dataset, mine, max_steps=1, vae=str(mine / "vae.safetensors"), overwrite=True)
    assert str(e.value) == (f"{mine}: a new run clears vae.safetensors there, and --vae={mine / 'vae.safetensors'} "
                            f"is, holds or lies in one of them: move it or choose another --out_dir")
    assert digest(mine / "vae.safetensors") == before
    # a checkpoint-like folder no run left there (a backup named ckpt.old) was deleted before anything was asked
    os.remove(mine / "vae.safetensors")
    (mine / "ckpt.old").mkdir()
    (mine / "ckpt.old" / "state.json").write_text("{}")
    for kw in ({}, {"resume": True}):
        with pytest.raises(SystemExit) as e:
            train_here(dataset, mine, max_steps=1, **kw)
        assert str(e.value) == (f"{mine} holds ckpt.old, which no train.py run left there: choose another --out_dir, "
                                f"or pass --overwrite to delete them" if not kw else f"--resume: no checkpoint in {mine}")
        assert (mine / "ckpt.old" / "state.json").read_text() == "{}" and not (mine / "ckpt").exists()


def test_nothing_is_cleared_before_the_new_runs_inputs_are_read(dataset, trained, tmp_path):
    """Another tool's files (its config.json too) are not a run's; a run --overwrite replaces stays whole when the
    new run stops on a bad input; an input that holds a file a new run clears (--wan=out_dir) stops it; an out_dir
    that is a file is named."""
    other = tmp_path / "other"
    (other / "wan").mkdir(parents=True)
    files = {"config.json": '{"out_dir": "elsewhere", "lr": 0.0003}', "log.jsonl": "{}\n", "vae.safetensors": "v",
             "wan/model.bin": "w"}
    for f, text in files.items():
        (other / f).write_text(text)
    with pytest.raises(SystemExit) as e:
        train_here(dataset, other, max_steps=1)
    assert str(e.value) == (f"{other} holds wan, vae.safetensors, config.json, log.jsonl, which no train.py run left "
                            f"there: choose another --out_dir, or pass --overwrite to delete them")
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {f: digest(f) for f in sorted(out.rglob("*")) if f.is_file() and f.name != ".lock"}
    for kw, msg in (({"text_cache": str(tmp_path / "typo")}, "typo"), ({"vae": str(tmp_path / "none")}, "none"),
                    ({"wan": str(out)}, f"--wan={out} is, holds or lies in one of them")):
        with pytest.raises(SystemExit, match=msg):
            train.main(args(dataset, out, max_steps=1, overwrite=True, **kw))
        assert {f: digest(f) for f in before} == before
    assert {f: text for f, text in files.items() if (other / f).read_text() == text} == files
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=rf"^--out_dir={tmp_path / 'file'}: cannot be made \(File exists\)$"):
        train_here(dataset, tmp_path / "file", max_steps=1)
    (tmp_path / "locked" / ".lock").mkdir(parents=True)  # as a read-only folder refuses it (root writes anywhere)
    with pytest.raises(SystemExit, match=rf"^--out_dir={tmp_path / 'locked'}: cannot hold the run's lock file "
                                         rf"\(Is a directory\)$"):
        train_here(dataset, tmp_path / "locked", max_steps=1)


def test_an_edited_config_json_is_named(dataset, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    for text, msg in (('{"lr": 0.1,}', "not valid JSON (Expecting property name enclosed in double quotes at line 1, "
                                       "column 12)"), ("[1, 2]", "a JSON list, not an object")):
        (out / "config.json").write_text(text)
        with pytest.raises(SystemExit) as e:
            train.main(args(dataset, out, max_steps=3, fps=4.0, resume=True))
        assert str(e.value) == f"{out / 'config.json'}: {msg}"
    (out / "config.json").unlink()  # a folder of that name: an IsADirectoryError traceback
    (out / "config.json").mkdir()
    with pytest.raises(SystemExit) as e:
        train.main(args(dataset, out, max_steps=3, fps=4.0, resume=True))
    assert str(e.value) == f"{out / 'config.json'}: cannot be read (Is a directory)"


def test_second_process_on_a_run_folder_is_refused(dataset, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, **CPU)
    # far more steps than run before the SIGTERM below: the first must still hold the folder on a fast machine
    first = subprocess.Popen([sys.executable, "train.py", *args(dataset, out, max_steps=10000, ckpt_every=100000)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log(out, 0)
    second = run([sys.executable, "train.py", *args(dataset, out, max_steps=2, overwrite=True)])
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
    assert second.returncode == 1 and second.stderr.strip().splitlines() == [
        f"{out}: in use by train.py (pid {first.pid} on {socket.gethostname()}); wait for it to finish or "
        f"choose another --out_dir"]
    assert first.returncode == 0 and max(losses(out)) >= 1  # the first run was not disturbed


def test_resume_with_other_data_keeps_the_runs_vae(dataset, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    vae = digest(out / "vae.safetensors")
    # other data: the same episodes at 8 fps, which would calibrate a random VAE differently
    train_here(dataset, out, max_steps=3, fps=4.0, resume=True, data=f"{dataset / 'ds'}:1:8")
    assert digest(out / "vae.safetensors") == vae


def test_resume_refuses_other_model_inputs(dataset, trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    with pytest.raises(SystemExit, match=r"trained on other inputs than this launch gives it \(fps 4.0 -> 2.0\)"):
        train_here(dataset, out, max_steps=3, resume=True)
    # a video-stage run is not continued as a WVM run (that would silently mix the two stages' schedules)
    with pytest.raises(SystemExit, match=r"stage 'value' -> 'video'"):
        train_here(dataset, out, max_steps=3, resume=True, fps=4.0, stage="video")
    with pytest.raises(SystemExit, match=r"first_frame None -> True"):  # the clips would change under the model
        train_here(dataset, out, max_steps=3, resume=True, fps=4.0, first_frame=True)
    with pytest.raises(SystemExit, match=r"state None -> 'observation.state'"):  # nor the model's inputs
        train_here(dataset, out, max_steps=3, resume=True, fps=4.0, state="observation.state")
    # nor what its weights mean: a flow head's weights are not trained on as a regression head's
    for kw, msg in ((dict(value_head="regression"), "value_head 'flow' -> 'regression'"),
                    (dict(value_pred="x0"), "value_pred 'v' -> 'x0'"), (dict(mask="full"), "mask 'causal' -> 'full'")):
        with pytest.raises(SystemExit, match=msg):
            train_here(dataset, out, max_steps=3, resume=True, fps=4.0, **kw)
    # a setting recorded only when on is compared both ways: a first-frame run is not continued without o_0
    on = tmp_path / "first"
    train_here(dataset, on, max_steps=1, fps=4.0, first_frame=True)
    with pytest.raises(SystemExit, match=r"first_frame True -> None"):
        train_here(dataset, on, max_steps=2, resume=True, fps=4.0)


def test_resume_of_a_run_saved_before_the_model_settings_were_recorded(dataset, trained, tmp_path, capsys):
    """Such a run resumes (nor does it record the VAE's weights' digest); and a launch's new optimizer settings hold
    from the resume on, said in one line."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    state = json.loads((out / "ckpt" / "state.json").read_text())
    for k in (*train.MODEL_SETTINGS, "vae_weights"):
        del state["run"][k]
    (out / "ckpt" / "state.json").write_text(json.dumps(state))
    model = train_here(dataset, out, max_steps=3, fps=4.0, resume=True, weight_decay=0.1)
    assert model is not None
    assert (f"{out}: resuming at step 2 with this launch's optimizer settings {{'betas': [0.9, 0.95], "
            f"'weight_decay': 0.1, 'eps': 1e-08, 'video_lr': 1.0}} (until now {{'betas': [0.9, 0.95], 'weight_decay': "
            f"0.0, 'eps': 1e-08, 'video_lr': 1.0}})") in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["weight_decay"] == 0.1


def test_an_edited_state_json_is_named(dataset, trained, tmp_path):
    """A checkpoint's state.json edited by hand (or by an older tool) stops --resume in one line naming it."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    path = out / "ckpt" / "state.json"
    state = json.loads(path.read_text())
    for edit, why in (({"step": -7}, "ValueError: step -7: negative"), ({"run": [1]}, "TypeError: run [1]: not a JSON "
                      "object"), ({"param_groups": None}, "KeyError: 'param_groups'")):
        path.write_text(json.dumps({k: v for k, v in (state | edit).items() if v is not None}))
        with pytest.raises(SystemExit) as e:
            train_here(dataset, out, max_steps=3, fps=4.0, resume=True)
        assert str(e.value) == f"{path}: unreadable ({why})"


def test_missing_instructions_are_named_up_front_with_the_command_that_adds_them(dataset, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("push the block right\n")
    cache = tmp_path / "text"
    made = run([sys.executable, "encode_text.py", "--tiny_random", "32", "--text_len", "16", "--dtype", "float32",
                "--out", str(cache), "--texts", str(texts)])
    assert made.returncode == 0, made.stderr[-3000:]
    from encode_text import TextCache, TextCacheError
    before = TextCache(cache).get("push the block right")
    with pytest.raises(TextCacheError) as e:
        train_here(dataset, tmp_path / "run", text_cache=str(cache))
    assert not (tmp_path / "run" / "log.jsonl").exists()  # nothing trained before the check
    msg = str(e.value)
    command = (f"python encode_text.py --tiny_random 32 --text_len 16 --dtype float32 --out {cache} "
               f"--lerobot {dataset / 'ds'}")
    assert msg == f"{cache}: no embedding for 1 instruction(s): 'slide the block'; add them with: {command}"
    added = run([sys.executable, *command.split()[1:]])
    assert added.returncode == 0, added.stderr[-3000:]
    assert torch.equal(TextCache(cache).get("push the block right"), before)  # the same features as before
    train_here(dataset, tmp_path / "run", text_cache=str(cache), max_steps=1)


def test_paraphrases_need_their_text_and_a_file_that_fits_the_data(dataset, tmp_path):
    import encode_text
    cache = tmp_path / "text"
    made = run([sys.executable, "encode_text.py", "--tiny_random", "32", "--text_len", "16", "--dtype", "float32",
                "--out", str(cache), "--lerobot", str(dataset / "ds")])
    assert made.returncode == 0, made.stderr[-3000:]
    para = tmp_path / "para.json"
    para.write_text(json.dumps({"slide the block": ["move the block to the right"]}))
    with pytest.raises(encode_text.TextCacheError) as e:  # the new wording is not encoded yet: named up front
        train_here(dataset, tmp_path / "run", text_cache=str(cache), paraphrases=str(para))
    command = (f"python encode_text.py --tiny_random 32 --text_len 16 --dtype float32 --out {cache} "
               f"--lerobot {dataset / 'ds'} --paraphrases {para}")
    assert str(e.value) == (f"{cache}: no embedding for 1 instruction(s): 'move the block to the right'; add them "
                            f"with: {command}")
    added = run([sys.executable, *command.split()[1:]])
    assert added.returncode == 0, added.stderr[-3000:]
    train_here(dataset, tmp_path / "run", text_cache=str(cache), paraphrases=str(para), max_steps=1)
    other = tmp_path / "other.json"  # a file for another dataset is an error, not a silent no-op
    other.write_text(json.dumps({"open the drawer": ["pull the drawer open"]}))
    with pytest.raises(train.DataError, match=rf"{other}: none of the 2 instructions of the data has "
                                              r"paraphrases here \(data: 'push the block right', ...; file: 'open"):
        train_here(dataset, tmp_path / "run2", text_cache=str(cache), paraphrases=str(other))


def test_run_folder_is_usable_from_any_directory(dataset, tmp_path, monkeypatch):
    import eval as wvm_eval
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    rel = lambda p: os.path.relpath(p, tmp_path / "here")  # noqa: E731
    train_here(dataset, tmp_path / "run", max_steps=1, data=rel(dataset / "ds"), text_cache=rel(dataset / "text"),
               out_dir="../run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"] == str(dataset / "ds") and cfg["text_cache"] == str(dataset / "text")
    monkeypatch.chdir(dataset)  # elsewhere
    ckpt = os.path.relpath(tmp_path / "run", dataset)
    scorer = wvm_eval.load_scorer(wvm_eval.parse_args(["--bench", "expert", "--data", "x", "--ckpt", ckpt]))
    assert scorer.size == 32 and scorer.text_cache.path == dataset / "text"


def test_bare_model_file_carries_what_scoring_needs(trained, dataset, tmp_path):
    """A wvm.safetensors copied out of its run folder is still scored at the run's resolution and fps, and only
    with the run's VAE and text encoder."""
    import eval as wvm_eval
    from encode_text import build_cache, tiny_random_encoder
    for f in ("wvm.safetensors", "vae.safetensors"):
        shutil.copy(trained / f, tmp_path / f)
    argv = ["--bench", "expert", "--data", "x", "--ckpt", str(tmp_path / "wvm.safetensors"), "--text_cache",
            str(dataset / "text")]
    args_ = wvm_eval.parse_args(argv)
    scorer = wvm_eval.load_scorer(args_)
    assert (scorer.size, wvm_eval.dataset_fps(scorer.trained, "x")) == (32, 4.0)  # was 256 and 2.0
    with pytest.raises(SystemExit, match="--resolution 64: the model was trained at 32"):
        wvm_eval.load_scorer(wvm_eval.parse_args(argv + ["--resolution", "64"]))
    from wan_vae import VAE_CONFIGS, WanVAE, save_wan_vae
    torch.manual_seed(5)
    save_wan_vae(WanVAE(VAE_CONFIGS["tiny"]), str(tmp_path / "other_vae.safetensors"))
    with pytest.raises(SystemExit, match="is not the VAE the model was trained with"):
        wvm_eval.load_scorer(wvm_eval.parse_args(argv + ["--vae", str(tmp_path / "other_vae.safetensors")]))
    tok, enc = tiny_random_encoder(32, seed=1)
    build_cache(["push the block right"], tok, enc, tmp_path / "text", dtype=torch.float32, text_len=16,
                encoder={"id": "tiny_random:seed1", "flags": "--tiny_random 32"})
    with pytest.raises(SystemExit, match="not the text encoder the model was trained with"):
        wvm_eval.load_scorer(wvm_eval.parse_args(argv[:-1] + [str(tmp_path / "text")]))


def test_a_vae_changed_only_inside_is_told_apart(trained, dataset, tmp_path):
    """vae_fingerprint reads four tensors (cheap at 2.8 GB): a VAE fine-tuned in its inner layers alone shares that
    id. The digest of every weight recorded beside it tells the two apart, for scoring, a latent cache and a prior;
    what was recorded before it (the id alone) is still taken."""
    import eval as wvm_eval
    from data import DataError, LatentCache
    from model import WAN_CONFIGS, WanDiT, save_wan_dit
    from wan_vae import load_wan_vae, save_wan_vae, vae_ids
    vae = load_wan_vae(str(trained / "vae.safetensors"))
    ids = vae_ids(vae)
    with torch.no_grad():
        next(p for n, p in vae.named_parameters() if n.startswith("encoder.downsamples")).add_(0.01)
    inner = vae_ids(vae)["vae_weights"]
    assert vae_ids(vae)["vae"] == ids["vae"] and inner != ids["vae_weights"]
    save_wan_vae(vae, str(tmp_path / "inner.safetensors"))
    argv = ["--bench", "expert", "--data", "x", "--ckpt", str(trained)]
    assert wvm_eval.load_scorer(wvm_eval.parse_args(argv)).trained["vae_weights"] == ids["vae_weights"]
    with pytest.raises(SystemExit, match=rf"inner.safetensors: is not the VAE the model was trained with \(id "
                                         rf"{ids['vae']} / {inner}; .* records {ids['vae']} / "
                                         rf"{ids['vae_weights']}\)"):
        wvm_eval.load_scorer(wvm_eval.parse_args(argv + ["--vae", str(tmp_path / "inner.safetensors")]))
    LatentCache(str(tmp_path / "lat"), ids["vae"], ids["vae_weights"])
    with pytest.raises(DataError, match=rf"clips-{ids['vae']}: latents of another VAE of the same id"):
        LatentCache(str(tmp_path / "lat"), ids["vae"], inner)
    assert LatentCache(str(tmp_path / "lat"), ids["vae"], ids["vae_weights"]).load("x") is None
    # the cache is an input: refused before an --overwrite clears the old run
    shutil.copytree(trained, tmp_path / "run")
    before = sorted(os.listdir(tmp_path / "run"))
    (tmp_path / "lat2" / f"clips-{ids['vae']}").mkdir(parents=True)
    (tmp_path / "lat2" / f"clips-{ids['vae']}" / "vae.json").write_text('{"weights": "000000000000"}')
    with pytest.raises(DataError, match="latents of another VAE of the same id"):
        train_here(dataset, tmp_path / "run", max_steps=1, fps=4.0, overwrite=True, vae=str(trained / "vae.safetensors"),
                   latent_cache=str(tmp_path / "lat2"))
    assert sorted(os.listdir(tmp_path / "run")) == before
    save_wan_dit(WanDiT(WAN_CONFIGS["tiny"]), tmp_path / "wan", ids["vae"], None, ids["vae_weights"])
    train.check_prior(str(tmp_path / "wan"), ids, None)
    with pytest.raises(SystemExit, match=rf"learned the latents of another VAE \({ids['vae_weights']}\)"):
        train.check_prior(str(tmp_path / "wan"), ids | {"vae_weights": inner}, None)
    save_wan_dit(WanDiT(WAN_CONFIGS["tiny"]), tmp_path / "old", ids["vae"])  # exported before the digest
    train.check_prior(str(tmp_path / "old"), ids | {"vae_weights": inner}, None)


def test_states_of_two_widths_are_named_by_episode():
    """Two datasets of one folder name (a/ds, b/ds) whose states differ in width: keyed by that name, one hid the
    other, and numpy failed concatenating them."""
    from types import SimpleNamespace

    from data import Episode, Source
    eps = [Episode("ds", f"{d}/ds/v.mp4", 0, 1, 8, 8, "t", 0, extra={"state": np.zeros((8, w))})
           for d, w in (("a", 4), ("b", 3))]
    with pytest.raises(train.DataError, match=r"^the episodes' states differ in width \(4 in ds/0 \(a/ds/v.mp4\), 3 "
                                              r"in ds/0 \(b/ds/v.mp4\)\); one model reads one state$"):
        train.state_stats(SimpleNamespace(sources=[Source([e]) for e in eps]))
    mean, std = train.state_stats(SimpleNamespace(sources=[Source(eps[:1]), Source(eps[:1])]))
    assert mean.tolist() == [0.0] * 4 and std.tolist() == pytest.approx([1e-3] * 4)


def test_a_source_trained_at_its_own_fps_is_scored_at_it(dataset, tmp_path):
    """--data=path:weight:fps: the model file records the source's fps, and eval.py scores that dataset at it (other
    datasets at the run's fps) unless --fps says otherwise."""
    import eval as wvm_eval
    from wvm import load_wvm
    train_here(dataset, tmp_path / "run", max_steps=1, data=f"{dataset / 'ds'}:1:4")
    run = load_wvm(str(tmp_path / "run" / "wvm.safetensors")).run
    assert run["fps"] == 2.0 and run["source_fps"] == {os.path.realpath(dataset / "ds"): 4.0}
    shutil.copytree(dataset / "ds", tmp_path / "other")  # the same episodes under another path: a held-out set
    (tmp_path / "alias").symlink_to(dataset / "ds")
    for data, extra, fps in (("ds", [], 4.0), ("alias", [], 4.0), ("other", [], 2.0), ("ds", ["--fps", "3"], 3.0)):
        out = tmp_path / f"{data}{len(extra)}.json"
        root = dataset if data == "ds" else tmp_path
        wvm_eval.main(["--bench", "expert", "--data", str(root / data), "--ckpt", str(tmp_path / "run"), "--json",
                       str(out), *extra])
        res = json.loads(out.read_text())
        T = next(r for r in res["trajectories"] if r["method"] == "wvm" and r["episode"].endswith("/0"))["T"]
        n = len(next(r for r in res["trajectories"] if r["method"] == "wvm" and r["episode"].endswith("/0"))["values"])
        assert res["fps"] == fps and n == round((T - 1) * fps / 8) + 1  # 24 frames at 8 fps, resampled
    # resumed on another source with its own fps: the record keeps both
    train_here(dataset, tmp_path / "run", max_steps=2, resume=True, data=f"{tmp_path / 'other'}:1:3")
    run = load_wvm(str(tmp_path / "run" / "wvm.safetensors")).run
    assert run["source_fps"] == {os.path.realpath(dataset / "ds"): 4.0, os.path.realpath(tmp_path / "other"): 3.0}
    # resumed on a source without its fps: trained at the run's, and so scored (the record kept the earlier launch's)
    train_here(dataset, tmp_path / "run", max_steps=3, resume=True, data=str(dataset / "ds"))
    run = load_wvm(str(tmp_path / "run" / "wvm.safetensors")).run
    assert run["source_fps"] == {os.path.realpath(tmp_path / "other"): 3.0}


def test_a_run_trained_with_the_first_frame_is_scored_with_it(dataset, tmp_path, monkeypatch):
    """--first_frame: training encodes o_0 ahead of each clip (3 latent frames, cached together), the model file
    records it, and scoring leads every window with the trajectory's o_0: the latent the model gets first is o_0's
    encoded alone, the next the window's as a run without it gets it."""
    import eval as wvm_eval
    from safetensors.torch import load_file
    from data import decode_frames, read_dataset, resample
    from wvm import clip_latents
    train_here(dataset, tmp_path / "run", max_steps=1, first_frame=True, latent_cache=str(tmp_path / "lat"))
    cached = [load_file(f)["latents"].shape for f in (tmp_path / "lat").rglob("*.safetensors")]
    assert len(cached) >= 2 and set(cached) == {(48, 3, 2, 2)}  # o_0, current, future
    scorer = wvm_eval.load_scorer(wvm_eval.parse_args(["--bench", "expert", "--data", "x", "--ckpt",
                                                       str(tmp_path / "run")]))
    assert scorer.trained["first_frame"] is True
    ep = read_dataset(dataset / "ds")[1]
    traj = wvm_eval.Trajectory(ep, resample(ep.T, ep.fps, 2.0))
    seen = []
    predict = scorer.model.predict_values
    monkeypatch.setattr(scorer.model, "predict_values",
                        lambda lat, *a, **k: (seen.append(lat), predict(lat, *a, **k))[1])
    scorer.score([traj], progress=False)
    frames = decode_frames(ep, traj.index, 32)[None]
    first = scorer.vae.encode(frames[:, :, :1])
    ends = wvm_eval.window_ends(len(traj.index), 4, 1)
    assert len(seen) == len(ends)
    for lat, t in zip(seen, ends):
        assert lat.shape == (1, 48, 2, 2, 2)
        torch.testing.assert_close(lat[:, :, :1], first, rtol=1e-5, atol=1e-6)
        window = clip_latents(scorer.vae, frames[:, :, [max(t - 4, 0), *range(t - 3, t + 1)]], 4)
        torch.testing.assert_close(lat[:, :, 1:], window, rtol=1e-5, atol=1e-6)


def test_bad_inputs_end_with_their_message_only(dataset, tmp_path):
    """Input errors raised deep inside (a checkpoint, a dataset, a text cache) reach the user as one message."""
    import encode_text
    from model import WAN_CONFIGS, WanDiT, save_wan_dit
    from wan_vae import VAE_CONFIGS, WanVAE, save_wan_vae
    save_wan_dit(WanDiT(WAN_CONFIGS["tiny"]), tmp_path / "wan")
    save_wan_vae(WanVAE(VAE_CONFIGS["tiny"]), str(tmp_path / "vae.safetensors"))  # no VAE to fit to the data first
    save_wan_vae(WanVAE(replace(VAE_CONFIGS["tiny"], z_dim=16, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)),
                 str(tmp_path / "vae16.safetensors"))  # Wan2.1's latent width
    cases = [(dict(wan=str(tmp_path / "nope")), f"{tmp_path / 'nope'}: no such checkpoint file or folder"),
             (dict(parallel="fsdp"), "parallel=fsdp shards the model over torchrun's processes"),  # no torchrun
             (dict(wan=str(tmp_path / "wan"), size="small", vae=str(tmp_path / "vae.safetensors")), f"{tmp_path / 'wan'}: a Wan DiT of 2 layers, 2 heads x "
              f"32, text_dim 32; the value stream of --size=small has 4 layers, 4 heads x 32, text_dim 32: pass "
              f"--size=tiny"),
             (dict(vae=str(tmp_path / "vae16.safetensors")), f"--vae={tmp_path / 'vae16.safetensors'}: 16 latent "
              f"channels, and the video stream reads 48 (--size=tiny)"),
             (dict(data=str(tmp_path)), f"{tmp_path}: not a dataset"),
             (dict(data=f"{dataset / 'ds'},{tmp_path / 'gone'}:2"), f"--data: {tmp_path / 'gone'}: not found"),
             (dict(latent_cache=str(tmp_path / "vae.safetensors" / "latents")), f"--latent_cache="
              f"{tmp_path / 'vae.safetensors' / 'latents'}: cannot be made (Not a directory)"),
             (dict(data=f"{dataset / 'ds'}:0"), "ClipDataset: no source of weight > 0 has usable episodes (ds: "
              "weight 0)"),
             (dict(text_cache=str(tmp_path / "none")), f"{tmp_path / 'none'}: no text cache"),
             (dict(text_cache=str(tmp_path / "text64")), f"{tmp_path / 'text64'}: the features of "
              f"'push the block right' are [5, 64] (`--tiny_random 64 --text_len 16`); --size=tiny reads [<= 16, 32]: "
              f"encode the instructions with the text encoder it was made for")]
    tok, enc = encode_text.tiny_random_encoder(64)  # a cache of another width (a umT5 one for a tiny model)
    encode_text.build_cache(["push the block right", "slide the block"], tok, enc, tmp_path / "text64",
                            dtype=torch.float32, text_len=16, encoder={"id": "tiny:64", "flags": "--tiny_random 64 "
                                                                                                 "--text_len 16"})
    for i, (kw, msg) in enumerate(cases):
        with pytest.raises(SystemExit) as e:
            train.main(args(dataset, tmp_path / f"run{i}", **kw))
        assert str(e.value).startswith(msg) and e.value.__suppress_context__
        assert not (tmp_path / f"run{i}" / "config.json").exists()  # stopped before the run wrote anything
    assert not (tmp_path / "run5").exists()  # a missing source: before the run folder was made
    assert not (tmp_path / "run6").exists()  # a latent cache that cannot be made: likewise
    assert not (tmp_path / "run1").exists()  # fsdp without torchrun: before any data is read


def test_text_features_of_another_width(dataset, tmp_path):
    """--text_dim: features of another encoder's width (encode_text.py --model on a small sentence encoder) train the
    video stage, whose checkpoint then sets the width of WVM's both streams; a cache the model cannot read is named
    before any work, and so is a --text_dim the prior was not trained at."""
    import encode_text
    from encode_text import TextCacheError
    from wvm import load_wvm
    tok, enc = encode_text.tiny_random_encoder(16)
    cache = tmp_path / "text16"
    encode_text.build_cache(["push the block right", "slide the block"], tok, enc, cache, dtype=torch.float32,
                            text_len=16, encoder={"id": "tiny:16", "flags": "--tiny_random 16 --text_len 16"})
    with pytest.raises(TextCacheError, match=r"are \[\d+, 16\] .*; --size=tiny reads \[<= 16, 32\]"):
        train_here(dataset, tmp_path / "no", text_cache=cache, max_steps=1)
    with pytest.raises(TextCacheError, match=r"--size=tiny --text_dim=24 reads \[<= 16, 24\]"):
        train_here(dataset, tmp_path / "no", text_cache=cache, max_steps=1, text_dim=24)
    prior = train_here(dataset, tmp_path / "prior", text_cache=cache, text_dim=16, stage="video", max_steps=1,
                       rewind=0.0)
    assert prior.video.text_embedding[0].in_features == 16
    vae = str(tmp_path / "prior" / "vae.safetensors")
    wan = str(tmp_path / "prior" / "wan")
    with pytest.raises(SystemExit, match=rf"--text_dim=32: the Wan DiT --wan={wan} reads text features of width 16"):
        train_here(dataset, tmp_path / "wvm", text_cache=cache, wan=wan, vae=vae, max_steps=1, text_dim=32)
    train_here(dataset, tmp_path / "wvm", text_cache=cache, wan=wan, vae=vae, max_steps=1)
    model = load_wvm(str(tmp_path / "wvm" / "wvm.safetensors"))
    assert model.video.cfg.text_dim == model.value.cfg.text_dim == 16
    assert model.value.text_embedding[0].in_features == 16


def test_video_stage_writes_a_wan_checkpoint_that_wvm_training_starts_from(dataset, tmp_path):
    """--stage=video trains the video stream alone (the value stream is untouched) and leaves an official Wan2.2
    DiT folder; --wan=<that folder> starts WVM from exactly those weights (load_wan_dit, the real loader path)."""
    from model import load_wan_dit
    from wvm import wvm_configs

    prior = train_here(dataset, tmp_path / "prior", stage="video", max_steps=2, rewind=0.0)
    wan = tmp_path / "prior" / "wan"
    assert sorted(os.listdir(wan)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    import eval as wvm_eval  # its wvm.safetensors has an untrained value stream: not scored
    with pytest.raises(SystemExit, match=r"saved by a --stage=video run, which trains the video stream alone"):
        wvm_eval.main(["--bench", "expert", "--data", str(dataset / "ds"), "--ckpt", str(tmp_path / "prior")])
    video = load_wan_dit(str(wan))
    assert video.cfg == wvm_configs("tiny")[0]
    trained_sd = train.unwrap(prior).video.state_dict()
    assert all(torch.equal(v, trained_sd[k]) for k, v in video.state_dict().items())
    torch.manual_seed(0)
    fresh = train.WVM(*wvm_configs("tiny"))
    q = "blocks.0.self_attn.q.weight"
    assert not torch.equal(trained_sd[q], fresh.video.state_dict()[q])
    # the value stream got no gradient: it is still the seed's fresh one (the video stage builds with the same seed)
    assert all(torch.equal(a, b) for a, b in zip(train.unwrap(prior).value.state_dict().values(),
                                                  fresh.value.state_dict().values()))
    # the prior learned its run's random VAE's latents (fitted to clips without rewinding): a run making a VAE of its
    # own is refused, and given that VAE it trains
    with pytest.raises(SystemExit, match=f"learned the latents of another VAE .*: pass --vae={tmp_path / 'prior'}/"):
        train_here(dataset, tmp_path / "own", wan=str(wan), max_steps=1)
    config, ids = train.read_json(wan / "config.json"), train.vae_ids(train.load_wan_vae(str(tmp_path / "prior" /
                                                                                          "vae.safetensors")))
    assert (config["wvm_vae"], config["wvm_vae_weights"]) == (ids["vae"], ids["vae_weights"])
    # and the features of its text encoder: another encoder's cache of the same width is refused (it trained on)
    import encode_text
    assert train.read_json(wan / "config.json")["wvm_text_encoder"] == "tiny:32"
    tok, enc = encode_text.tiny_random_encoder(32, seed=1)
    encode_text.build_cache(["push the block right", "slide the block"], tok, enc, tmp_path / "text1",
                            dtype=torch.float32, text_len=16, encoder={"id": "tiny1:32", "flags": "--tiny_random 32"})
    with pytest.raises(SystemExit, match=rf"learned the text features of another encoder \(tiny:32\), and --text_cache "
                                         rf"holds tiny1:32's: pass --text_cache={dataset / 'text'}$"):
        train_here(dataset, tmp_path / "text1run", wan=str(wan), vae=str(tmp_path / "prior" / "vae.safetensors"),
                   text_cache=str(tmp_path / "text1"), max_steps=1)
    cfg = train.configure(args(dataset, tmp_path / "wvm", wan=str(wan), max_steps=1,
                               vae=str(tmp_path / "prior" / "vae.safetensors")))
    model = train.build_model(cfg, torch.device("cpu"))
    assert all(torch.equal(v, model.video.state_dict()[k]) for k, v in video.state_dict().items())
    assert train.train(cfg, 1, 0, torch.device("cpu")) is not None  # and WVM training runs from it
    # a half-precision file (ComfyUI's fp16 one, its names prefixed) still gives fp32 weights to train
    from checkpoint import save_safetensors
    half = {f"model.diffusion_model.{k}": v.half() for k, v in video.state_dict().items()}
    os.makedirs(tmp_path / "wan16")
    shutil.copy(wan / "config.json", tmp_path / "wan16")
    save_safetensors(half, str(tmp_path / "wan16" / "diffusion_pytorch_model.safetensors"))
    # copied away from its run, the folder still names the VAE it learned (its config.json)
    with pytest.raises(SystemExit, match="learned the latents of another VAE .*: pass the VAE of the run that "
                                         "exported it with --vae"):
        train_here(dataset, tmp_path / "own16", wan=str(tmp_path / "wan16"), max_steps=1)
    cfg = train.configure(args(dataset, tmp_path / "wvm16", wan=str(tmp_path / "wan16"), max_steps=1,
                               vae=str(tmp_path / "prior" / "vae.safetensors")))
    model = train.build_model(cfg, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(torch.equal(v.half().float(), model.video.state_dict()[k]) for k, v in video.state_dict().items())
    assert train.train(cfg, 1, 0, torch.device("cpu")) is not None


def test_a_vae_trained_on_the_data_is_the_runs_frozen_vae(dataset, tmp_path):
    """wan_vae.py --train fits a tiny VAE to a dataset's clips; train.py --vae=<it> trains WVM on its latents (the run
    records its fingerprint) and a missing dataset ends with one message naming it."""
    import wan_vae

    out = tmp_path / "vae.safetensors"
    wan_vae.main(["--train", "tiny", "--data", str(dataset / "ds"), "--steps", "2", "--batch", "2", "--resolution", "32",
                  "--out", str(out)])
    vae = wan_vae.load_wan_vae(str(out))
    assert vae.cfg.latents_std != wan_vae.VAE_CONFIGS["tiny"].latents_std  # measured on the data, not Wan2.2's
    train_here(dataset, tmp_path / "run", vae=str(out), max_steps=1)
    with open(tmp_path / "run" / "ckpt" / "state.json") as f:
        assert json.load(f)["run"]["vae"] == wan_vae.vae_fingerprint(vae)
    with pytest.raises(SystemExit, match=f"{tmp_path / 'none'}: not a dataset"):
        wan_vae.main(["--train", "tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x.safetensors")])


def test_video_lr_scales_the_video_streams_steps_only(dataset, tmp_path, monkeypatch, capsys):
    """--video_lr=0.25: AdamW's step is linear in the learning rate, so from the same start and data the video
    stream moves exactly a quarter as far as with --video_lr=1 and the value stream just as far; a run resumed with
    another --video_lr trains at the launch's, not the saved one."""
    cfg = train.configure(args(dataset, tmp_path / "x", max_steps=1, warmup=0))
    start = train.build_model(cfg, torch.device("cpu")).state_dict()
    moved = {}
    for scale in (1.0, 0.25):
        model = train.unwrap(train_here(dataset, tmp_path / f"s{scale}", max_steps=1, warmup=0, video_lr=scale))
        moved[scale] = {k: v - start[k] for k, v in model.state_dict().items()}
    video = [k for k in start if k.startswith("video.") and moved[1.0][k].abs().max() > 0]
    value = [k for k in start if k.startswith("value.") and moved[1.0][k].abs().max() > 0]
    assert video and value
    for k in video:
        torch.testing.assert_close(moved[0.25][k], 0.25 * moved[1.0][k], rtol=1e-4, atol=1e-7)
    for k in value:
        torch.testing.assert_close(moved[0.25][k], moved[1.0][k], rtol=1e-5, atol=1e-8)
    out = tmp_path / "resumed"  # saved at step 2 with 0.25, resumed to step 4 with 0.5
    train_here(dataset, out, max_steps=2, video_lr=0.25)
    cfg = train.configure(args(dataset, out, max_steps=4, video_lr=0.5, resume=True))
    scales, adamw_step = [], torch.optim.AdamW.step

    def step(self, *a, **kw):
        scales.append([g["lr"] / train.lr_at(2 + len(scales), cfg) for g in self.param_groups])
        return adamw_step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train.train(cfg, 1, 0, torch.device("cpu"))
    assert scales == [pytest.approx([1.0, 0.5])] * 2
    assert "'video_lr': 0.5} (until now {'betas': [0.9, 0.95], 'weight_decay': 0.0, 'eps': 1e-08, 'video_lr': 0.25})" \
        in capsys.readouterr().out  # said, as the launch's other optimizer settings are


def test_a_run_given_the_robots_state_trains_and_scores_with_it(dataset, tmp_path, monkeypatch, capsys):
    """--state (beyond the paper): the model keeps the training frames' mean and std of the column, the run records
    the column, the value stream learns to read it, and scoring feeds it the state at each window's value frames and
    at frame 0, read from the dataset being scored. A dataset without the column is scored from the video alone by a
    model trained without the state in some clips, and refused by one that never was."""
    import eval as wvm_eval
    from data import read_dataset, resample
    from wvm import load_wvm
    out = tmp_path / "run"
    train_here(dataset, out, max_steps=2, state="observation.state", state_dropout=0.5)
    model = load_wvm(str(out / "wvm.safetensors"))
    states = np.concatenate([ep.extra["state"] for ep in read_dataset(dataset / "ds", state="observation.state")])
    assert states.shape == (4 * 24 + 4 * 6, 4) and model.value.cfg.state_dim == 4
    np.testing.assert_allclose(model.value.state_mean.numpy(), states.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.value.state_std.numpy(), states.std(0) + 1e-3, rtol=1e-6, atol=1e-6)
    assert model.value.state_embedding.weight.abs().sum() > 0  # trained from zero
    assert (model.run["state"], model.run["state_dim"], model.run["state_dropout"]) == ("observation.state", 4, 0.5)

    scorer = wvm_eval.load_scorer(wvm_eval.parse_args(["--bench", "expert", "--data", "x", "--ckpt", str(out)]))
    assert wvm_eval.state_column(scorer, str(dataset / "ds")) == "observation.state"
    ep = read_dataset(dataset / "ds", state="observation.state")[1]
    traj = wvm_eval.Trajectory(ep, resample(ep.T, ep.fps, 2.0))
    seen = []
    predict = scorer.model.predict_values
    monkeypatch.setattr(scorer.model, "predict_values", lambda *a, **k: (seen.append(k), predict(*a, **k))[1])
    with_state = scorer.score([traj], progress=False)[0][0]
    ends = wvm_eval.window_ends(len(traj.index), 4, 1)
    assert len(seen) == len(ends)
    for k, t in zip(seen, ends):
        window = np.asarray(traj.index)[[max(t - 4, 0), *range(t - 3, t + 1)]]
        np.testing.assert_array_equal(k["state"][0].numpy(), ep.extra["state"][window])
        np.testing.assert_array_equal(k["start_state"][0].numpy(), ep.extra["state"][0])
    del ep.extra["state"]  # the same trajectory without its state: the video alone
    assert not np.allclose(scorer.score([traj], progress=False)[0][0], with_state, rtol=0, atol=1e-6)

    bare = tmp_path / "bare"  # the same videos, no state column
    write_lerobot(bare, ({"frames": np.zeros((8, 32, 32, 3), np.uint8), "task": "slide the block"} for _ in range(2)),
                  fps=8, codec="libx264")
    assert wvm_eval.state_column(scorer, str(bare)) is None
    assert "no observation.state [4]: scored from the video and language alone, as the model was trained on 50% of " \
           "its clips" in capsys.readouterr().err
    scorer.trained["state_dropout"] = 0.0
    with pytest.raises(SystemExit, match=r"bare: no observation.state \[4\], the robot's state the model reads beside "
                                         r"the video, and it never trained without it"):
        wvm_eval.state_column(scorer, str(bare))
    manifest = tmp_path / "m.jsonl"  # and a manifest (a file: its info.json was taken for a broken one, unsaid)
    manifest.write_text(json.dumps({"video": str(tmp_path / "v.mp4"), "instruction": "slide the block"}) + "\n")
    with pytest.raises(SystemExit, match=r"m.jsonl: no observation.state \[4\], the robot's state"):
        wvm_eval.state_column(scorer, str(manifest))
    capsys.readouterr()
    assert wvm_eval.state_column(scorer, str(tmp_path / "none")) is None  # reading it will name it, nothing before
    (bare / "meta" / "info.json").write_text("{")  # and so is an info.json that is not JSON
    assert wvm_eval.state_column(scorer, str(bare)) is None
    assert capsys.readouterr().err == ""


def test_a_run_knows_its_data_from_a_regenerated_dataset_at_the_same_path(dataset, tmp_path, capsys):
    from data import fingerprint
    ds = tmp_path / "a" / "ds"
    write_lerobot(ds, block_episodes(4), fps=8, codec="libx264")
    shutil.copytree(ds, tmp_path / "b" / "ds")  # a moved copy is the same data
    read = lambda path, state=None: train.read_dataset(path, state=state)
    assert fingerprint(read(ds)) == fingerprint(read(tmp_path / "b" / "ds")) == fingerprint(read(ds)[::-1])
    assert fingerprint(read(ds)) != fingerprint(read(ds)[:3])
    assert fingerprint(read(ds)) != fingerprint(read(ds, "observation.state"))  # the state is part of the data

    out = tmp_path / "run"
    train_here(dataset, out, data=str(ds), max_steps=2, fps=4.0)
    recorded = json.loads((out / "config.json").read_text())["data_fingerprint"]
    assert recorded == fingerprint(read(ds))
    train_here(dataset, out, data=str(tmp_path / "b" / "ds"), max_steps=2, fps=4.0, resume=True)  # finished, same data
    assert "the run is finished" in capsys.readouterr().out

    shutil.rmtree(ds)
    write_lerobot(ds, block_episodes(4, shift=3), fps=8, codec="libx264")  # regenerated: other video, same layout
    assert fingerprint(read(ds)) != recorded
    with pytest.raises(SystemExit, match=rf"{out}: the data in --data={ds} \(4 episodes, fingerprint "
                                         rf"{fingerprint(read(ds))}\) are not those the run recorded \(fingerprint "
                                         rf"{recorded}\).*its model was not trained on them"):
        train_here(dataset, out, data=str(ds), max_steps=2, fps=4.0, resume=True)
    # an unfinished run goes on with the new data, told so, and records them
    train_here(dataset, out, data=str(ds), max_steps=3, fps=4.0, resume=True)
    assert f"(fingerprint {recorded}): regenerated or edited since, or read through another --camera or --state; the " \
        f"rest of the run trains on them" \
        in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["data_fingerprint"] == fingerprint(read(ds))
    assert max(losses(out)) == 3


def test_guidance_scores_a_run_trained_with_the_empty_instruction_and_refuses_one_trained_without(dataset, trained,
                                                                                                   tmp_path):
    """eval.py --guidance w reads the value given the empty instruction, which only a run trained with
    --text_dropout has learned: such a run records it in its model file and is scored with u + w (c - u); any other
    is refused by name, not scored from an input it never saw."""
    import eval as wvm_eval
    from data import read_dataset, resample
    from wvm import load_wvm
    argv = ["--bench", "expert", "--data", "x", "--guidance", "2"]
    with pytest.raises(SystemExit, match=r"--guidance 2: .*wvm.safetensors was trained without the empty instruction"):
        wvm_eval.load_scorer(wvm_eval.parse_args(argv + ["--ckpt", str(trained)]))
    out = tmp_path / "run"
    train_here(dataset, out, max_steps=1, text_dropout=0.5)
    (out / "config.json").unlink()  # the model file's own record suffices
    assert load_wvm(str(out / "wvm.safetensors")).run["text_dropout"] == 0.5
    scorer = wvm_eval.load_scorer(wvm_eval.parse_args(argv + ["--ckpt", str(out), "--text_cache",
                                                              str(dataset / "text"), "--vae", str(out / "vae.safetensors")]))
    ep = read_dataset(dataset / "ds")[1]
    traj = wvm_eval.Trajectory(ep, resample(ep.T, ep.fps, 2.0))
    guided = scorer.score([traj], progress=False)[0][0]
    scorer.guidance = None
    plain = scorer.score([traj], progress=False)[0][0]
    assert not np.allclose(guided, plain, rtol=0, atol=1e-6)

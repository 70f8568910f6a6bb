"""The Wan2.2 DiT against diffusers' WanTransformer3DModel, checkpoint layouts, and loader errors."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from checkpoint import CheckpointError
from model import WanConfig, WanDiT, load_wan_dit, save_wan_dit

diffusers = pytest.importorskip("diffusers")

TEXT_LEN = 16
TINY = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, text_len=TEXT_LEN)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny random diffusers Wan DiT (TI2V-style: 48 channels, patch 1x2x2) saved with save_pretrained."""
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()
    with torch.no_grad():  # default init leaves many tensors at 0/1; random everything so a mix-up shows
        for p in ref.parameters():
            p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("wan") / "transformer"
    ref.save_pretrained(path)
    return ref, path


def inputs(B=2, F=3, H=6, W=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 48, F, H, W, generator=g)
    ctx = torch.randn(B, TEXT_LEN - 5, 32, generator=g)
    return x, ctx


def run_reference(ref, x, t, ctx):
    B, _, F, H, W = x.shape
    if t.dim() == 2:  # diffusers takes TI2V's per-token timesteps
        t = t[:, :, None].expand(B, F, (H // 2) * (W // 2)).reshape(B, -1)
    ctx = torch.nn.functional.pad(ctx, (0, 0, 0, TEXT_LEN - ctx.shape[1]))  # the pipeline pads, the model does not
    with torch.no_grad():
        return ref(x, t, ctx, return_dict=False)[0]


def check_equal(model, ref):
    model.cfg.text_len = TEXT_LEN
    x, ctx = inputs()
    for t in (torch.tensor([300.0, 850.0]), torch.tensor([[0.0, 500.0, 500.0], [0.0, 990.0, 990.0]])):
        with torch.no_grad():
            ours = model(x, t, ctx)
        theirs = run_reference(ref, x, t, ctx)
        assert ours.dtype == torch.float32 and ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max(), (ours - theirs).abs().max()


def test_matches_diffusers_from_diffusers_folder(reference):
    ref, path = reference
    model = load_wan_dit(str(path))
    assert model.cfg == WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32)
    check_equal(model, ref)


def test_per_frame_timestep_zero_is_clean_frame_conditioning(reference):
    """TI2V semantics: changing the clean first frame's latent changes the output; its timestep differs from t."""
    ref, path = reference
    model = load_wan_dit(str(path))
    model.cfg.text_len = TEXT_LEN
    x, ctx = inputs(B=1)
    t = torch.tensor([[0.0, 700.0, 700.0]])
    with torch.no_grad():
        a, b = model(x, t, ctx), model(x, torch.tensor([700.0]), ctx)
    assert (a - b).abs().max() > 1e-3  # per-frame timesteps really reach the model
    assert (a - run_reference(ref, x, t, ctx)).abs().max() <= 1e-4 * a.abs().max()


def test_matches_diffusers_from_official_sharded_and_pth(reference, tmp_path):
    ref, path = reference
    sd = load_wan_dit(str(path)).state_dict()  # official names
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    official = tmp_path / "official"
    official.mkdir()
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, official / name)
    with open(official / "diffusion_pytorch_model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}, f)
    with open(official / "config.json", "w") as f:  # the official config.json layout
        json.dump({"_class_name": "WanModel", "dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2,
                   "in_dim": 48, "out_dim": 48, "freq_dim": 32, "text_len": TEXT_LEN, "eps": 1e-6, "model_type": "ti2v"}, f)
    check_equal(load_wan_dit(str(official)), ref)
    # what a user may point at instead: the config, one shard, a folder of two checkpoints
    cases = [(official / "config.json", "not a shard index (no weight_map); pass the checkpoint's folder, its "
              ".safetensors.index.json or one of its weight files"),
             (official / "diffusion_pytorch_model-00001-of-00002.safetensors", "one shard of 2; pass the folder or "
              "its .safetensors.index.json")]
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, two / name)
    cases.append((two, "is in both"))
    # one file with a tensor under two names (official and diffusers', or with ComfyUI's prefix): one of them was
    # loaded, unsaid
    both = tmp_path / "both.safetensors"
    save_file({**{k: v.contiguous() for k, v in sd.items()}, "scale_shift_table": torch.full_like(sd["head.modulation"],
                                                                                                  7.0)}, both)
    cases.append((both, "head.modulation and scale_shift_table are both head.modulation; keep one of them"))
    for where, msg in cases:
        with pytest.raises(CheckpointError) as err:
            load_wan_dit(str(where), cfg=WanConfig(**TINY) if where in (two, both) else None)
        assert str(err.value).startswith(str(where if where != two else two)) and msg in str(err.value)
    # a ComfyUI-style single .pth file with the model.diffusion_model. prefix, no config.json
    pth = tmp_path / "single" / "wan.pth"
    pth.parent.mkdir()
    torch.save({"model.diffusion_model." + k: v for k, v in sd.items()}, pth)
    with pytest.raises(CheckpointError, match="no config.json gives num_heads"):
        load_wan_dit(str(pth))  # 64 wide: heads cannot be inferred from shapes alone
    check_equal(load_wan_dit(str(pth), cfg=WanConfig(**TINY)), ref)


@pytest.mark.parametrize("shard", [5, ["a.safetensors"], "../other/a.safetensors", "/elsewhere/a.safetensors", ".."])
def test_a_shard_index_names_files_beside_it(tmp_path, shard):
    """A downloaded index's weight_map names the shards beside it: another file, or no file name, is named as such."""
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"blocks.0.x": "a.safetensors", "blocks.0.y": shard}}))
    with pytest.raises(CheckpointError) as err:
        load_wan_dit(str(tmp_path))
    assert str(err.value) == f"{index}: weight_map names {shard!r}, not a file beside the index"


def test_save_wan_dit_is_an_official_checkpoint(reference, tmp_path):
    """save_wan_dit writes what the official loader path reads: the same model back, still equal to diffusers'."""

    ref, path = reference
    ours = load_wan_dit(str(path))
    ours.cfg.text_len = TEXT_LEN
    save_wan_dit(ours, tmp_path / "wan")
    assert sorted(os.listdir(tmp_path / "wan")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    with open(tmp_path / "wan" / "config.json") as f:
        assert json.load(f)["_class_name"] == "WanModel"
    again = load_wan_dit(str(tmp_path / "wan"))
    assert again.cfg == ours.cfg
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))
    check_equal(again, ref)


def test_bf16_load_keeps_fp32_where_reference_does(reference):
    _, path = reference
    model = load_wan_dit(str(path), dtype=torch.bfloat16)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert dtypes["blocks.0.ffn.0.weight"] == torch.bfloat16
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.bfloat16
    for k in ("time_embedding.0.weight", "time_projection.1.weight", "head.head.weight", "head.modulation",
              "blocks.1.modulation", "blocks.0.norm3.weight", "blocks.0.self_attn.norm_q.weight"):
        assert dtypes[k] == torch.float32, k
    # bf16 weights run without the caller setting up autocast, and stay close to the fp32 reference
    ref, _ = reference
    model.cfg.text_len = TEXT_LEN
    x, ctx = inputs()
    t = torch.tensor([[0.0, 500.0, 500.0], [0.0, 990.0, 990.0]])
    with torch.no_grad():
        out = model(x, t, ctx)
    theirs = run_reference(ref, x, t, ctx)
    assert out.dtype == torch.float32
    assert (out - theirs).norm() / theirs.norm() < 0.02
    # and so does a model cast whole, its fp32 norms too (`.to(torch.bfloat16)`)
    whole = load_wan_dit(str(path)).to(torch.bfloat16)
    whole.cfg.text_len = TEXT_LEN
    with torch.no_grad():
        out = whole(x, t, ctx)
    assert (out.float() - theirs).norm() / theirs.norm() < 0.02


def test_full_config_parameter_count_and_names():
    with torch.device("meta"):
        model = WanDiT(WanConfig())
    sd = model.state_dict()
    assert len(sd) == 825
    assert sum(p.numel() for p in model.parameters()) == 4_999_787_712
    # shapes of the official WanModel (TI2V-5B config)
    expect = {"patch_embedding.weight": (3072, 48, 1, 2, 2), "text_embedding.0.weight": (3072, 4096),
              "time_projection.1.weight": (18432, 3072), "head.modulation": (1, 2, 3072), "head.head.weight": (192, 3072),
              "blocks.29.modulation": (1, 6, 3072), "blocks.0.self_attn.norm_q.weight": (3072,),
              "blocks.0.norm3.bias": (3072,), "blocks.0.cross_attn.norm_k.weight": (3072,),
              "blocks.0.ffn.0.weight": (14336, 3072), "blocks.0.ffn.2.weight": (3072, 14336)}
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(".norm1." in k or ".norm2." in k or k.startswith("head.norm") for k in sd)


@pytest.mark.parametrize("break_it,message", [
    (lambda sd: sd.pop("blocks.1.ffn.2.bias"), "missing (1): blocks.1.ffn.2.bias"),
    (lambda sd: sd.__setitem__("blocks.0.extra.weight", torch.zeros(3)), "unexpected (1): blocks.0.extra.weight"),
    (lambda sd: sd.__setitem__("head.head.bias", torch.zeros(7)), "head.head.bias: checkpoint [7] vs model [192]"),
])
def test_bad_checkpoint_gives_one_clear_error(reference, tmp_path, break_it, message):
    _, path = reference
    sd = dict(load_wan_dit(str(path)).state_dict())
    break_it(sd)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, bad)
    with pytest.raises(CheckpointError) as err:
        load_wan_dit(str(bad), cfg=WanConfig(**TINY))
    assert str(bad) in str(err.value) and message in str(err.value)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "diffusion_pytorch_model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_wan_dit(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_wan_dit(str(tmp_path / "nope"))


def test_guessed_config_values_are_said(tmp_path, capsys):
    """Without config.json, num_heads and text_len are not in the weights: Wan's values are used, and said."""
    torch.manual_seed(0)
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=32, freq_dim=32, text_len=16)
    path = tmp_path / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in WanDiT(cfg).state_dict().items()}, path)
    loaded = load_wan_dit(str(path))
    assert (loaded.cfg.num_heads, loaded.cfg.text_len) == (2, 512)  # 256 / 128 heads happens to match; 512 does not
    assert capsys.readouterr().err == (f"{path}: no config.json gives num_heads or text_len; using num_heads = 2 "
                                       f"(width 256 / Wan's head width 128), text_len = 512 (Wan's prompt length)\n")
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 2, "text_len": 16}))
    assert load_wan_dit(str(path)).cfg == cfg and capsys.readouterr().err == ""


def test_config_values_a_model_cannot_have_are_named(tmp_path):
    """A config.json edited by hand (or another tool's), or a tensor of integers, is one CheckpointError naming the
    file and the value, not a ZeroDivisionError, TypeError or KeyError from inside torch."""
    cfg = WanConfig(dim=256, ffn_dim=64, num_heads=2, num_layers=1, text_dim=32, freq_dim=32, text_len=16)
    path = tmp_path / "dit.safetensors"
    sd = {k: v.contiguous() for k, v in WanDiT(cfg).state_dict().items()}
    save_file(sd, path)
    for config, why in (({"num_heads": 0}, "num_heads 0: must be positive whole numbers"),
                        ({"dim": "256", "num_layers": 1.0},
                         "dim '256', num_layers 1.0: must be positive whole numbers"),
                        ({"num_heads": 3}, "patch_size (1, 2, 2), dim 256, num_heads 3: expected three patch sizes and "
                                           "a width that splits into the heads"),
                        ({"num_attention_heads": 2}, "num_attention_heads (diffusers' layout) without "
                                                     "attention_head_dim"),
                        ({"num_attention_heads": "2", "attention_head_dim": "128"},
                         "num_attention_heads '2' and attention_head_dim '128' must be positive whole numbers")):
        (tmp_path / "config.json").write_text(json.dumps({"text_len": 16} | config))
        with pytest.raises(CheckpointError) as err:
            load_wan_dit(str(path))
        assert str(err.value) == f"{path}: config.json: {why}"
    sd["head.head.bias"] = sd["head.head.bias"].long()
    save_file(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_wan_dit(str(path), cfg=cfg)
    assert str(err.value) == (f"{path}: head.head.bias holds torch.int64 values, the model's head.head.bias "
                              f"torch.float32 ones")


def test_pickled_objects_are_refused_without_advising_to_run_them(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))
    path = tmp_path / "wan.pth"
    torch.save({"patch_embedding.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_wan_dit(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds Python objects besides tensors (builtins.print)") or \
        msg.startswith(f"{path}: holds Python objects besides tensors (print)")
    assert "weights_only" not in msg and "\n" not in msg

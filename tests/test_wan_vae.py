"""The Wan2.2 VAE against diffusers' AutoencoderKLWan, checkpoint layouts, causal streaming, errors, latent cache."""
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from checkpoint import CheckpointError
from data import LatentCache
from wan_vae import (VAE_CONFIGS, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, CausalCache, WanVAE, WanVAEConfig,
                     load_wan_vae, vae_fingerprint, vae_key)
from wvm import clip_latents

diffusers = pytest.importorskip("diffusers")

# tiny widths, different for encoder and decoder so a mix-up shows; everything else as Wan2.2
TINY = dict(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
            temperal_downsample=[False, True, True])
WAN22 = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_temporal=4,
             scale_factor_spatial=16, latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD))
MEAN = torch.tensor(WAN22_LATENTS_MEAN).view(1, -1, 1, 1, 1)
STD = torch.tensor(WAN22_LATENTS_STD).view(1, -1, 1, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: a second OpenMP thread only adds sync cost (20x the CPU time on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A tiny random diffusers Wan2.2-style VAE saved as a pipeline folder (<root>/vae/)."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**TINY, **WAN22).eval()
    with torch.no_grad():  # default init leaves gammas at 1 and the attention proj at 0: random everything
        for name, p in ref.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(0, 0.1)
    root = tmp_path_factory.mktemp("pipe")
    ref.save_pretrained(root / "vae")
    return ref, root


def video(F, H=32, W=48, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, F, H, W, generator=g) * 2 - 1


def ref_encode(ref, x):
    """diffusers returns the raw moments; the Wan pipelines normalize the mean with latents_mean/std."""
    with torch.no_grad():
        return (ref.encode(x).latent_dist.mean - MEAN) * (1.0 / STD)


def ref_decode(ref, z):
    with torch.no_grad():
        return ref.decode(z / (1.0 / STD) + MEAN).sample


def close(a, b, rtol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err <= rtol * b.abs().max().item(), f"max abs error {err} vs max {b.abs().max().item()}"


@pytest.fixture(scope="module")
def tiny(reference):
    return load_wan_vae(str(reference[1]))  # pipeline folder -> vae/, config from config.json


@pytest.mark.parametrize("F", [1, 5, 9])
def test_matches_diffusers_from_diffusers_folder(reference, tiny, F):
    ref, _ = reference
    assert tiny.cfg == WanVAEConfig(dim=8, dec_dim=12)
    x = video(F)
    z = tiny.encode(x)
    assert z.shape == (1, 48, 1 + (F - 1) // 4, 2, 3) and z.dtype == torch.float32
    close(z, ref_encode(ref, x))
    zr = torch.randn(z.shape, generator=torch.Generator().manual_seed(F))
    y = tiny.decode(zr)
    assert y.shape == (1, 3, F, 32, 48) and y.abs().max() <= 1
    close(y, ref_decode(ref, zr))


def test_matches_diffusers_from_official_pth(reference, tmp_path):
    """Official names written by vae_key (convert_vae_22 inverted) into a flat .pth, config from the shapes."""
    ref, _ = reference
    sd = {vae_key(k): v for k, v in ref.state_dict().items()}
    assert len(sd) == len(ref.state_dict()) and "encoder.downsamples.1.downsamples.2.time_conv.weight" in sd
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(sd, path)
    with open(tmp_path / "config.json", "w") as f:  # the official folder's config.json is the DiT's: ignored
        json.dump({"_class_name": "WanModel", "dim": 3072, "in_dim": 48}, f)
    for p in (path, tmp_path):  # the file, or the official model folder holding it
        vae = load_wan_vae(str(p))
        assert vae.cfg == WanVAEConfig(dim=8, dec_dim=12)
    x = video(9, B=2)
    close(vae.encode(x), ref_encode(ref, x))
    z = torch.randn(2, 48, 2, 2, 3)
    close(vae.decode(z), ref_decode(ref, z))


def test_key_mapping_covers_the_full_wan2_2_vae():
    """All 196 diffusers keys of the full-size model map onto ours with the same shapes, plus hand-checked names."""
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, **WAN22)
        ours = WanVAE(WanVAEConfig())
    mapped = {vae_key(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    for theirs, official in [  # diffusers' conversion script, inverted
        ("quant_conv.weight", "conv1.weight"), ("post_quant_conv.bias", "conv2.bias"),
        ("encoder.conv_in.weight", "encoder.conv1.weight"), ("decoder.conv_in.bias", "decoder.conv1.bias"),
        ("encoder.mid_block.attentions.0.to_qkv.weight", "encoder.middle.1.to_qkv.weight"),
        ("decoder.mid_block.resnets.1.norm2.gamma", "decoder.middle.2.residual.3.gamma"),
        ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.downsamples.1.downsamples.0.shortcut.weight"),
        ("encoder.down_blocks.0.downsampler.resample.1.weight",
         "encoder.downsamples.0.downsamples.2.resample.1.weight"),
        ("decoder.up_blocks.1.upsampler.time_conv.bias", "decoder.upsamples.1.upsamples.3.time_conv.bias"),
        ("decoder.up_blocks.3.resnets.2.conv2.weight", "decoder.upsamples.3.upsamples.2.residual.6.weight"),
        ("decoder.norm_out.gamma", "decoder.head.0.gamma"), ("encoder.conv_out.bias", "encoder.head.2.bias"),
    ]:
        assert vae_key(theirs) == official
        assert vae_key(official) == official  # official names pass through


def test_full_config_on_meta():
    with torch.device("meta"):
        vae = WanVAE(VAE_CONFIGS["wan2.2"])
    sd = vae.state_dict()
    assert len(sd) == 196
    assert sum(v.numel() for v in sd.values()) == 704_688_668
    assert sum(v.numel() for k, v in sd.items() if k.startswith("encoder.")) == 149_627_776
    assert sum(v.numel() for k, v in sd.items() if k.startswith("decoder.")) == 555_049_228
    for key, shape in [  # shapes of the official Wan2.2 VAE
        ("encoder.conv1.weight", (160, 12, 3, 3, 3)),
        ("encoder.downsamples.0.downsamples.0.residual.0.gamma", (160, 1, 1, 1)),
        ("encoder.downsamples.1.downsamples.0.shortcut.weight", (320, 160, 1, 1, 1)),
        ("encoder.downsamples.2.downsamples.2.time_conv.weight", (640, 640, 3, 1, 1)),
        ("encoder.middle.1.norm.gamma", (640, 1, 1)),
        ("encoder.middle.1.to_qkv.weight", (1920, 640, 1, 1)),
        ("encoder.head.2.weight", (96, 640, 3, 3, 3)),
        ("conv1.weight", (96, 96, 1, 1, 1)), ("conv2.weight", (48, 48, 1, 1, 1)),
        ("decoder.conv1.weight", (1024, 48, 3, 3, 3)),
        ("decoder.upsamples.0.upsamples.3.time_conv.weight", (2048, 1024, 3, 1, 1)),
        ("decoder.upsamples.2.upsamples.3.resample.1.weight", (512, 512, 3, 3)),
        ("decoder.upsamples.3.upsamples.0.shortcut.weight", (256, 512, 1, 1, 1)),
        ("decoder.head.2.weight", (12, 256, 3, 3, 3)),
    ]:
        assert tuple(sd[key].shape) == shape, key
    assert "decoder.upsamples.3.upsamples.3.resample.1.weight" not in sd  # the last level does not upsample


def test_streaming_equals_one_call(tiny):
    """17 frames in one call = frame 0, then groups of 4 fed through a shared cache; prefixes are causal."""
    x = video(17, B=2, seed=3)
    z = tiny.encode(x)
    assert z.shape == (2, 48, 5, 2, 3)
    cache = CausalCache()
    parts = [tiny.encode(x[:, :, a:b], cache) for a, b in ((0, 1), (1, 5), (5, 13), (13, 17))]
    assert torch.equal(torch.cat(parts, 2), z)
    assert all(t.shape[2] <= 2 for t in cache.frames.values())  # the state does not grow with the video
    assert torch.equal(tiny.encode(x[:, :, :9]), z[:, :, :3])
    assert torch.equal(tiny.encode(x[:, :, :1]), z[:, :, :1])  # an image = the first latent frame (TI2V)

    y = tiny.decode(z)
    assert y.shape == (2, 3, 17, 32, 48)
    cache = CausalCache()
    parts = [tiny.decode(z[:, :, a:b], cache) for a, b in ((0, 1), (1, 3), (3, 5))]
    assert [p.shape[2] for p in parts] == [1, 8, 8]
    assert torch.equal(torch.cat(parts, 2), y)
    assert torch.equal(tiny.decode(z[:, :, :2]), y[:, :, :5])


def test_bf16_weights_track_fp32(reference):
    vae32 = load_wan_vae(str(reference[1]))
    vae16 = load_wan_vae(str(reference[1]), dtype=torch.bfloat16)
    assert vae16.conv2.weight.dtype == torch.bfloat16
    x = video(5)
    z32, z16 = vae32.encode(x), vae16.encode(x)
    assert z16.dtype == torch.float32
    assert (z16 - z32).abs().max() <= 0.05 * z32.abs().max()
    y16 = vae16.decode(z32)
    assert y16.dtype == torch.float32 and (y16 - vae32.decode(z32)).abs().max() <= 0.1


def test_input_errors(tiny):
    for bad, match in [
        (video(4), r"4 frames: expected 1 \+ 4k"),
        (video(5, H=40), r"multiples of 16"),
        (torch.zeros(1, 4, 5, 32, 32), r"expected \[B, 3, F, H, W\]"),
        (torch.zeros(3, 5, 32, 32), r"expected \[B, 3, F, H, W\]"),
        (torch.zeros(0, 3, 5, 32, 32), r"video \(0, 3, 5, 32, 32\): expected \[B, 3, F, H, W\] .*B >= 1"),
        (torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), r"uint8"),
        (torch.full((1, 3, 5, 32, 32), 128.0), r"expected \[-1, 1\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            tiny.encode(bad)
    unit = torch.linspace(0, 1, 5 * 32 * 32 * 3).reshape(1, 3, 5, 32, 32)  # frames scaled to [0, 1]: said
    with pytest.warns(UserWarning, match=r"video values span \[0, 1\], none below 0: frames scaled to \[0, 1\]"):
        tiny.encode(unit)
    with warnings.catch_warnings():  # a bright clip in [-1, 1] (no dark part) is not
        warnings.simplefilter("error")
        tiny.encode(0.7 + 0.2 * unit)
        tiny.encode(unit * 2 - 1)
    for value in (float("nan"), float("inf")):
        x = video(5)
        x[0, 1, 2, 3, 4] = value
        with pytest.raises(ValueError, match="NaN or inf"):
            tiny.encode(x)
    cache = CausalCache()
    tiny.encode(video(1), cache)
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny.encode(video(5), cache)
    with pytest.raises(ValueError, match="fresh one to decode"):
        tiny.decode(torch.zeros(1, 48, 1, 2, 3), cache)
    with pytest.raises(ValueError, match=r"expected \[B, 48, T >= 1, h, w\]"):
        tiny.decode(torch.zeros(1, 16, 2, 2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny.decode(torch.full((1, 48, 1, 2, 3), float("nan")))


def test_loader_errors(reference, tmp_path):
    sd = {vae_key(k): v for k, v in reference[0].state_dict().items()}

    def load(state):
        path = tmp_path / "vae.safetensors"
        save_file(state, str(path))
        return load_wan_vae(str(path), cfg=WanVAEConfig(dim=8, dec_dim=12))

    bad = dict(sd)
    del bad["decoder.middle.1.proj.bias"]
    bad["encoder.extra.weight"] = torch.zeros(2)
    bad["conv2.weight"] = torch.zeros(48, 48, 3, 1, 1)
    with pytest.raises(CheckpointError) as e:
        load(bad)
    msg = str(e.value)
    assert "missing (2): conv2.weight, decoder.middle.1.proj.bias" in msg  # mis-shaped also means missing
    assert "unexpected (1): encoder.extra.weight" in msg
    assert "conv2.weight: checkpoint [48, 48, 3, 1, 1] vs model [48, 48, 1, 1, 1]" in msg
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_wan_vae(str(tmp_path / "nowhere"))
    dit = tmp_path / "dit"
    dit.mkdir()
    save_file({"patch_embedding.weight": torch.zeros(8, 48, 1, 2, 2)}, str(dit / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a Wan VAE checkpoint"):
        load_wan_vae(str(dit))
    v21 = {k: v for k, v in sd.items()}
    v21["encoder.conv1.weight"] = torch.zeros(8, 3, 3, 3, 3)
    save_file(v21, str(dit / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not the Wan2.1 one"):
        load_wan_vae(str(dit))
    half = {k: v.half() if i % 2 else v for i, (k, v) in enumerate(sd.items())}  # float dtypes mixed in one file
    save_file(half, str(dit / "model.safetensors"))
    mixed = load_wan_vae(str(dit), cfg=WanVAEConfig(dim=8, dec_dim=12))
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}  # not a forward that fails naming no file
    assert mixed.encode(video(5)).isfinite().all()
    for key in ("encoder.downsamples.1.downsamples.2.time_conv.weight",  # a missing time_conv, either side, is named
                "decoder.upsamples.1.upsamples.3.time_conv.weight"):  # (not a key of the other side as unexpected)
        save_file({k: v for k, v in sd.items() if k != key}, str(dit / "model.safetensors"))
        with pytest.raises(CheckpointError, match=rf"{dit}: no {key} \(official name\)"):
            load_wan_vae(str(dit))


def test_latent_cache_is_bit_identical(tiny, tmp_path):
    """A clip's latents stored as train.py stores them (clip_latents: current and future) come back bit for bit from
    disk, and another VAE gets another folder."""
    cache = LatentCache(str(tmp_path), vae_fingerprint(tiny))
    assert cache.load("episode 3/frames 0-8") is None
    for key, seed in (("episode 3/frames 0-8", 1), ("episode 3/frames 4-12", 2)):
        cache.put(key, clip_latents(tiny, video(9, seed=seed), 4)[0])
    again = LatentCache(str(tmp_path), vae_fingerprint(tiny))  # from disk this time
    z = again.load("episode 3/frames 0-8")
    expected = tiny.encode(video(9, seed=1))[0]
    assert z.shape == (48, 2, 2, 3) and torch.equal(z, expected[:, 1:])  # the prefix latent is dropped
    assert torch.equal(again.load("episode 3/frames 4-12"), tiny.encode(video(9, seed=2))[0, :, 1:])
    files = os.listdir(cache.dir)
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)  # no temporary files left
    assert LatentCache(str(tmp_path), vae_fingerprint(WanVAE(tiny.cfg))).dir != cache.dir  # other weights, other folder
    # clip lengths the VAE's latent frames do not fit, and h = 1, whose 1 + 2h frames read as h + 2 led by o_0
    with pytest.raises(ValueError, match=r"clips \(1, 3, 7, 32, 48\): expected 1 \+ h = 5 or 1 \+ 2h = 9 frames"):
        clip_latents(tiny, video(7), 4)
    with pytest.raises(ValueError, match=r"h = 1: the value chunk needs at least 2 values"):
        clip_latents(tiny, video(3), 1)


def test_clip_latents_checks_h_against_the_vae(tiny):
    """One h: the value chunk, the clip (1 + h or 1 + 2h frames) and the VAE's frames per latent must agree."""
    assert clip_latents(tiny, video(5), 4).shape == (1, 48, 1, 2, 3)  # scoring: prefix + current -> current
    with pytest.raises(ValueError, match="h = 2 values"):
        clip_latents(tiny, video(5), 2)
    with pytest.raises(ValueError, match="expected 1 \\+ h = 5 or 1 \\+ 2h = 9 frames"):
        clip_latents(tiny, video(13), 4)


def test_clip_latents_led_by_the_first_frame_encode_it_as_an_image(tiny, reference):
    """train.py --first_frame: a clip led by the episode's o_0 gets o_0's latent first, as diffusers encodes o_0
    alone (an image), then the latents the clip after it gets without o_0."""
    clip = video(10, B=2, seed=3)
    z = clip_latents(tiny, clip, 4)
    assert z.shape == (2, 48, 3, 2, 3)
    close(z[:, :, :1], ref_encode(reference[0], clip[:, :, :1]))
    close(z[:, :, 1:], ref_encode(reference[0], clip[:, :, 1:])[:, :, 1:])
    torch.testing.assert_close(clip_latents(tiny, clip[:, :, :6], 4), z[:, :, :2], rtol=1e-5, atol=1e-5)  # scoring


def test_calibrated_random_vae_has_unit_latents_and_round_trips(tmp_path):
    """A random VAE's latents, normalized with constants measured on the same clips, have per-channel mean 0 and
    std 1; save_wan_vae keeps those constants, so the reloaded VAE encodes identically."""
    from wan_vae import calibrate_latents, save_wan_vae
    torch.manual_seed(0)
    vae = WanVAE(VAE_CONFIGS["tiny"]).eval()
    clips = torch.rand(6, 3, 5, 32, 32) * 2 - 1
    before = vae.encode(clips)
    assert before.transpose(0, 1).flatten(1).std(1).mean() < 0.5  # Wan's constants do not fit a random VAE
    calibrate_latents(vae, clips)
    z = vae.encode(clips).transpose(0, 1).flatten(1).double()
    torch.testing.assert_close(z.mean(1), torch.zeros(48, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(48, dtype=torch.float64), atol=1e-4, rtol=0)
    save_wan_vae(vae, str(tmp_path / "vae.safetensors"))
    again = load_wan_vae(str(tmp_path / "vae.safetensors"))
    assert again.cfg == vae.cfg
    assert torch.equal(again.encode(clips), vae.encode(clips))


def test_missing_latent_statistics_are_said(tmp_path, capsys):
    """A VAE file without its per-channel statistics gets Wan2.2's published ones, and stderr says so; one saved
    by save_wan_vae carries its own and loads silently."""
    from wan_vae import save_wan_vae
    torch.manual_seed(0)
    vae = WanVAE(VAE_CONFIGS["tiny"])
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(bare))
    assert load_wan_vae(str(bare)).cfg.latents_mean == WAN22_LATENTS_MEAN
    assert capsys.readouterr().err == (f"{bare}: no latent statistics in the file or a config.json; using Wan2.2's "
                                       f"published per-channel mean and std (right for the released Wan2.2 VAE only)\n")
    save_wan_vae(vae, str(tmp_path / "own.safetensors"))
    load_wan_vae(str(tmp_path / "own.safetensors"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("saved,why", [("{", "JSONDecodeError: Expecting property name"),
                                       ('{"z_dim": 48, "bogus": 1}', "TypeError: "),
                                       ('{"num_res_blocks": "2"}', "ValueError: num_res_blocks '2': must be positive"),
                                       (json.dumps({"latents_std": [0.0] * 48}), "ValueError: latents_std (0.0, ")])
def test_damaged_vae_config_metadata_is_named(tmp_path, saved, why):
    """A .safetensors VAE whose wan_vae_config metadata no config can be read from is a CheckpointError naming the
    file (eval.py and train.py say it in one line), not a JSONDecodeError or TypeError from inside."""
    vae = WanVAE(VAE_CONFIGS["tiny"])
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path), metadata={"wan_vae_config": saved})
    with pytest.raises(CheckpointError) as err:
        load_wan_vae(str(path))
    assert str(err.value).startswith(f"{path}: unreadable wan_vae_config metadata ({why}")


def test_training_path_gradients_match_diffusers(reference, tiny):
    """reconstruct (encode -> decode through the inference code, with its in-place ops) gives the same loss and the
    same gradient for every parameter as diffusers' AutoencoderKLWan, trained the usual way (mean of the posterior,
    decode, clamp)."""
    from dataclasses import replace
    from wan_vae import reconstruct
    ref, _ = reference
    z = tiny.cfg.z_dim
    ours = WanVAE(replace(tiny.cfg, latents_mean=(0.0,) * z, latents_std=(1.0,) * z))  # train_vae's identity stats
    ours.load_state_dict(tiny.state_dict())
    x, target = video(5, seed=1), video(5, seed=2)
    rec, _ = reconstruct(ours, x)
    loss = (rec.clamp(-1, 1) - target).pow(2).mean()
    loss.backward()
    ref.zero_grad()
    ref_loss = (ref.decode(ref.encode(x).latent_dist.mean).sample - target).pow(2).mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    grads = dict(ours.named_parameters())
    checked = 0
    for name, p in ref.named_parameters():  # quant_conv's log-variance half is unused by both: zero gradients
        want = torch.zeros_like(p) if p.grad is None else p.grad
        mine = grads[vae_key(name)].grad
        close(torch.zeros_like(p) if mine is None else mine.reshape(p.shape), want, rtol=1e-4)
        checked += bool(want.any())
    assert checked > 100


def test_train_vae_learns_to_reconstruct():
    """A few steps of train_vae on smooth moving blobs lower the reconstruction error well below an untrained VAE's
    and leave latents normalized by statistics measured on the data (mean about 0, std about 1 per channel)."""
    from wan_vae import reconstruct, train_vae
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    clips = []
    for _ in range(8):  # a bright blob drifting over a tinted background, 9 frames
        c0, v, tint = torch.rand(2, generator=g) * 16 + 8, torch.randn(2, generator=g), torch.rand(3, 1, 1, 1, generator=g)
        frames = [torch.exp(-((yy - c0[0] - v[0] * t) ** 2 + (xx - c0[1] - v[1] * t) ** 2) / 20) for t in range(9)]
        clips.append({"frames": (tint + torch.stack(frames)[None]).clamp(0, 1) * 2 - 1})
    x = torch.stack([c["frames"][:, :5] for c in clips])
    fresh = WanVAE(VAE_CONFIGS["tiny"])
    before = (reconstruct(fresh, x)[0] - x).pow(2).mean().item()
    vae = train_vae("tiny", clips, steps=30, batch=4)
    with torch.no_grad():
        after = (vae.decode(vae.encode(x)) - x).pow(2).mean().item()
        zs = vae.encode(x).transpose(0, 1).flatten(1)
    assert after < 0.5 * before, (after, before)
    assert zs.mean(1).abs().mean() < 0.3 and 0.5 < zs.std(1).mean() < 1.5

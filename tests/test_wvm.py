"""WVM: the MoT coupling, its masks, prefill inference, checkpoints, and that a tiny model learns."""
import math

import pytest
import torch
import torch.nn.functional as F

import wvm as wvm_module
from value_dit import ValueConfig, ValueDiT, hl_gauss_decode, hl_gauss_target
from wvm import WVM, load_wvm, save_wvm, wvm_configs

B, C, H, W, TXT = 2, 48, 8, 6, 32


def tiny(mask="causal", head="flow", seed=0, pred="v"):
    torch.manual_seed(seed)
    m = WVM(*wvm_configs("tiny", head=head, pred=pred), mask=mask)
    with torch.no_grad():  # the value head starts at zero; randomize it so the outputs mean something
        m.value.head.head.weight.normal_(0, 0.5)
    return m.eval()


def inputs(seed=1, frames=2):
    """frames 2: current, future latent; 3: led by the first frame's (train.py --first_frame), clean as the current."""
    g = torch.Generator().manual_seed(seed)
    x_in = torch.randn(B, C, frames, H, W, generator=g)
    t_vid = torch.tensor([[0.0] * (frames - 1) + [400.0], [0.0] * (frames - 1) + [900.0]])
    v_in = torch.rand(B, 5, generator=g)
    t_val = torch.tensor([[0.0] + [700.0] * 4, [0.0] + [150.0] * 4])
    ctx = torch.randn(B, 7, TXT, generator=g)
    return x_in, t_vid, v_in, t_val, ctx


def test_value_stream_size_matches_paper():
    with torch.device("meta"):
        value = ValueDiT(ValueConfig())
    n = sum(p.numel() for p in value.parameters())
    # hand count: 30 blocks of 22,057,984 + embeddings, text/time MLPs and head (see README)
    assert n == 30 * 22_057_984 + 4_335_617 == 666_075_137
    assert 0.6e9 < n < 0.8e9


@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("mask", ["causal", "full"])
def test_video_only_loss_is_the_joint_video_loss(mask, frames):
    """The world-model prior (video_only) trains exactly the video stream WVM runs: its loss equals the joint
    forward's video loss, and its gradients reach only the video stream."""
    m = tiny(mask)
    x_in, _, v_in, _, ctx = inputs(frames=frames)
    batch = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.randn(B, C, 1, H, W), "sigma_value": torch.tensor([0.5, 0.2]),
             "noise_value": torch.randn(B, 4)}
    joint = m(batch)["loss_video"]
    m.video_only = True
    out = m(batch)
    torch.testing.assert_close(out["loss"], joint, rtol=1e-5, atol=1e-7)
    assert out["loss_value"] == 0
    out["loss"].backward()
    assert all(p.grad is None for p in m.value.parameters())
    assert m.video.patch_embedding.weight.grad.abs().sum() > 0


def test_wan_forward_future_mask():
    """WanDiT.forward(future=1): the first latent frame's output ignores the last frame (block-causal), the last
    one sees both; future=0 is Wan's full attention, where the first frame does depend on the last."""
    torch.manual_seed(0)
    video = WVM(*wvm_configs("tiny")).video.eval()
    x_in, t_vid, _, _, ctx = inputs()
    x2 = x_in.clone()
    x2[:, :, 1] += 1.0
    with torch.no_grad():
        a, b = video(x_in, t_vid, ctx, future=1), video(x2, t_vid, ctx, future=1)
        torch.testing.assert_close(a[:, :, 0], b[:, :, 0], rtol=0, atol=0)
        assert not torch.allclose(a[:, :, 1], b[:, :, 1])
        a, b = video(x_in, t_vid, ctx), video(x2, t_vid, ctx)
        assert not torch.allclose(a[:, :, 0], b[:, :, 0])


def test_fresh_value_stream_predicts_zero():
    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    x_in, t_vid, v_in, t_val, ctx = inputs()
    with torch.no_grad():
        _, _, z, eu = m.joint(x_in, t_vid, v_in, t_val, ctx)
        assert torch.count_nonzero(m.value.chunk_out(z, eu)) == 0


def test_video_stream_ignores_value_tokens():
    m = tiny()
    x_in, t_vid, v_in, t_val, ctx = inputs()
    with torch.no_grad():
        x1, _, z1, _ = m.joint(x_in, t_vid, v_in, t_val, ctx)
        x2, _, z2, _ = m.joint(x_in, t_vid, torch.rand_like(v_in) * 5, t_val.flip(1), ctx)
    assert torch.equal(x1, x2)  # bit-identical
    assert not torch.allclose(z1, z2)
    # and the video loss with it
    batch = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.randn(B, C, 1, H, W), "sigma_value": torch.tensor([0.5, 0.2]),
             "noise_value": torch.randn(B, 4)}
    batch2 = dict(batch, values=torch.rand(B, 5), sigma_value=torch.tensor([0.9, 0.1]), noise_value=torch.randn(B, 4))
    with torch.no_grad():
        assert torch.equal(m(batch)["loss_video"], m(batch2)["loss_video"])


@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("mask", ["causal", "full"])
def test_wvm_video_stream_is_the_wan_dit(mask, frames):
    """Full mask: the video stream computes exactly WanDiT on every frame. Causal mask: the current frame (with the
    first frame's, when it leads) is computed as if it were alone."""
    m = tiny(mask)
    x_in, t_vid, v_in, t_val, ctx = inputs(frames=frames)
    with torch.no_grad():
        x, e, _, _ = m.joint(x_in, t_vid, v_in, t_val, ctx)
        ours = m.video.unpatchify(m.video.head(x, e), frames, H, W)
        if mask == "full":
            torch.testing.assert_close(ours, m.video(x_in, t_vid, ctx), rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(ours[:, :, :-1], m.video(x_in[:, :, :-1], t_vid[:, :-1], ctx), rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("mask", ["causal", "full"])
def test_future_latent_reaches_values_only_under_full_mask(mask, frames):
    m = tiny(mask)
    x_in, t_vid, v_in, t_val, ctx = inputs(frames=frames)
    x_alt = x_in.clone()
    x_alt[:, :, -1] = torch.randn_like(x_alt[:, :, -1])
    with torch.no_grad():
        z1 = m.value.chunk_out(*m.joint(x_in, t_vid, v_in, t_val, ctx)[2:])
        z2 = m.value.chunk_out(*m.joint(x_alt, t_vid, v_in, t_val, ctx)[2:])
    if mask == "causal":
        assert torch.equal(z1, z2)
    else:
        assert (z1 - z2).abs().max() > 1e-4


def dense_reference_attention(q, k, v, n_cur, n_fut, causal=True):
    """Dense masked attention over the joint sequence, the asymmetric mask written out by hand: current video sees
    current (and, without causal, future) video; future video sees all video; values see current video and values."""
    L = k.shape[1]
    n_vid = n_cur + n_fut
    seg = torch.tensor([0] * n_cur + [1] * n_fut + [2] * (L - n_vid))  # current, future, value
    sq, sk = seg[L - q.shape[1]:, None], seg[None, :]
    allowed = ((sq == 0) & ((sk == 0) | ((sk == 1) & (not causal)))) | ((sq == 1) & (sk <= 1)) | (
        (sq == 2) & ((sk == 0) | (sk == 2)))
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed)
    return o.transpose(1, 2)


@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("mask", ["causal", "full"])
def test_mot_forward_equals_dense_masked_reference(mask, frames, monkeypatch):
    m = tiny(mask)
    x_in, t_vid, v_in, t_val, ctx = inputs(frames=frames)
    with torch.no_grad():
        ours = m.joint(x_in, t_vid, v_in, t_val, ctx)
        monkeypatch.setattr(wvm_module, "mot_attention", dense_reference_attention)
        ref = m.joint(x_in, t_vid, v_in, t_val, ctx)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero_noise", [False, True])
@pytest.mark.parametrize("frames", [2, 3])
@pytest.mark.parametrize("mask", ["causal", "full"])
def test_predict_values_equals_joint_forward(mask, frames, zero_noise):
    m = tiny(mask)
    x_in, _, v_in, _, ctx = inputs(frames=frames)
    prefix, S, steps, h = v_in[:, 0], 3, 2, 4
    g = torch.Generator().manual_seed(5)
    pred = m.predict_values(x_in[:, :, :-1], ctx, prefix, steps=steps, samples=S, generator=g, zero_noise=zero_noise)
    # the same computation through the joint forward, one full pass per Euler step and sample; with zero_noise every
    # noise (the value chunk's, and the future latent's under the full mask) is its mean, 0
    g = torch.Generator().manual_seed(5)
    future = torch.randn(B, C, 1, H, W, generator=g) if mask == "full" else torch.randn(B, C, 1, H, W)
    eps = torch.randn(B * S, h, generator=g)
    if zero_noise:
        future, eps = future * 0, eps * 0
    rep = lambda t: t.repeat_interleave(S, 0)  # noqa: E731
    x_full = rep(torch.cat([x_in[:, :, :-1], future], 2))
    t_vid = torch.tensor([[0.0] * (frames - 1) + [1000.0]]).expand(B * S, frames)
    y = eps
    with torch.no_grad():
        for s, s_next in ((1.0, 0.5), (0.5, 0.0)):
            v_in_s = torch.cat([rep(prefix)[:, None], y], 1)
            t_val = torch.cat([torch.zeros(B * S, 1), torch.full((B * S, h), 1000.0 * s)], 1)
            out = m.value.chunk_out(*m.joint(x_full, t_vid, v_in_s, t_val, rep(ctx))[2:])
            y = y + (s_next - s) * out
    torch.testing.assert_close(pred, y.view(B, S, h), rtol=1e-5, atol=1e-5)
    if zero_noise:  # one value per window, whatever the generator
        torch.testing.assert_close(pred, pred[:, :1].expand_as(pred), rtol=1e-6, atol=1e-6)
        again = m.predict_values(x_in[:, :, :-1], ctx, prefix, steps=steps, generator=torch.Generator().manual_seed(9),
                                 zero_noise=True)
        torch.testing.assert_close(again[:, 0], pred[:, 0], rtol=1e-6, atol=1e-6)
    else:
        assert pred.std(1).mean() > 1e-3  # samples differ: the spread is real


@pytest.mark.parametrize("mask", ["causal", "full"])
def test_guidance_mixes_the_instructions_and_the_empty_ones_stream_at_each_euler_step(mask):
    """Classifier-free guidance: at each Euler step the value stream's output is u + w (c - u), c from the joint
    forward given the instruction, u given the empty one (all-zero features, as --text_dropout trains it), both with
    the same future latent's noise (the full mask) and the same chunk noise."""
    m = tiny(mask)
    x_in, _, v_in, _, ctx = inputs(frames=2)
    prefix, S, w, h = v_in[:, 0], 2, 2.5, 4
    pred = m.predict_values(x_in[:, :, :1], ctx, prefix, steps=2, samples=S, guidance=w,
                            generator=[torch.Generator().manual_seed(5 + b) for b in range(B)])
    gens = [torch.Generator().manual_seed(5 + b) for b in range(B)]
    future = (torch.stack([torch.randn(C, 1, H, W, generator=g) for g in gens]) if mask == "full"
              else torch.randn(B, C, 1, H, W))
    eps = torch.stack([torch.randn(S * h, generator=g) for g in gens]).view(B * S, h)
    rep = lambda t: t.repeat_interleave(S, 0)  # noqa: E731
    x_full, t_vid, y = rep(torch.cat([x_in[:, :, :1], future], 2)), torch.tensor([[0.0, 1000.0]]).expand(B * S, 2), eps
    with torch.no_grad():
        for s, s_next in ((1.0, 0.5), (0.5, 0.0)):
            v_in_s = torch.cat([rep(prefix)[:, None], y], 1)
            t_val = torch.cat([torch.zeros(B * S, 1), torch.full((B * S, h), 1000.0 * s)], 1)
            c, u = (m.value.chunk_out(*m.joint(x_full, t_vid, v_in_s, t_val, rep(text))[2:])
                    for text in (ctx, torch.zeros_like(ctx)))
            y = y + (s_next - s) * (u + w * (c - u))
    torch.testing.assert_close(pred, y.view(B, S, h), rtol=1e-5, atol=1e-5)
    # w = 1 is the instruction alone, w = 0 the empty one alone; and the two differ, so the mix above is tested
    alone = m.predict_values(x_in[:, :, :1], ctx, prefix, zero_noise=True)
    torch.testing.assert_close(m.predict_values(x_in[:, :, :1], ctx, prefix, zero_noise=True, guidance=1.0), alone)
    empty = m.predict_values(x_in[:, :, :1], torch.zeros_like(ctx), prefix, zero_noise=True)
    torch.testing.assert_close(m.predict_values(x_in[:, :, :1], ctx, prefix, zero_noise=True, guidance=0.0), empty)
    assert (alone - empty).abs().max() > 1e-3


def test_predict_values_names_inputs_of_the_wrong_shape():
    """Three current frames were read as values without a word; a wrong prefix or batch was a deep torch error."""
    m = tiny()
    x_in, _, v_in, _, ctx = inputs(frames=3)
    prefix = v_in[:, 0]
    for bad, msg in (((x_in, ctx, prefix), "expected \\[B, C, 1, H, W\\]"),
                     ((x_in[:, :, :1], ctx, prefix[:1]), "prefix_value must be \\[B\\]"),
                     ((x_in[:, :, :1], ctx, 0.5), "prefix_value must be \\[B\\]"),
                     ((x_in[:, :, :1], ctx[:1], prefix), "context \\[B, L, D\\]")):
        with pytest.raises(ValueError, match=msg):
            m.predict_values(*bad)
    with pytest.raises(ValueError, match="1 generators, one per row"):
        m.predict_values(x_in[:, :, :1], ctx, prefix, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="steps 0: at least one Euler step"):  # the noise was returned as the values
        m.predict_values(x_in[:, :, :1], ctx, prefix, steps=0)


@pytest.mark.parametrize("head", ["regression", "hlgauss"])
def test_deterministic_heads_predict_through_prefill(head):
    m = tiny(head=head)
    x_in, _, v_in, _, ctx = inputs()
    pred = m.predict_values(x_in[:, :, :1], ctx, v_in[:, 0], samples=2)
    with torch.no_grad():
        out = m.value.chunk_out(*m.joint(x_in, torch.zeros(B, 2), torch.cat([v_in[:, :1], torch.zeros(B, 4)], 1),
                                         torch.zeros(B, 5), ctx)[2:])
    ref = hl_gauss_decode(out) if head == "hlgauss" else out
    torch.testing.assert_close(pred, ref[:, None].expand(B, 2, 4), rtol=1e-5, atol=1e-5)
    # training reads the same empty chunk tokens, its loss that of Table 4's baselines: MSE to the chunk values, or
    # the cross-entropy to their HL-Gauss histogram (the flow's noise and time take no part)
    batch = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.zeros(B),
             "noise_video": torch.randn(B, C, 1, H, W), "sigma_value": torch.tensor([0.3, 0.9]),
             "noise_value": torch.randn(B, 4)}
    with torch.no_grad():
        loss = m(batch)["loss_value"]
    y = v_in[:, 1:]
    expect = (-(hl_gauss_target(y, 51) * out.log_softmax(-1)).sum(-1).mean() if head == "hlgauss"
              else ((out - y) ** 2).mean())
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_flow_head_predicting_x0_trains_on_the_clean_chunk_and_samples_by_its_implied_velocity(tmp_path):
    """pred x0: the loss is the MSE to the chunk targets at any flow time; an Euler step from s to s' moves x by
    (s' - s) (x - out) / s, so one step from pure noise returns the output itself; the checkpoint keeps it."""
    m = tiny(pred="x0")
    x_in, _, v_in, _, ctx = inputs()
    g = torch.Generator().manual_seed(2)
    batch = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.zeros(B, C, 1, H, W), "sigma_value": torch.tensor([0.4, 1.0]),
             "noise_value": torch.randn(B, 4, generator=g)}
    with torch.no_grad():
        out = m(batch)
    torch.testing.assert_close(out["loss_value"], ((out["value_out"] - v_in[:, 1:]) ** 2).mean())
    g = torch.Generator().manual_seed(5)
    pred = m.predict_values(x_in[:, :, :1], ctx, v_in[:, 0], steps=2, generator=g)[:, 0]
    one = m.predict_values(x_in[:, :, :1], ctx, v_in[:, 0], steps=1, generator=torch.Generator().manual_seed(5))[:, 0]
    y = torch.randn(B, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for s, s_next in ((1.0, 0.5), (0.5, 0.0)):
            t_val = torch.cat([torch.zeros(B, 1), torch.full((B, 4), 1000.0 * s)], 1)
            x0 = m.value.chunk_out(*m.joint(x_in, torch.tensor([[0.0, 1000.0]] * B), torch.cat([v_in[:, :1], y], 1),
                                            t_val, ctx)[2:])
            if s == 1.0:
                first = x0
            y = y + (s_next - s) * (y - x0) / s
    torch.testing.assert_close(pred, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, first, rtol=1e-5, atol=1e-5)  # one step: the prediction at pure noise
    save_wvm(m, str(tmp_path / "wvm.safetensors"))
    assert load_wvm(str(tmp_path / "wvm.safetensors")).value.cfg.pred == "x0"
    with pytest.raises(ValueError, match="x0 with the flow head"):
        WVM(*wvm_configs("tiny", head="regression", pred="x0"))


def test_hl_gauss_target_is_the_papers_and_decodes():
    """The target of Eq. F.8 by hand: a Gaussian of one bin width at the 51 bin centres, normalized; one-hot at the
    ends (within 1e-6 of 0 or 1). Expectation decoding of the target returns y."""
    y = torch.tensor([0.0, 0.38, 1.0, 5e-7, 1 - 5e-7, 0.5])
    p = hl_gauss_target(y, 51)
    torch.testing.assert_close(p.sum(-1), torch.ones(6))
    # 0.38 is bin centre 19: weights exp(-k^2 / 2) for bins k away, normalized over the 51 bins
    w = [math.exp(-0.5 * (i - 19) ** 2) for i in range(51)]
    assert abs(p[1, 19].item() - 1 / sum(w)) < 1e-6 and abs(p[1, 21].item() - math.exp(-2) / sum(w)) < 1e-6
    end = torch.zeros(51)
    end[0] = 1
    assert torch.equal(p[0], end) and torch.equal(p[3], end)
    assert torch.equal(p[2], end.flip(0)) and torch.equal(p[4], end.flip(0))
    torch.testing.assert_close(p[5], p[5].flip(0))  # 0.5 is the middle bin
    # the integrated form of Imani & White (mass of the Gaussian over each bin) is close to it, not equal
    cdf = lambda a: 0.5 * (1 + torch.erf(torch.tensor(a) / (0.02 * 2 ** 0.5)))  # noqa: E731
    mass = float(cdf(0.01) - cdf(-0.01)) / float(cdf(1.01 - 0.38) - cdf(-0.01 - 0.38))
    assert 0.005 < p[1, 19].item() - mass < 0.03
    # expectation decoding of a sharp distribution returns its centre; of the HL target, y (inside [0.01, 0.99])
    assert abs(hl_gauss_decode(torch.log(p[1] + 1e-12)).item() - 0.38) < 1e-3
    # between bin centres too (0.38 is one, where the most likely bin's centre would pass as well)
    assert abs(hl_gauss_decode(torch.log(hl_gauss_target(torch.tensor(0.383), 51) + 1e-12)).item() - 0.383) < 1e-4
    assert hl_gauss_decode(torch.log(p[0] + 1e-12)).item() < 1e-9


def test_loss_ignores_prefix_token_target():
    """The loss covers the h chunk tokens only: changing nothing but the chunk targets changes it, and the
    prefix value enters only as an input."""
    m = tiny()
    x_in, _, v_in, _, ctx = inputs()
    base = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.tensor([0.3, 0.8]),
            "noise_video": torch.zeros(B, C, 1, H, W), "sigma_value": torch.tensor([1.0, 1.0]),
            "noise_value": torch.zeros(B, 4)}
    with torch.no_grad():
        out = m(base)
        # at s = 1 the chunk input is pure noise, so the prediction is independent of the chunk targets:
        # loss_value must be the MSE between the output and (noise - targets) over the 4 chunk tokens
        expect = F.mse_loss(out["value_out"], -v_in[:, 1:])
        # other chunk targets, the same prefix: the same output (the input was pure noise), another loss
        other = m(dict(base, values=torch.cat([v_in[:, :1], 1 - v_in[:, 1:]], 1)))
    torch.testing.assert_close(out["loss_value"], expect)
    assert torch.equal(other["value_out"], out["value_out"])
    # the output is the joint forward's with the prefix token clean (time 0) and the chunk tokens at time 1000
    with torch.no_grad():
        fut = torch.tensor([0.7, 0.2])[:, None, None, None, None] * x_in[:, :, 1:]  # (1 - s) x0 at zero noise
        t_vid = torch.tensor([[0.0, 300.0], [0.0, 800.0]])
        ref = m.value.chunk_out(*m.joint(torch.cat([x_in[:, :, :1], fut], 2), t_vid,
                                         torch.cat([v_in[:, :1], torch.zeros(B, 4)], 1),
                                         torch.tensor([[0.0] + [1000.0] * 4] * B), ctx)[2:])
    torch.testing.assert_close(out["value_out"], ref, rtol=0, atol=1e-6)  # 1e-3 apart with a noisy prefix time
    torch.testing.assert_close(other["loss_value"], F.mse_loss(out["value_out"], v_in[:, 1:] - 1))


def test_checkpoint_round_trip(tmp_path):
    m = tiny()
    path = tmp_path / "wvm.safetensors"
    save_wvm(m, str(path))
    m2 = load_wvm(str(path)).eval()
    x_in, t_vid, v_in, t_val, ctx = inputs()
    with torch.no_grad():
        for a, b in zip(m.joint(x_in, t_vid, v_in, t_val, ctx), m2.joint(x_in, t_vid, v_in, t_val, ctx)):
            assert torch.equal(a, b)
    bf = load_wvm(str(path), dtype=torch.bfloat16)
    assert bf.video.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert bf.value.time_projection[1].weight.dtype == torch.float32


@pytest.mark.parametrize("key,edit,why", [
    ("run", lambda v: "[1]", "TypeError: run record [1]: not a JSON object"),
    ("mask", lambda v: "bogus", "ValueError: mask 'bogus': expected causal or full"),
    ("value_cfg", lambda v: v.replace('"chunk": 4', '"chunk": "4"'), "TypeError: "),
])
def test_a_checkpoint_whose_record_cannot_build_a_model_is_named(tmp_path, key, edit, why):
    """A downloaded wvm.safetensors whose metadata no model can be built from is a CheckpointError naming the file,
    not a TypeError from inside the model's constructor."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from checkpoint import CheckpointError
    path = tmp_path / "wvm.safetensors"
    save_wvm(tiny(), str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert key in meta and edit(meta[key]) != meta[key]
    save_file(load_file(str(path)), str(path), metadata={**meta, key: edit(meta[key])})
    with pytest.raises(CheckpointError) as err:
        load_wvm(str(path))
    assert str(err.value).startswith(f"{path}: not a WVM checkpoint ({why}")


def test_load_wvm_names_an_option_it_has_not(tmp_path):
    """A mistyped option, or the mask (the file's), is the caller's error, not a checkpoint called no WVM one."""
    path = tmp_path / "wvm.safetensors"
    save_wvm(tiny(), str(path))
    for kw, name in ((dict(video_loss_wieght=0.5), "video_loss_wieght"), (dict(mask="full"), "mask")):
        with pytest.raises(TypeError, match=rf"^load_wvm: no option {name} \(video_loss_weight, video_shift"):
            load_wvm(str(path), **kw)
    assert load_wvm(str(path), video_loss_weight=0.5).video_loss_weight == 0.5


def test_tiny_wvm_overfits_one_batch():
    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny")).train()
    g = torch.Generator().manual_seed(3)
    batch = {"latents": torch.randn(4, C, 2, 4, 4, generator=g), "context": torch.randn(4, 5, TXT, generator=g),
             "values": torch.rand(4, 5, generator=g), "sigma_video": torch.rand(4, generator=g),
             "noise_video": torch.randn(4, C, 1, 4, 4, generator=g), "sigma_value": torch.rand(4, generator=g),
             "noise_value": torch.randn(4, 4, generator=g)}
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    first = None
    for _ in range(200):
        out = m(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss_value"].item()
    assert out["loss_value"].item() < first / 10, (first, out["loss_value"].item())


@pytest.mark.parametrize("video_only", [False, True])
def test_activation_checkpointing_gives_same_gradients(monkeypatch, video_only):
    """Per MoT layer in WVM training, per block in the video stage (train.py --stage=video, which runs the video
    stream alone: --checkpointing did nothing there)."""
    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    m.video_only = video_only
    x_in, _, v_in, _, ctx = inputs()
    batch = {"latents": x_in, "context": ctx, "values": v_in, "sigma_video": torch.tensor([0.3, 0.8]),
             "noise_video": torch.randn(B, C, 1, H, W), "sigma_value": torch.tensor([0.5, 0.2]),
             "noise_value": torch.randn(B, 4)}
    calls, checkpoint = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append(fn) or checkpoint(
        fn, *a, **k))
    grads = []
    for ckpt in (False, True):
        m.zero_grad()
        m.checkpointing = ckpt
        m(batch)["loss"].backward()
        grads.append([None if p.grad is None else p.grad.clone() for p in m.parameters()])
    assert len(calls) == len(m.video.blocks)  # each layer (or block) once, with checkpointing only
    for a, b in zip(*grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1.3e-6, atol=1e-5))


def test_the_robots_state_enters_every_value_token_standardized_and_from_zero(tmp_path):
    """state_dim d > 0 (beyond the paper): each value token adds W [s, s_0, s - s_0] of the state standardized with
    the training statistics the model keeps; W starts at zero, so a fresh model is the video-only one, and a clip
    whose state is left out (keep False) is read by the video alone. Prefill inference reads it as training does,
    and the checkpoint keeps it in fp32."""
    from dataclasses import replace
    video_cfg, value_cfg = wvm_configs("tiny")
    torch.manual_seed(0)
    m = WVM(video_cfg, replace(value_cfg, state_dim=3)).eval()
    with torch.no_grad():
        m.value.head.head.weight.normal_(0, 0.5)
        m.value.state_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        m.value.state_std.copy_(torch.tensor([2.0, 0.5, 1.0]))
    g = torch.Generator().manual_seed(3)
    state, start = torch.randn(B, 5, 3, generator=g), torch.randn(B, 3, generator=g)
    feats = m.value.state_input(state, start, torch.tensor([True, False]))
    s = (state[0] - torch.tensor([1.0, -2.0, 0.5])) / torch.tensor([2.0, 0.5, 1.0])
    s0 = (start[0] - torch.tensor([1.0, -2.0, 0.5])) / torch.tensor([2.0, 0.5, 1.0])
    torch.testing.assert_close(feats[0], torch.cat([s, s0.expand(5, 3), s - s0], -1))
    assert torch.equal(feats[1], torch.zeros(5, 9))
    x_in, t_vid, v_in, t_val, ctx = inputs()
    with torch.no_grad():
        plain = m.joint(x_in, t_vid, v_in, t_val, ctx)[2]
        assert torch.equal(m.joint(x_in, t_vid, v_in, t_val, ctx, m.value.state_input(state, start))[2], plain)
        m.value.state_embedding.weight.normal_(0, 0.5)
        read = m.joint(x_in, t_vid, v_in, t_val, ctx, m.value.state_input(state, start))[2]
        assert (read - plain).abs().amin(-1).min() > 1e-4  # every token of every clip reads it
        left_out = m.joint(x_in, t_vid, v_in, t_val, ctx, feats)[2]
        torch.testing.assert_close(left_out[1], plain[1], rtol=0, atol=0)
        assert not torch.allclose(left_out[0], plain[0])
    # prefill inference: the regression head's one pass, with and without the state, equals the joint forward's
    m.value.cfg.head = "regression"
    for st in (None, m.value.state_input(state, start)):
        pred = m.predict_values(x_in[:, :, :1], ctx, v_in[:, 0],
                                **({} if st is None else {"state": state, "start_state": start}))
        with torch.no_grad():
            ref = m.value.chunk_out(*m.joint(x_in, torch.zeros(B, 2), torch.cat([v_in[:, :1], torch.zeros(B, 4)], 1),
                                             torch.zeros(B, 5), ctx, st)[2:])
        torch.testing.assert_close(pred[:, 0], ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="state of width 4.*reads 3"):
        m.value.state_input(torch.zeros(B, 5, 4), torch.zeros(B, 4))
    # one row's state for a batch of two was broadcast to both; a state without its start failed deep inside
    for st, s0 in ((state[:1], start[:1]), (state, None), (state[:, :4], start), (state, start[:1])):
        with pytest.raises(ValueError, match=r"batch 2: state must be \[B, 1 \+ h = 5, d\] and start_state \[B, d\]"):
            m.predict_values(x_in[:, :, :1], ctx, v_in[:, 0], state=st, start_state=s0)
    save_wvm(m, str(tmp_path / "wvm.safetensors"))
    bf = load_wvm(str(tmp_path / "wvm.safetensors"), dtype=torch.bfloat16)
    assert bf.value.cfg.state_dim == 3 and torch.equal(bf.value.state_std, m.value.state_std)
    assert bf.value.state_embedding.weight.dtype == bf.value.state_mean.dtype == torch.float32


def test_a_wan_checkpoint_that_does_not_fit_the_size_is_refused_before_its_weights_are_read(tmp_path, monkeypatch):
    # with the paper's 5B checkpoint and a forgotten --size=full, the message must not wait for 20 GB of weights
    from checkpoint import CheckpointError
    from model import WAN_CONFIGS, WanDiT, save_wan_dit
    save_wan_dit(WanDiT(WAN_CONFIGS["tiny"]), tmp_path / "wan")
    monkeypatch.setattr(wvm_module, "load_wan_dit", lambda *a, **k: pytest.fail("the weights were read"))
    with pytest.raises(CheckpointError, match=r"2 layers, 2 heads x 32.*--size=small has 4 layers.*pass --size=tiny"):
        wvm_module.wvm_from_wan(str(tmp_path / "wan"), wvm_configs("small")[1], size="small")


def test_flow_noise_shifts_the_video_time_by_hand():
    """Each sample's times come from its own seed: u ~ U(0, 1) shifted as Wan's s' = 5u / (1 + 4u) for the video,
    then the video noise, then the value's u unshifted (value_shift 1), then the value noise."""
    m = tiny()
    got = m.flow_noise(torch.tensor([3, 11]), (C, 2, H, W))
    for b, seed in enumerate((3, 11)):
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(1, generator=g).item()
        noise = torch.randn(C, 1, H, W, generator=g)
        v = torch.rand(1, generator=g).item()
        assert got["sigma_video"][b].item() == pytest.approx(5 * u / (1 + 4 * u), rel=1e-6)
        assert got["sigma_value"][b].item() == pytest.approx(v, rel=1e-6)
        assert torch.equal(got["noise_video"][b], noise)
        assert torch.equal(got["noise_value"][b], torch.randn(4, generator=g))

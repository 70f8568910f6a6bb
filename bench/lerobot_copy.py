"""Copy an annotated LeRobot dataset (e.g. a held-out split of sim.py) through the lerobot library's own writer, so
that eval.py can be checked on data that lerobot wrote rather than on this repository's writer (sim.write_lerobot).

    pip install lerobot        # in a venv of its own: lerobot brings its own torch
    python bench/lerobot_copy.py data/metaworld/heldout_seen /tmp/heldout_seen_lerobot \
        --instructions data/metaworld/metaworld_wording.json
    python eval.py --bench all --data /tmp/heldout_seen_lerobot --ckpt runs/demo-prior-s0      # in WVM's venv

Every frame is decoded (data.decode_uint8) and written again with LeRobotDataset.create / add_frame /
save_episode / finalize: lerobot's defaults (AV1 by SVT-AV1, a keyframe every 2 frames), its feature names
(`observation.image`, as its Meta-World recordings), the robot's state and the actions as they were, each episode's
task in the wording --instructions maps it to (a JSON file {instruction: wording}), and annotations.jsonl renumbered
to the new episode indices. The frames pass a second lossy encoding, so the scores move by its noise.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import decode_uint8, read_lerobot  # noqa: E402
from eval import read_annotations  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--camera", default=None, help="video key of src (default: its first)")
    p.add_argument("--instructions", default=None, help="JSON {instruction: wording} for the tasks")
    args = p.parse_args()
    src, out = Path(args.src), Path(args.out)
    if out.exists():  # never delete what is there: it may be the source, or anything else
        raise SystemExit(f"{out}: already exists; give a new directory")
    if not (src / "annotations.jsonl").is_file():
        raise SystemExit(f"{src / 'annotations.jsonl'}: not found; the copy keeps each episode's annotation")
    try:  # here, so that --help and the checks above work without lerobot
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError:
        raise SystemExit("bench/lerobot_copy.py needs the lerobot library: pip install lerobot (in a venv of its own)")
    wording = json.loads(Path(args.instructions).read_text()) if args.instructions else {}
    episodes = read_lerobot(src, camera=args.camera, state="observation.state")
    actions = {}
    for f in sorted((src / "data").rglob("*.parquet")):
        t = pq.read_table(f, columns=["episode_index", "frame_index", "action"]).to_pydict()
        actions |= {(e, i): a for e, i, a in zip(t["episode_index"], t["frame_index"], t["action"])}
    annotations = {e: a for e, (_, a) in read_annotations(src / "annotations.jsonl").items()}
    missing = [ep.episode_index for ep in episodes if ep.episode_index not in annotations]
    if missing:
        raise SystemExit(f"{src / 'annotations.jsonl'}: no annotation for episode(s) {missing[:10]}")
    side = int(decode_uint8(episodes[0], [0]).shape[-2])
    fps = int(round(episodes[0].fps))
    widths = {"observation.state": episodes[0].extra["state"].shape[1], "action": len(next(iter(actions.values())))}
    features = {"observation.image": {"dtype": "video", "shape": (side, side, 3), "names": ["height", "width", "channel"]},
                **{k: {"dtype": "float32", "shape": (d,), "names": None} for k, d in widths.items()}}
    ds = LeRobotDataset.create("wvm/lerobot_copy", fps=fps, features=features, root=out, use_videos=True)
    lines = []
    for new, ep in enumerate(episodes):
        frames = decode_uint8(ep, np.arange(ep.T))
        task = wording.get(ep.instruction, ep.instruction)
        for i in range(ep.T):
            ds.add_frame({"observation.image": frames[i], "observation.state": ep.extra["state"][i],
                          "action": np.asarray(actions[ep.episode_index, i], np.float32), "task": task})
        ds.save_episode()
        lines.append(json.dumps(annotations[ep.episode_index] | {"episode_index": new, "instruction": task}))
    ds.finalize()
    (out / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(episodes)} episodes written by lerobot")


if __name__ == "__main__":
    main()

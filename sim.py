"""Meta-World generator for an open Suboptimal-Value-Bench (SPEC.md §7): expert, hesitation and
retry trajectories of a simulated Sawyer arm with exact annotations, written as LeRobot v3.0 datasets.

    python sim.py --demo --out data/metaworld          # 4 + 2 tasks, 168 episodes, ~3 min on 2 CPU cores
    python sim.py --out data/metaworld --size 128 --train-tasks pick-place-v3 drawer-open-v3 \\
        --unseen-tasks assembly-v3 --seeds-train 50 --seeds-heldout 20 --seed 0

Output: <out>/train (experts of the training tasks), <out>/heldout_seen (new seeds of the training
tasks), <out>/heldout_unseen (tasks never seen in training), each a LeRobot v3.0 dataset with an
`annotations.jsonl` at its root (what `eval.py --bench suboptimal|expert --data <split>` reads), one
line per episode:
    {"episode", "kind": "expert"|"hesitation"|"retry", "m", "n", "T", "embodiment", "task", "instruction", "seed"}
(m, n for hesitation and retry only); every kind of a task has the task's one instruction. A held-out
seed gives one episode of each kind. <out>/generation.json records the arguments and, per split,
how many episodes were kept, redrawn and discarded.

Simulation. Meta-World v3 (MuJoCo) and its scripted expert policies; goal-observable envs seeded per
episode (the seed fixes object and goal positions). One video frame per 12.5 ms control step, the
video written at --fps 10: 8x slow motion, so the hand's top speed (1 cm per step) reads as 10 cm/s,
a real arm's pace, and an expert lasts 5-12 s. Episodes are simulated headless, recording the full
physics state per frame, and rendered only once kept (MuJoCo's offscreen renderer without
multisampling, shadows and reflections: ~10x faster than the defaults in Mesa's llvmpipe). The
corner cameras look at the table upside down; frames are rotated by 180 degrees (a flip would
mirror the scene). observation.state is Meta-World's 39-d observation (hand xyz, gripper opening,
object poses, the previous step's, goal xyz); action is the mocap's move / action_scale (the clipped
xyz command, except at the stops below) and the gripper command.

Frame t is the state after t actions. The expert E runs until its first success s plus --tail
frames: T_E = s + 1 + tail frames, progress t / (T_E - 1). Its arm is a mocap-welded, heavily damped
7-joint arm whose hand speed follows the mocap's lead over it; two interventions make the variants
below exact: a *stop* (arm joint velocities and those of whatever the gripper touches zeroed, mocap
put where it holds the hand: a stop a real arm makes within one 0.1 s frame at these speeds) and a
*resume* (a stop whose mocap is put E's lead ahead of the hand, so that E's pace returns at once).

Hesitation, [m, n], x = n - m: frames 0..m are E's frames 0..m. At frame m the robot stops and holds
still for x steps (arm and finger joints braked; or, in half of the episodes, fingers braked and the
arm free, its hand jittering by up to 3 mm per axis around where it stopped, task-irrelevant motion
under 1 cm in all with the free arm's sag), then resumes E's pace
of frame m and the expert policy takes over. So m is the last frame of progress and the first still
frame, n the last still frame, frame n + k shows E's frame m + k and T = T_E + x: progress is flat
at m / (T_E - 1) = m / (T - 1 - x) over [m, n], SPEC §7's v_m = v_n.

Retry, [m, n], x = n - m, m after the object has come 2 cm closer to the goal: frames 0..m are E's
frames 0..m. At frame m the robot stops, then undoes its last x steps: its hand runs back along E's
recorded path (the mocap mirrors E's lead: target = 2 rest + h_j + h_{j-1} - M_j), the gripper opens
whenever E's fingers were more open at the frame being retraced (so an object E grasped is carried
back and let go where E took it; a pulled drawer is pushed back), and at n it turns round at E's
pace of frame m - x and the expert policy re-does the work. So frame m + k shows ~E's frame m - k,
frame n ~E's frame m - x, frame n + k ~E's frame m - x + k and T = T_E + 2x: progress falls linearly
from m / (T_E - 1) to (m - x) / (T_E - 1) over [m, n], SPEC §7's curve with T - 2x = T_E. (§7 and
eval.py write T - 2x where the t / (T - 1) labels give T - 1 - 2x = T_E - 1: a 1/T_E difference.)

Checks. A draw of (m, x) is redrawn (up to ATTEMPTS times, then the episode is discarded) when the
task succeeds inside [m, n]; for a hesitation when the object-to-goal distance changes by more than
5 mm over [m, n] or a held object settles more than 1.5 cm; for a retry when, at n, object or hand
are more than 2 cm from E's frame m - x or the object-to-goal distance has not grown by 1 cm; and
for both when the resumed expert fails or its length differs from T_E + x (T_E + 2x) by more than
DT_TOL = 3 frames, which bounds the error of the ground-truth curve. Experts that fail are
discarded: nothing is labelled that did not succeed. Everything derives from --seed (env seeds and
draws; MuJoCo is deterministic on one machine), so a rerun renders identical frames (their encoded
video may still differ in a few pixels: the encoders are not bit-exact from run to run).

Rendering needs no display: MUJOCO_GL=egl (the default here) with Mesa's EGL (Debian/Ubuntu packages
libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0): ~150 frames/s at 128x128 on 2 CPU cores.
"""
import argparse
import json
import os
import shutil
import sys
import time
import warnings
import zlib
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: headless software rendering

import av
import numpy as np
from tqdm import tqdm

EMBODIMENT = "sawyer"

# one natural instruction per task, shared by all kinds of trajectory of that task
INSTRUCTIONS = {
    "pick-place-v3": "pick up the puck and place it at the goal",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "door-open-v3": "open the door",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "button-press-topdown-v3": "press the button down from above",
    "button-press-v3": "press the button",
    "reach-v3": "move the gripper to the goal",
    "push-v3": "push the puck to the goal",
    "assembly-v3": "pick up the ring and put it onto the peg",
    "disassemble-v3": "pick the ring up off the peg",
    "bin-picking-v3": "move the block from one bin into the other",
    "shelf-place-v3": "pick up the block and place it on the shelf",
    "pick-out-of-hole-v3": "pick the peg up out of the hole",
    "basketball-v3": "put the ball into the basket",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "hammer-v3": "hammer the nail into the wall",
    "sweep-into-v3": "sweep the block into the hole",
    "faucet-open-v3": "turn the faucet handle to open it",
}

# tasks whose experts, hesitations and retries all succeed reliably (see the report in generation.json)
DEMO = dict(train_tasks=["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "hammer-v3"],
            unseen_tasks=["assembly-v3", "coffee-push-v3"], seeds_train=15, seeds_heldout=6)
DEFAULT = dict(train_tasks=DEMO["train_tasks"] + ["reach-v3", "button-press-v3", "basketball-v3"],
               unseen_tasks=DEMO["unseen_tasks"], seeds_train=50, seeds_heldout=20)

KINDS = ("expert", "hesitation", "retry")
HOLD_PROGRESS_TOL = 0.005  # m: during a pause the object-to-goal distance may change this much
HOLD_OBJECT_TOL = 0.015  # m: and a held object may settle (sway, slip) this much in the gripper
RETRY_STATE_TOL = 0.02  # m: state at n vs the expert's frame m - x (object and hand)
RETRY_MIN_REGRESS = 0.01  # m: object-to-goal distance must grow at least this much over [m, n]
PROGRESS_START = 0.02  # m: the object has started moving toward the goal once its distance fell this much
JITTER = 0.003  # m: amplitude of the hesitation jitter
DT_TOL = 3  # frames: the resumed expert may take this much longer or shorter than the expert did
ATTEMPTS = 8  # draws of (m, x) per hesitation / retry episode before it is discarded


# ----------------------------------------------------------------------------------------------
# environment, policy, camera

def make_env(task, seed):
    """A seeded goal-observable Meta-World v3 env (the seed fixes object and goal positions)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE as envs

    key = f"{task}-goal-observable"
    if key not in envs:
        raise ValueError(f"sim.py: unknown Meta-World task {task!r} (e.g. pick-place-v3)")
    env = envs[key](seed=seed)
    env.max_path_length = 10 ** 9  # our own step budgets end episodes
    return env


def make_policy(task):
    """Meta-World's scripted expert for `task` (pick-place-v3 -> SawyerPickPlaceV3Policy)."""
    from metaworld import policies

    name = "Sawyer" + "".join(w.capitalize() for w in task.removesuffix("-v3").split("-")) + "V3Policy"
    name = name.replace("PegInsertSide", "PegInsertionSide")
    if not hasattr(policies, name):
        raise ValueError(f"sim.py: no scripted policy {name} for task {task!r}")
    return getattr(policies, name)()


class Camera:
    """Fast offscreen renderer of one env camera: frames uint8 [size, size, 3], upright."""

    def __init__(self, env, size, name="corner"):
        import mujoco

        self.mujoco, self.env, self.name = mujoco, env, name
        env.model.vis.quality.offsamples = 0  # no multisampling (read when the GL context is made)
        env.model.vis.global_.offwidth = max(env.model.vis.global_.offwidth, size)
        env.model.vis.global_.offheight = max(env.model.vis.global_.offheight, size)
        try:
            self.r = mujoco.Renderer(env.model, size, size)
        except Exception as e:
            raise RuntimeError(
                f"sim.py: no offscreen rendering (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {e}. Set MUJOCO_GL=egl "
                "before mujoco is first imported, with Mesa's EGL installed (Debian/Ubuntu: libegl1 libegl-mesa0 "
                "libgl1-mesa-dri libopengl0)") from e
        self.upside_down = name.startswith("corner")

    def __call__(self):
        self.r.update_scene(self.env.data, camera=self.name)
        flags = self.r.scene.flags
        flags[self.mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # shadows and reflections cost ~10x in llvmpipe
        flags[self.mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        img = self.r.render()
        # corner cameras look at the table upside down: rotate by 180 degrees (a flip would mirror it)
        return np.ascontiguousarray(img[::-1, ::-1] if self.upside_down else img)

    def close(self):
        self.r.close()


def progress_distance(task, obs):
    """Distance from what the task moves to the goal: the hand for reach, else the main object."""
    return float(np.linalg.norm((obs[0:3] if task.startswith("reach") else obs[4:7]) - obs[36:39]))


# ----------------------------------------------------------------------------------------------
# rollouts

class Rollout:
    """Steps one env headless and records, per frame, the full physics state (to render later, only
    if the episode is kept), the observation, the action, the mocap target and the hand position.

    Frame t is the state after t actions. `actions[t]` is the action at frame t: the mocap's actual
    move (M_{t+1} - M_t) / action_scale (the clipped command, except where a stop moved the mocap)
    and the gripper command; the last frame's is a hold action, never executed."""

    def __init__(self, env):
        import mujoco

        self.mujoco, self.env = mujoco, env
        model, data = env.model, env.data
        mujoco.mj_resetData(model, data)  # clears warm starts, so every reset is bit-identical
        env.reset()
        mujoco.mj_forward(model, data)  # some envs (door-open) move bodies in reset without a forward pass
        env._prev_obs = env._get_curr_obs_combined_no_goal()
        self.arm = np.array([model.jnt_dofadr[model.joint(f"right_j{i}").id] for i in range(7)])
        self.fingers = np.array([model.jnt_dofadr[model.joint(j).id] for j in ("r_close", "l_close")])
        self.damping = model.dof_damping.copy()
        self.rest = data.mocap_pos[0] - data.body("hand").xpos  # mocap - hand at rest (the weld's sag)
        self.obs, self.states, self.success = [], [], []
        self.actions, self.commands, self.mocap, self.hand = [], [], [], []
        self._record(env._get_obs(), False)

    def _record(self, obs, success):
        data = self.env.data
        state = np.empty(self.mujoco.mj_stateSize(self.env.model, self.mujoco.mjtState.mjSTATE_FULLPHYSICS))
        self.mujoco.mj_getState(self.env.model, data, state, self.mujoco.mjtState.mjSTATE_FULLPHYSICS)
        self.states.append(state)
        self.obs.append(np.array(obs, dtype=np.float64))
        self.success.append(bool(success))
        self.mocap.append(data.mocap_pos[0].copy())
        self.hand.append(data.body("hand").xpos.copy())

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        obs, _, _, _, info = self.env.step(action)
        self.commands.append(action)
        self.actions.append(np.append((self.env.data.mocap_pos[0] - self.mocap[-1]) / self.env.action_scale, action[3]))
        self._record(obs, info["success"])

    def move_to(self, target, grip):
        """One step toward mocap position `target` (at most one action: 1 cm per axis) with gripper `grip`."""
        self.step(np.append((np.asarray(target) - self.env.data.mocap_pos[0]) / self.env.action_scale, grip))

    def stop(self, lead=None):
        """Halt the arm where it is: joint velocities zeroed (the hand moves at most 1 cm per 0.1 s of
        video, a stop a real arm makes within a frame) and the mocap put where it holds the hand, or
        `lead` ahead of it: the expert's mocap lead at the frame being resumed, so that the arm, whose
        speed follows that lead (its joints are heavily damped), picks up the expert's pace at once."""
        data = self.env.data
        data.qvel[self.arm] = 0.0
        data.qvel[self._held_dofs()] = 0.0  # what the gripper holds or touches stops with it, or it slips
        data.mocap_pos[0] = data.body("hand").xpos + (self.rest if lead is None else lead)

    def _held_dofs(self):
        """Velocity indices of the non-robot joints of the bodies the gripper touches (their whole tree)."""
        model, data = self.env.model, self.env.data
        gripper = {model.body(b).id for b in ("hand", "rightclaw", "leftclaw", "rightpad", "leftpad")}
        robot = model.body_rootid[model.body("hand").id]
        roots = set()
        for g1, g2 in zip(data.contact.geom1[:data.ncon], data.contact.geom2[:data.ncon]):
            b1, b2 = model.geom_bodyid[g1], model.geom_bodyid[g2]
            for a, b in ((b1, b2), (b2, b1)):
                if a in gripper and model.body_rootid[b] != robot:
                    roots.add(model.body_rootid[b])
        dofs = [model.jnt_dofadr[j] + k for j in range(model.njnt) if model.body_rootid[model.jnt_bodyid[j]] in roots
                for k in range({0: 6, 1: 3, 2: 1, 3: 1}[int(model.jnt_type[j])])]
        return np.array(dofs, dtype=np.int64)

    def brake(self, arm=False, fingers=False):
        """Lock the arm and/or finger joints (Euler integrates damping implicitly, so a huge damping is a
        stable brake): a held arm otherwise sags under gravity and drifts in the null space of its 7
        joints, and closing fingers would go on closing. All off with no arguments."""
        damping = self.env.model.dof_damping
        damping[:] = self.damping
        for dofs, on in ((self.arm, arm), (self.fingers, fingers)):
            if on:
                damping[dofs] = 1e7

    @property
    def t(self):
        return len(self.obs) - 1

    def render(self, camera, reuse=()):
        """Frames uint8 [T, H, W, 3]; the first len(reuse) frames are taken from `reuse` (a shared prefix)."""
        model, data = self.env.model, self.env.data
        frames = list(reuse[:len(self.states)])
        for state in self.states[len(frames):]:
            self.mujoco.mj_setState(model, data, state, self.mujoco.mjtState.mjSTATE_FULLPHYSICS)
            self.mujoco.mj_forward(model, data)
            frames.append(camera())
        return np.stack(frames)

    def episode(self, frames, text, **meta):
        grip = self.actions[-1][3] if self.actions else -1.0
        actions = np.array(self.actions + [np.array([0.0, 0.0, 0.0, grip])], dtype=np.float32)
        return {"frames": frames, "observation.state": np.array(self.obs, dtype=np.float32), "action": actions,
                "task": text, "meta": meta}


def act(ro, policy):
    ro.step(policy.get_action(ro.obs[-1].copy()))  # some policies edit the observation in place


def finish(ro, policy, tail, budget):
    """Run (or resume) the expert until success plus `tail` frames: the first success frame, or None
    when the task has not succeeded after `budget` frames."""
    s = None
    while ro.t < budget and (s is None or ro.t < s + tail):
        act(ro, policy)
        if s is None and ro.success[-1]:
            s = ro.t
    return s if s is not None and ro.t >= s + tail else None


def replay(env, expert, m):
    """A rollout at the expert's frame m: its first m commands re-executed (MuJoCo is deterministic)."""
    ro = Rollout(env)
    for a in expert.commands[:m]:
        ro.step(a)
    if not np.array_equal(ro.states[-1], expert.states[m]):
        raise RuntimeError("sim.py: replaying the expert's actions did not reproduce its state "
                           "(is MuJoCo deterministic here?)")
    return ro


def hesitation(env, policy, task, expert, s, rng, x_range, tail, count):
    """The expert with a pause [m, n] (module docstring): (rollout, m, n, jitter), or None after ATTEMPTS draws."""
    for _ in range(ATTEMPTS):
        m = int(rng.integers(2, s))  # 2 <= m <= s - 1: before the expert succeeds
        x = int(rng.integers(x_range[0], x_range[1] + 1))
        jitter = bool(rng.random() < 0.5)
        period, phase = rng.uniform(6, 15, size=3), rng.uniform(0, 2 * np.pi, size=3)
        ro = replay(env, expert, m)
        grip = expert.commands[m - 1][3]
        ro.stop()
        anchor = env.data.mocap_pos[0].copy()
        ro.brake(arm=not jitter, fingers=True)
        try:
            for k in range(1, x + 1):
                # jitter: a wiggle of period 6-15 frames under a sine envelope that is zero again at k = x
                offset = JITTER * np.sin(np.pi * k / x) * np.sin(2 * np.pi * k / period + phase) if jitter else 0.0
                ro.move_to(anchor + offset, grip)
        finally:
            ro.brake()
        ro.stop(lead=expert.mocap[m] - expert.hand[m])  # resume at the expert's pace of frame m
        obj = np.array([o[4:7] for o in ro.obs[m:]])
        d = np.array([progress_distance(task, o) for o in ro.obs[m:]])
        if (np.abs(d - d[0]).max() > HOLD_PROGRESS_TOL or np.linalg.norm(obj - obj[0], axis=1).max() > HOLD_OBJECT_TOL
                or any(ro.success[m:])):
            count("hesitation_redrawn_moving")
            continue
        if finish(ro, policy, tail, budget=expert.t + x + DT_TOL) is None or abs(ro.t - expert.t - x) > DT_TOL:
            count("hesitation_redrawn_timing")
            continue
        return ro, m, m + x, jitter
    return None


def retry(env, policy, task, expert, s, rng, x_range, tail, count):
    """The expert undoing its last x steps once it has made progress, then re-doing them (module
    docstring): (rollout, m, n), or None after ATTEMPTS draws."""
    d = np.array([progress_distance(task, o) for o in expert.obs])
    started = np.nonzero(d < d[0] - PROGRESS_START)[0]
    lo = max(int(started[0]) + 2, x_range[0] + 1) if len(started) else s  # x >= x_min must fit before m
    if lo > s - 1:
        count("retry_no_progress_to_undo")
        return None
    h, M = expert.hand, expert.mocap
    for _ in range(ATTEMPTS):
        m = int(rng.integers(lo, s))
        x = int(rng.integers(x_range[0], min(x_range[1], m - 1) + 1))
        ro = replay(env, expert, m)
        ro.stop()
        for j in range(m, m - x, -1):  # the step to frame m + (m - j) + 1 retraces the expert's frame j - 1
            # the arm is damping-dominated, its hand velocity follows the mocap's lead: mirror the
            # expert's lead, so the hand runs back along its recorded path at the recorded pace
            target = 2 * ro.rest + h[j] + h[j - 1] - M[j]
            # the fingers lag their commands by several frames, so reversed commands would let go too
            # late: open whenever the expert's fingers were more open at the frame being retraced
            grip = expert.commands[j - 2][3] if j >= 2 else -1.0
            if expert.obs[j - 1][3] > ro.obs[-1][3] + 0.02:
                grip = -1.0
            ro.move_to(target, grip)
        ro.stop(lead=M[m - x] - h[m - x])  # turn round at once, at the expert's pace of frame m - x
        end, ref = ro.obs[-1], expert.obs[m - x]
        if max(np.linalg.norm(end[4:7] - ref[4:7]), np.linalg.norm(end[:3] - ref[:3])) > RETRY_STATE_TOL:
            count("retry_redrawn_not_back")
            continue
        if progress_distance(task, end) < d[m] + RETRY_MIN_REGRESS or any(ro.success[m:]):
            count("retry_redrawn_no_regress")
            continue
        if finish(ro, policy, tail, budget=expert.t + 2 * x + DT_TOL) is None or abs(ro.t - expert.t - 2 * x) > DT_TOL:
            count("retry_redrawn_timing")
            continue
        return ro, m, m + x
    return None


def task_seed(task):
    return zlib.crc32(task.encode())  # not hash(): that changes between processes


def generate(task, seed, kinds=KINDS, size=128, camera="corner", fps=10, tail=5, pause=(1.5, 4.0),
             undo=(1.5, 4.0), base_seed=0, max_steps=400, stats=None):
    """The episodes of one task and env seed: a list of dicts with frames uint8 [T, H, W, 3],
    observation.state [T, 39], action [T, 4], task (the instruction) and meta (the annotation without
    its episode index). Failed and discarded episodes are counted in `stats` (a dict) if given.
    pause, undo: ranges of the hesitation and of the undone stretch, in seconds of video."""
    instruction = INSTRUCTIONS.get(task)
    if instruction is None:
        raise ValueError(f"sim.py: no instruction for task {task!r}; known: {', '.join(INSTRUCTIONS)}")
    stats = {} if stats is None else stats
    count = lambda key: stats.__setitem__(key, stats.get(key, 0) + 1)  # noqa: E731
    frames_range = lambda sec: (max(2, round(sec[0] * fps)), max(2, round(sec[1] * fps)))  # noqa: E731
    env = make_env(task, seed)
    policy = make_policy(task)
    cam = None
    out = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted policies warn whenever they saturate an action
            expert = Rollout(env)
            s = finish(expert, policy, tail, max_steps)
            if s is None:
                count("expert_failed")
                return out
            base = dict(embodiment=EMBODIMENT, task=task, instruction=instruction, seed=seed)
            cam = Camera(env, size, camera)
            expert_frames = expert.render(cam)
            for kind in kinds:
                if kind == "expert":
                    out.append(expert.episode(expert_frames, instruction, kind="expert", T=expert.t + 1, **base))
                elif kind == "hesitation":
                    rng = np.random.default_rng([base_seed, task_seed(task), seed, 1])  # a stream per kind
                    r = hesitation(env, policy, task, expert, s, rng, frames_range(pause), tail, count)
                    if r is None:
                        count("hesitation_discarded")
                        continue
                    ro, m, n, jitter = r
                    out.append(ro.episode(ro.render(cam, expert_frames[:m + 1]), instruction, kind="hesitation",
                                          m=m, n=n, T=ro.t + 1, **base, pause="jitter" if jitter else "hold",
                                          expert_T=expert.t + 1))
                elif kind == "retry":
                    rng = np.random.default_rng([base_seed, task_seed(task), seed, 2])
                    r = retry(env, policy, task, expert, s, rng, frames_range(undo), tail, count)
                    if r is None:
                        count("retry_discarded")
                        continue
                    ro, m, n = r
                    out.append(ro.episode(ro.render(cam, expert_frames[:m + 1]), instruction, kind="retry",
                                          m=m, n=n, T=ro.t + 1, **base, expert_T=expert.t + 1))
                else:
                    raise ValueError(f"sim.py: unknown kind {kind!r}")
                count(f"{kind}_ok")
    finally:
        if cam is not None:
            cam.close()
        env.close()
    return out


# ----------------------------------------------------------------------------------------------
# datasets

ENCODE_TRIES = 3
ANNOTATION_KEYS = ("kind", "m", "n", "T", "embodiment", "task", "instruction", "seed")


def write_split(root, jobs, args, desc):
    """Generate the episodes of `jobs` [(task, seed, kinds)] into a LeRobot v3.0 dataset at `root` with
    its annotations.jsonl; returns the split's counts. A split already written with the same settings
    is kept (so an interrupted run resumes at the split it was writing); a half-written one is redone."""
    from data import write_lerobot

    root = Path(root)
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"jobs": [list(j) for j in jobs]}
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    done = root / "meta" / "sim.json"
    if (root / "annotations.jsonl").exists() and done.exists():
        old = json.loads(done.read_text())
        if old["settings"] != settings:
            raise SystemExit(f"{root}: written with other settings; delete it or choose another --out")
        print(f"{root}: done already, kept")
        return old["counts"]
    for stale in root.parent.glob(root.name + ".partial-*"):  # left by runs that died
        if not _alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root.with_name(f"{root.name}.partial-{os.getpid()}")  # per process: two runs on one --out don't clash

    def episodes():
        for task, seed, kinds in bar:
            for ep in generate(task, seed, kinds, size=args.size, camera=args.camera, fps=args.fps, tail=args.tail,
                               pause=args.pause, undo=args.undo, base_seed=args.seed, stats=counts):
                meta = ep.pop("meta")
                annotations.append({"episode": len(annotations), **{k: meta[k] for k in ANNOTATION_KEYS if k in meta}})
                yield ep
            bar.set_postfix({k: v for k, v in counts.items() if k.endswith("_ok")})

    for attempt in range(1, ENCODE_TRIES + 1):
        shutil.rmtree(tmp, ignore_errors=True)
        counts, annotations = {}, []
        bar = tqdm(jobs, desc=desc, unit="seed")
        try:
            written = write_lerobot(tmp, episodes(), args.fps, version="v3.0", codec=args.codec,
                                    video_key="observation.images.main", robot_type=EMBODIMENT)
            break
        except av.FFmpegError as e:
            # SVT-AV1 now and then hands the mp4 muxer a packet it refuses (EINVAL), not reproducibly;
            # generation is deterministic, so the split is simply made again (a deadlock it cannot catch)
            bar.close()
            if attempt == ENCODE_TRIES:
                raise SystemExit(f"{root}: video encoding failed {ENCODE_TRIES} times ({e}); try --codec libx264")
            print(f"{root}: video encoding failed ({e}); generating the split again ({attempt}/{ENCODE_TRIES - 1})")
        except ValueError as e:
            if annotations:
                raise
            raise SystemExit(f"{root}: no episode succeeded ({counts}); {e}") from e
    assert written == [a["episode"] for a in annotations]
    with open(tmp / "annotations.jsonl", "w") as f:
        f.writelines(json.dumps(a) + "\n" for a in annotations)
    (tmp / "meta" / "sim.json").write_text(json.dumps({"settings": settings, "counts": counts}, indent=1))
    try:
        tmp.rename(root)  # atomic; fails when root exists
    except OSError:
        if done.exists() and json.loads(done.read_text())["settings"] == settings:
            shutil.rmtree(tmp)  # another run wrote the same split first
        else:
            shutil.rmtree(root)
            tmp.rename(root)
    return counts


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/metaworld")
    p.add_argument("--demo", action="store_true",
                   help=f"small set: {len(DEMO['train_tasks'])} training + {len(DEMO['unseen_tasks'])} unseen tasks, "
                        f"{DEMO['seeds_train']} / {DEMO['seeds_heldout']} seeds (flags given explicitly still win)")
    p.add_argument("--size", type=int, default=128, help="square frame size")
    p.add_argument("--camera", default="corner", help="Meta-World camera: corner (default), corner2-4, topview, ...")
    p.add_argument("--fps", type=float, default=10.0, help="video fps (one frame per 12.5 ms control step)")
    p.add_argument("--train-tasks", nargs="+", help=f"default: {' '.join(DEFAULT['train_tasks'])}")
    p.add_argument("--unseen-tasks", nargs="+", help=f"default: {' '.join(DEFAULT['unseen_tasks'])}")
    p.add_argument("--seeds-train", type=int,
                   help=f"expert episodes per training task (default {DEFAULT['seeds_train']})")
    p.add_argument("--seeds-heldout", type=int, help="new seeds per task in the held-out splits, one episode per kind "
                                                     f"each (default {DEFAULT['seeds_heldout']})")
    p.add_argument("--seed", type=int, default=0, help="derives every env seed and random draw")
    p.add_argument("--tail", type=int, default=5, help="frames recorded after the first success")
    p.add_argument("--pause", type=float, nargs=2, default=(1.5, 4.0), metavar=("MIN", "MAX"),
                   help="hesitation length, seconds of video")
    p.add_argument("--undo", type=float, nargs=2, default=(1.5, 4.0), metavar=("MIN", "MAX"),
                   help="retry: length of the undone stretch, seconds of video")
    p.add_argument("--codec", default="libx264",
                   help="libx264 (H.264), or libsvtav1 (AV1, LeRobot's own default; the SVT-AV1 in PyAV's wheels "
                        "now and then fails or deadlocks mid-file on a 2-core machine)")
    args = p.parse_args(argv)
    for k, v in (DEMO if args.demo else DEFAULT).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for t in args.train_tasks + args.unseen_tasks:
        if t not in INSTRUCTIONS:
            p.error(f"unknown task {t!r}; known: {', '.join(INSTRUCTIONS)}")
    if set(args.train_tasks) & set(args.unseen_tasks):
        p.error("a task cannot be both a training and an unseen task")
    if args.size % 2:
        p.error("--size must be even (yuv420p video)")
    if not all(1 <= lo * args.fps <= hi * args.fps for lo, hi in (args.pause, args.undo)):
        p.error("--pause and --undo need 1 frame <= MIN <= MAX")
    return args


def main(argv):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if max(args.seeds_train, args.seeds_heldout) > 50_000:
        raise SystemExit("at most 50000 seeds per split")
    # env seeds: training seeds and held-out seeds never overlap for a given --seed
    train_seeds = [args.seed * 100_000 + i for i in range(args.seeds_train)]
    heldout_seeds = [args.seed * 100_000 + 50_000 + i for i in range(args.seeds_heldout)]
    splits = {
        "train": [(t, s, ("expert",)) for t in args.train_tasks for s in train_seeds],
        "heldout_seen": [(t, s, KINDS) for t in args.train_tasks for s in heldout_seeds],
        "heldout_unseen": [(t, s, KINDS) for t in args.unseen_tasks for s in heldout_seeds],
    }
    t0 = time.time()
    report = {"args": vars(args), "splits": {}}
    for name, jobs in splits.items():
        if jobs:
            report["splits"][name] = write_split(out / name, jobs, args, name)
    (out / "generation.json").write_text(json.dumps(report, indent=1))
    for name, counts in report["splits"].items():
        print(f"{out / name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])

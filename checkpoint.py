"""Checkpoint files, whatever model they hold: the Wan2.2 DiT and VAE (model.py, wan_vae.py) and WVM (wvm.py).

Reading: a path (a file, or a folder with `<stem>.safetensors`, sharded `<stem>-0000k-of-0000n.safetensors` + their
`.safetensors.index.json`, any single .safetensors or .pth, and an optional config.json) resolves to tensor files
(`checkpoint_files`); `load_into` assigns their tensors to a model built on the meta device, so the weights are never
held twice. A .pth is read without running any of its pickled code (`load_pth`). Renaming (diffusers or ComfyUI names
to the official ones) is the caller's: each model knows its own names.

Writing: `save_safetensors` writes to a temporary name and renames, so a crash never leaves half a checkpoint.
"""
import contextlib
import hashlib
import json
import numbers
import os
import pickle
import re
import time
import uuid

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model; the message names the file and the problem."""


def out_file_problem(path, flag):
    """Why `flag PATH` cannot be written, or None: checked before any work (eval.py's --json, bench/, wan_vae.py's
    --out), so that a wrong path never costs the scoring, the fits or the training."""
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return f"{flag} {path}: must name a file in an existing folder"
    return None


def inside(a, b):
    """Whether path a is folder b or lies in it (links resolved)."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep)


def device_here(name):
    """Whether `name` is a torch device this machine has (a CUDA GPU must be there; other kinds torch checks on use):
    a typo, or cuda on a machine without one, failed deep inside torch after the model was read (eval.py,
    encode_text.py)."""
    try:
        d = torch.device(name)
    except RuntimeError:
        return False
    return d.type != "cuda" or (d.index or 0) < torch.cuda.device_count()


def positive_whole(v):
    """v is a positive whole number: an int (numpy's too), not a bool, a float or a string."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


def check_sizes(cfg, names):
    """ValueError unless each of the config's fields `names` is a positive whole number (or a list of them): a
    config.json edited by hand, or another tool's, would otherwise fail deep inside torch."""
    bad = []
    for k in names:
        v = getattr(cfg, k)
        if not (v and all(map(positive_whole, v)) if isinstance(v, tuple) else positive_whole(v)):
            bad.append(f"{k} {v!r}")
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be positive whole numbers")


def sampled_digest(tensors):
    """A digest of 256 evenly spaced values of each tensor, rounded to bf16 (so an fp32 and a bf16 copy agree): every
    weight has its say, at a cost that does not grow with the model (a 5B DiT's or a 2.8 GB VAE's in well under a
    second). What a short id of a few tensors cannot tell apart, e.g. fine-tunes of one model, this does."""
    h = hashlib.sha1()
    with torch.no_grad():
        for w in tensors:
            w = w.reshape(-1)
            h.update(w[:: max(1, w.numel() // 256)][:256].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def read_json(path):
    """A JSON object from a file, or None where there is none; anything else is a CheckpointError naming it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            out = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{path}: not valid JSON{where}") from None
    except OSError as e:  # a folder of that name, or one the user may not read
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"{path}: a JSON {type(out).__name__}, not an object")
    return out


def checkpoint_files(path, stem):
    """Resolve a checkpoint path (file or folder) to (tensor files, config.json dict or None)."""
    if os.path.isfile(path):
        cfg_file = os.path.join(os.path.dirname(path), "config.json")
        if path.endswith(".json"):  # an index
            weight_map = read_json(path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{path}: not a shard index (no weight_map); pass the checkpoint's folder, its "
                                      f".safetensors.index.json or one of its weight files")
            # each a file beside the index, as every shard index names them: a downloaded one reads no other file
            bad = [s for s in weight_map.values() if not isinstance(s, str) or os.path.basename(s) in ("", ".", "..")
                   or os.path.basename(s) != s]
            if bad:
                raise CheckpointError(f"{path}: weight_map names {bad[0]!r}, not a file beside the index")
            shards = sorted(set(weight_map.values()))
            return [os.path.join(os.path.dirname(path), s) for s in shards], read_json(cfg_file)
        shard = re.search(r"-(\d+)-of-(\d+)\.safetensors$", path)
        if shard and int(shard.group(2)) > 1:
            raise CheckpointError(f"{path}: one shard of {int(shard.group(2))}; pass the folder or its "
                                  f".safetensors.index.json")
        return [path], read_json(cfg_file)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint file or folder")
    names = sorted(os.listdir(path))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if index:
        return checkpoint_files(os.path.join(path, index[0]), stem)
    for pattern in (rf"{stem}\.safetensors$", r".*\.safetensors$", r".*\.(pth|pt|bin|ckpt)$"):
        found = [n for n in names if re.match(pattern, n)]
        if found:
            return [os.path.join(path, n) for n in found], read_json(os.path.join(path, "config.json"))
    raise CheckpointError(f"{path}: no .safetensors, .safetensors.index.json or .pth checkpoint in this folder")


def load_pth(path):
    """A .pth/.pt state dict, read without running any of its pickled code (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        raise CheckpointError(f"{path}: holds Python objects besides tensors ({what.group(1) if what else 'unknown'}), "
                              "which are never loaded because unpickling them can run code; save the tensors "
                              "alone (a state dict, or .safetensors)") from None


class TensorFile:
    """Lazy access to the tensors of one .safetensors or .pth file: names and shapes without reading any data."""

    def __init__(self, path):
        self.path = path
        try:
            if path.endswith(".safetensors"):
                self._st = safe_open(path, "pt", device="cpu")
                self.shapes = {k: tuple(self._st.get_slice(k).get_shape()) for k in self._st.keys()}
            else:
                sd = load_pth(path)
                for wrapper in ("state_dict", "model", "module"):
                    if isinstance(sd, dict) and set(sd) == {wrapper}:
                        sd = sd[wrapper]
                self._sd = sd
                self.shapes = {k: tuple(v.shape) for k, v in sd.items() if torch.is_tensor(v)}
        except CheckpointError:
            raise
        except Exception as e:  # unreadable, truncated, not a checkpoint
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {first})") from None

    def get(self, name):
        return self._st.get_tensor(name) if hasattr(self, "_st") else self._sd[name]


def read_metadata(path):
    """The string metadata of a .safetensors file ({} where it has none)."""
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def _fmt(items, n=8):
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_into(model, path, files, rename=lambda k: k, dtype=None, device=None, keep_fp32=None):
    """Assign checkpoint tensors to a model built on the meta device, one file at a time.

    rename maps a checkpoint name to the model's; dtype casts floating tensors except those whose name keep_fp32
    (a regex) matches. Every missing, unexpected or mis-shaped tensor is reported together in one CheckpointError
    before any data is read. Only one tensor is ever held twice (during a dtype/device cast).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tfiles = [TensorFile(f) for f in files]
    found, unexpected, wrong = {}, [], []
    for tf in tfiles:
        for name, shape in tf.shapes.items():
            key = rename(name)
            if key in found and found[key][0] is not tf:  # a folder of several checkpoints, not of shards of one
                raise CheckpointError(f"{path}: {key} is in both {found[key][0].path} and {tf.path}: the files are "
                                      f"not the shards of one checkpoint; pass one of them")
            if key in found:  # two names of one file for one tensor (official and diffusers, say): one won unsaid
                raise CheckpointError(f"{tf.path}: {found[key][1]} and {name} are both {key}; keep one of them")
            if key not in expected:
                unexpected.append(name)
            elif shape != expected[key]:
                wrong.append(f"{name}: checkpoint {list(shape)} vs model {list(expected[key])}")
            else:
                found[key] = (tf, name)
    missing = [k for k in expected if k not in found]
    if missing or unexpected or wrong:
        msg = [f"{path}: checkpoint does not match {type(model).__name__}"]
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                msg.append(f"  {what} ({len(items)}): {_fmt(items)}")
        raise CheckpointError("\n".join(msg))
    for key, (tf, name) in found.items():
        t = tf.get(name)
        to = torch.float32 if keep_fp32 is not None and keep_fp32.search(key) else dtype
        mod_name, _, attr = key.rpartition(".")
        mod = model.get_submodule(mod_name)
        old = getattr(mod, attr)
        if t.is_floating_point() != old.is_floating_point():  # integers would fail deep inside, naming no file
            raise CheckpointError(f"{path}: {name} holds {t.dtype} values, the model's {key} {old.dtype} ones")
        if to is not None and t.is_floating_point():
            t = t.to(to)
        if device is not None:
            t = t.to(device)
        setattr(mod, attr, nn.Parameter(t, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else t)
    return model


def _written_whole(path, write, replace=True):
    """write(temporary path) beside `path`, then the file put in its place: whole or not at all. The temporary name
    is this write's own (a fixed `<path>.tmp` was a user's file replaced, or another writer's). replace=False: an
    existing `path`, even one made while writing, is a CheckpointError, never replaced."""
    folder, stem = os.path.split(os.path.abspath(path))
    for name in os.listdir(folder):  # those of writes killed part-way (an hour old: no write takes that long)
        old = os.path.join(folder, name)
        if re.fullmatch(re.escape(stem) + r"\.\d+-[0-9a-f]{8}\.tmp", name) and time.time() - os.path.getmtime(old) > 3600:
            with contextlib.suppress(OSError):
                os.remove(old)
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"  # (not mkstemp: its files are the user's alone)
    taken = CheckpointError(f"{path}: made by another process meanwhile; left as it is")
    try:
        write(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if `path` exists, even one made a moment ago
            except FileExistsError:
                if not os.path.samefile(tmp, path):  # (NFS may answer a retried link so)
                    raise taken from None
            except OSError:  # a file system without hard links: the name claimed first, then replaced
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    raise taken from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_safetensors(tensors, path, metadata=None, replace=True):
    """tensors {name: tensor} as one .safetensors file (string metadata optional), written whole or not at all;
    replace=False never replaces an existing file (_written_whole)."""
    _written_whole(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                                                metadata=metadata), replace)


def save_json(obj, path, strict=False, replace=True):
    """A JSON file, written whole or not at all. strict: NaN and infinities refused (ValueError), not written as
    JavaScript's tokens; replace=False: never over an existing file (_written_whole)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=not strict)
    _written_whole(path, write, replace)

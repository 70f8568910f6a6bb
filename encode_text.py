"""Offline umT5-XXL text embeddings for WVM (the text encoder is frozen, so it never runs in training).

    python encode_text.py --model /ckpt/Wan2.2-TI2V-5B --out runs/text_cache \
        --lerobot /data/robocoin --egodex /data/egodex/part1 --manifest extra.jsonl --texts more.txt

Each unique instruction is cleaned as Wan cleans prompts, tokenized to 512 tokens (padding /
truncation, as Wan), encoded, trimmed to its real token count and stored as one [L, 4096] tensor in
safetensors shards under --out, keyed by the sha256 of the cleaned text. Reruns encode only the
instructions that are missing, so an interrupted run resumes, and a later run with more datasets adds
their instructions. Every shard records the encoder that made it (an id and the flags that rebuild it):
a cache is only ever extended by that encoder, and a model remembers the id it was trained with.
Training reads the cache (`TextCache`).

--model accepts: a diffusers pipeline folder (text_encoder/ + tokenizer/), a transformers UMT5 folder
(config.json + weights + tokenizer), or the official Wan2.2 folder (models_t5_umt5-xxl-enc-bf16.pth +
google/umt5-xxl/ tokenizer), whose Wan-format keys are mapped onto transformers' UMT5EncoderModel.
Beyond the paper, a transformers folder of another text encoder (a small sentence encoder such as
all-MiniLM-L6-v2, for CPU runs where umT5-XXL cannot be had) is read by its AutoModel: a T5 or mT5 by its
encoder class, a CLIP or SigLIP by its text tower, an encoder-decoder (BART) by its encoder; its width is the
model's text_dim (train.py --text_dim).
"""
import argparse
import functools
import hashlib
import html
import json
import os
import re
import sys
import zlib
from pathlib import Path

import ftfy
import torch
import torch.nn.functional as F
from safetensors import safe_open

import data
from checkpoint import CheckpointError, device_here, load_pth, read_json, sampled_digest, save_safetensors

TEXT_LEN = 512  # Wan's text_len


def clean_text(text):
    """Wan's prompt cleaning: ftfy, html unescape twice, whitespace collapsed. ftfy is required, not optional: it
    changes some texts (curly quotes), and the cache keys by the cleaned text, so every process must clean alike."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=4096)  # called per training sample; cleaning the text is not free
def text_key(text):
    return hashlib.sha256(clean_text(text).encode("utf-8")).hexdigest()


class TextCacheError(ValueError):
    """A text cache that is missing, unreadable, or lacks instructions; the message names it."""


class MissingText(TextCacheError, KeyError):
    def __str__(self):  # KeyError would print the repr of the message
        return self.args[0]


class TextCache:
    """Read side of the cache: a .safetensors file or a folder of them. get(text) -> float32 [L, D].

    `encoder` is what encode_text.py recorded about the encoder that made the cache ({"id", "flags"}),
    or None for caches written without it: a model remembers the id it was trained with."""

    def __init__(self, path):
        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else [self.path]
        if not files or not files[0].exists():
            raise TextCacheError(f"{self.path}: no text cache (*.safetensors); run encode_text.py first")
        self.where, self.handles, encoders = {}, {}, {}
        for f in files:
            try:
                with safe_open(f, "pt") as h:
                    self.where.update(dict.fromkeys(h.keys(), f))
                    found = (h.metadata() or {}).get("encoder")
                    encoders[f] = json.loads(found) if found else None
            except Exception as e:  # truncated, not safetensors, bad metadata
                raise TextCacheError(f"{f}: unreadable text cache shard ({e}); delete it and rerun "
                                     f"encode_text.py") from None
        if len({encoder_id(e) for e in encoders.values()}) > 1 or len({e["weights"] for e in encoders.values()
                                                                         if e and e.get("weights")}) > 1:
            raise TextCacheError(f"{self.path}: shards made by different encoders: "
                                 + "; ".join(f"{f.name}: {describe(e)}" for f, e in encoders.items()))
        self.encoder = next(iter(encoders.values()))

    def __len__(self):
        return len(self.where)

    def __contains__(self, text):
        return text_key(text) in self.where

    def get(self, text):
        key = text_key(text)
        f = self.where.get(key)
        if f is None:
            raise MissingText(f"{self.path}: no embedding for instruction {clean_text(text)!r} "
                              f"(key {key[:12]}); run encode_text.py on the datasets that use it")
        if f not in self.handles:  # opened lazily, so each DataLoader worker opens its own
            self.handles[f] = safe_open(f, "pt")
        return self.handles[f].get_tensor(key).float()

    def width(self):
        """D of the features (one encoder made them all), read from a header."""
        key, f = next(iter(self.where.items()))
        if f not in self.handles:
            self.handles[f] = safe_open(f, "pt")
        return self.handles[f].get_slice(key).get_shape()[1]

    def check_fits(self, texts, text_len, text_dim, model):
        """Raise TextCacheError unless every text's features [L, D] fit the model's [<= text_len, text_dim] (read
        from the headers only). model: how to name the model in the message."""
        for text in sorted(texts):  # the same one named on every run
            f = self.where[text_key(text)]
            if f not in self.handles:
                self.handles[f] = safe_open(f, "pt")
            L, D = self.handles[f].get_slice(text_key(text)).get_shape()
            if D != text_dim or L > text_len:
                raise TextCacheError(f"{self.path}: the features of {clean_text(text)!r} are [{L}, {D}] "
                                     f"({describe(self.encoder)}); {model} reads [<= {text_len}, {text_dim}]: encode "
                                     f"the instructions with the text encoder it was made for")

    def require(self, texts, datasets):
        """Raise MissingText naming every text not in the cache and the command that adds them."""
        missing = sorted({clean_text(t) for t in texts if t not in self})
        if missing:
            shown = ", ".join(repr(t) for t in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise MissingText(f"{self.path}: no embedding for {len(missing)} instruction(s): {shown}; add them with: "
                              f"{add_command(self, datasets)}")


def pad_text(features):
    """Text features [L_i, D] of a batch -> [B, max L_i, D], zero-padded at the end (as Wan pads to text_len)."""
    L = max(c.shape[0] for c in features)
    return torch.stack([F.pad(c, (0, 0, 0, L - c.shape[0])) for c in features])


def add_command(cache, datasets):
    """The encode_text.py command that adds the instructions of `datasets` to `cache` with its own encoder."""
    flags = cache.encoder["flags"] if cache.encoder else "--model UMT5_FOLDER (or --tiny_random DIM) --text_len N"
    kinds = []
    for d in datasets:
        kind = ("--manifest" if str(d).endswith(".jsonl") else "--paraphrases" if str(d).endswith(".json")
                else "--lerobot" if (Path(d) / "meta").is_dir() else "--egodex")
        kinds.append(f"{kind} {d}")
    return f"python encode_text.py {flags} --out {cache.path} " + " ".join(kinds)


# ----------------------------------------------------------------------------- encoder


def wan_t5_to_hf(sd):
    """Wan2.2's umT5 encoder keys (wan/modules/t5.py) -> transformers UMT5EncoderModel keys."""
    names = {"norm1": "layer.0.layer_norm", "attn.q": "layer.0.SelfAttention.q", "attn.k": "layer.0.SelfAttention.k",
             "attn.v": "layer.0.SelfAttention.v", "attn.o": "layer.0.SelfAttention.o",
             "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
             "norm2": "layer.1.layer_norm", "ffn.gate.0": "layer.1.DenseReluDense.wi_0",  # the GELU branch
             "ffn.fc1": "layer.1.DenseReluDense.wi_1", "ffn.fc2": "layer.1.DenseReluDense.wo"}
    out = {}
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.weight", k):
            if m.group(2) not in names:
                raise KeyError(f"unexpected Wan T5 key {k}")
            out[f"encoder.block.{m.group(1)}.{names[m.group(2)]}.weight"] = v
        else:
            raise KeyError(f"unexpected Wan T5 key {k}")
    return out


def umt5_xxl_config():
    from transformers import UMT5Config
    return UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False)


def load_encoder(path, dtype=torch.bfloat16, device="cpu", config=None):
    """(tokenizer, UMT5EncoderModel, or another encoder's AutoModel) from a local folder; see the module docstring
    for the layouts."""
    from transformers import (AutoModel, AutoTokenizer, CLIPTextModel, MT5EncoderModel, SiglipTextModel,
                              T5EncoderModel, UMT5EncoderModel)
    path = Path(path)
    pths = sorted(path.glob("*t5*.pth"))
    if (path / "text_encoder" / "config.json").exists():  # diffusers pipeline
        model_dir, tok_dir = path / "text_encoder", path / "tokenizer"
    elif pths and (path / "google" / "umt5-xxl").is_dir():  # the official Wan2.2 folder (its config.json is the DiT's)
        model_dir, tok_dir = None, path / "google" / "umt5-xxl"
    elif (path / "config.json").exists():  # transformers folder
        model_dir, tok_dir = path, path
    else:
        raise FileNotFoundError(f"{path}: no text encoder found: expected text_encoder/ + tokenizer/ (diffusers), "
                                f"config.json (transformers) or models_t5_umt5-xxl-enc-bf16.pth + "
                                f"google/umt5-xxl/ (Wan2.2)")
    if not any((tok_dir / f).exists() for f in TOKENIZER_FILES):  # transformers would make an empty one: all [UNK]
        raise CheckpointError(f"{tok_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 (no tokenizer files, or broken ones: transformers raises many kinds)
        raise CheckpointError(f"{tok_dir}: no tokenizer could be read ({type(e).__name__}: {str(e)[:300]})") from None
    tokenizer.padding_side = "right"  # `encode` keeps each text's first rows: left padding kept the pads' states
    if tokenizer.pad_token is None:  # a decoder's (GPT-2's): the pads' rows are masked and dropped, any token does
        tokenizer.pad_token = next((t for t in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.sep_token,
                                                tokenizer.bos_token, tokenizer.cls_token) if t), None)
        if tokenizer.pad_token is None:
            raise CheckpointError(f"{tok_dir}: the tokenizer has no special token to pad with")
    if model_dir is not None:
        kind = (read_json(model_dir / "config.json") or {}).get("model_type")
        # the T5 family's encoder alone (AutoModel would make the encoder-decoder), a CLIP's or SigLIP's text tower
        # (AutoModel's wants images too); another model (beyond the paper): its own class, its last hidden states the
        # features
        cls = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel, "mt5": MT5EncoderModel, "clip": CLIPTextModel,
               "siglip": SiglipTextModel}.get(kind, AutoModel)
        try:
            model, info = cls.from_pretrained(model_dir, dtype=dtype, local_files_only=True, output_loading_info=True)
        except Exception as e:  # noqa: BLE001 (truncated or foreign weights)
            raise CheckpointError(f"{model_dir}: not a readable text encoder ({type(e).__name__}: "
                                  f"{str(e)[:300]})") from None
        # transformers would start them at random and encode on (a pooler's need not be there: it makes no feature)
        missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
        if missing:
            raise CheckpointError(f"{model_dir}: the encoder's weights lack {len(missing)} tensors, e.g. "
                                  f"{', '.join(missing[:5])}")
        # and encoder weights it has no place for are left out: umT5's (a position bias in every layer) read as a T5
        extra = sorted(k for k in info["unexpected_keys"] if k.startswith("encoder.")) if cls is not AutoModel else []
        if extra:
            raise CheckpointError(f"{model_dir}: {len(extra)} encoder tensors a {kind} encoder has no place for, e.g. "
                                  f"{', '.join(extra[:5])}; is config.json's model_type right?")
        # BART and its kin: AutoModel's output is the decoder's states (the T5 family's classes above are encoders)
        if cls is AutoModel and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
    else:
        model = UMT5EncoderModel(config or umt5_xxl_config())
        try:
            sd = wan_t5_to_hf(load_pth(pths[0]))
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except (KeyError, RuntimeError) as e:  # another model's keys, or the right keys at other shapes
            why = e.args[0] if isinstance(e, KeyError) else str(e)[:300]
            raise CheckpointError(f"{pths[0]}: not Wan2.2's umT5-XXL encoder ({why})") from None
        if missing or unexpected:
            raise CheckpointError(f"{pths[0]}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        model = model.to(dtype)
    return tokenizer, model.to(device).eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
TINY_VOCAB = 2 ** 15  # hashed word ids of the tiny random encoder


class HashTokenizer:
    """The tiny encoder's word-level tokenizer: case and punctuation dropped, then each word's id is a hash of the
    word alone (3 + crc32 mod TINY_VOCAB; 0 pads, 1 ends). Two words may share an id; a tokenizer with a vocabulary
    (tokenizers' WordLevel) keeps one of them and reads the other as unknown, which one depending on the other texts
    and on the process's string hashing ("puck" and "start" collide)."""

    def __call__(self, texts, max_length, **_):  # as HF's with padding="max_length", truncation, return_tensors="pt"
        ids = [[3 + zlib.crc32(w.encode()) % TINY_VOCAB for w in re.sub(r"[^\w\s]", " ", t).lower().split()]
               [:max_length - 1] + [1] for t in texts]
        out = {"input_ids": torch.zeros(len(texts), max_length, dtype=torch.long),
               "attention_mask": torch.zeros(len(texts), max_length, dtype=torch.long)}
        for i, row in enumerate(ids):
            out["input_ids"][i, :len(row)] = torch.tensor(row)
            out["attention_mask"][i, :len(row)] = 1
        return out


def tiny_random_encoder(d_model, seed=0):
    """(tokenizer, UMT5EncoderModel) for demos and tests where no umT5 weights exist: HashTokenizer and a small
    encoder with seeded random weights, so an instruction gets the same features whichever other texts are encoded
    with it, and a cache can grow. Case and punctuation are dropped first ("Open a drawer." reads as "open a
    drawer"), as a trained encoder nearly ignores them. Beyond that the features carry no language knowledge, only
    which words an instruction has."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=3 + TINY_VOCAB, d_model=d_model, d_kv=max(4, d_model // 4), d_ff=2 * d_model, num_layers=2,
                     num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    return HashTokenizer(), UMT5EncoderModel(cfg).eval()


@torch.no_grad()
def encode(texts, tokenizer, model, text_len=TEXT_LEN):
    """Cleaned texts -> list of [L_i, D] embeddings (L_i = real token count incl. </s>, <= text_len)."""
    tok = tokenizer([clean_text(t) for t in texts], padding="max_length", truncation=True, max_length=text_len,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    device = next(model.parameters()).device
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [h[:n].cpu() for h, n in zip(hidden, mask.sum(1).tolist())]


def build_cache(texts, tokenizer, model, out, batch_size=8, shard_size=2000, dtype=torch.bfloat16, text_len=TEXT_LEN,
                encoder=None):
    """Encode the texts not yet in `out` (a folder) into new shards; returns the number encoded.

    encoder: {"id": what determines the features, "flags": the encode_text.py flags that rebuild the encoder},
    recorded in every shard; a cache made by another encoder is never extended (its features would mix)."""
    from tqdm import tqdm
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name
        raise TextCacheError(f"{out}: cannot be made ({e.strerror or e})") from None
    others = sorted(f.name for f in out.glob("*.safetensors") if not f.name.startswith("text-"))
    if others:  # a run's or a model's folder: its files are no shards, and no advice here may delete them
        raise TextCacheError(f"{out}: holds {', '.join(others[:3])}, not text cache shards (text-*.safetensors): "
                             f"use another --out")
    have = set()
    if any(out.glob("*.safetensors")):
        cache = TextCache(out)
        if encoder_id(cache.encoder) != encoder_id(encoder):
            raise TextCacheError(f"{out}: made by {describe(cache.encoder)} (encoder {encoder_id(cache.encoder)}), not "
                                 f"{describe(encoder)} (encoder {encoder_id(encoder)}); mixing them would give "
                                 f"instructions incomparable features: use another --out, or delete {out} to rebuild it")
        if (cache.encoder or {}).get("weights") not in (None, (encoder or {}).get("weights")):
            raise TextCacheError(f"{out}: made by an encoder of the same id ({encoder_id(encoder)}) but other weights "
                                 f"(another fine-tune of one model?); mixing them would give instructions incomparable "
                                 f"features: use another --out, or delete {out} to rebuild it")
        have = set(cache.where)
    todo = {}
    for t in texts:
        if isinstance(t, str) and t.strip() and text_key(t) not in have:
            todo.setdefault(text_key(t), clean_text(t))
    keys, shard, full = list(todo), len(list(out.glob("*.safetensors"))), []
    for s in tqdm(range(0, len(keys), shard_size), desc="shards", disable=len(keys) <= shard_size):
        part, tensors = keys[s:s + shard_size], {}
        for b in range(0, len(part), batch_size):
            batch = part[b:b + batch_size]
            for k, e in zip(batch, encode([todo[k] for k in batch], tokenizer, model, text_len)):
                tensors[k] = e.to(dtype).contiguous()
                if len(e) == text_len:  # its end cut, perhaps: words past text_len tokens are never read
                    full.append(todo[k])
        while (out / f"text-{shard:05d}.safetensors").exists():
            shard += 1
        # written whole, after encoding (to a temporary name, then renamed): an interrupted run leaves no half shard
        meta = {"texts": json.dumps({k: todo[k] for k in part}), **({"encoder": json.dumps(encoder)} if encoder else {})}
        save_safetensors(tensors, out / f"text-{shard:05d}.safetensors", metadata=meta)
    if full:
        print(f"{out}: {len(full)} instructions fill all {text_len} tokens and may be cut short (words past them are "
              f"not read; two that differ only there get the same features), e.g. {full[0]!r}; a larger --text_len "
              f"keeps them whole", file=sys.stderr)
    return len(keys)


def encoder_id(encoder):
    return encoder["id"] if encoder else None


def describe(encoder):
    return f"`{encoder['flags']}`" if encoder else "an unrecorded encoder (an older encode_text.py)"


UMT5_ARCH = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
             "relative_attention_max_distance", "feed_forward_proj", "layer_norm_epsilon")


def encoder_digest(tokenizer, model, arch):
    """A digest of what fixes an encoder's features: the config's `arch` keys, the first rows of its embedding
    table (rounded to bf16, so an fp32 and a bf16 copy of one checkpoint agree) and its tokenizer's vocabulary. The
    id caches and models record; weights_digest tells apart what it cannot."""
    h = hashlib.sha1(json.dumps({k: getattr(model.config, k, None) for k in arch}, sort_keys=True, default=str).encode())
    with torch.no_grad():
        h.update(model.get_input_embeddings().weight[:64].to(torch.bfloat16).float().cpu().numpy().tobytes())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:12]


def weights_digest(model):
    """checkpoint.sampled_digest of every weight: fine-tunes of one model (all-MiniLM-L6-v2 and its siblings) share
    config, vocabulary and the embedding table's first rows, so one id, and their features mixed in one cache without
    a word. Recorded beside the id (which caches and models made before it keep)."""
    # the pooler: no feature reads it, and load_encoder lets it start at random
    return sampled_digest(w for name, w in model.named_parameters() if not name.startswith("pooler."))


def umt5_id(tokenizer, model):
    """A digest of what fixes a umT5's features: its architecture, the first rows of its embedding table (rounded to
    bf16, so an fp32 and a bf16 copy of one checkpoint agree) and its tokenizer's vocabulary. Not the whole config:
    it also records the transformers version and the dtype, which would give one checkpoint several ids."""
    return encoder_digest(tokenizer, model, UMT5_ARCH)


def model_id(tokenizer, model):
    """umt5_id for a umT5; for another encoder its model type and the same digest over its config's architecture
    (every entry but those naming the version, dtype, file or class)."""
    if model.config.model_type == "umt5":
        return f"umt5:{umt5_id(tokenizer, model)}"
    skip = {"transformers_version", "torch_dtype", "dtype", "_name_or_path", "architectures", "_attn_implementation"}
    arch = sorted(k for k in model.config.to_dict() if k not in skip)
    return f"{model.config.model_type}:{encoder_digest(tokenizer, model, arch)}"


def encoder_record(a, tokenizer, model):
    """The id and flags build_cache records: the tiny encoder is fixed by its width, seed and hashing; a umT5
    by umt5_id. Dtype and text_len change the features too."""
    if a.tiny_random:
        # "-lower": case and punctuation dropped (older caches kept them: their features differ for such texts);
        # "-ids": HashTokenizer (older caches read one of two colliding words as unknown, by the process's hashing)
        ident, flags = f"tiny_random-crc32-{TINY_VOCAB}-lower-ids:{a.tiny_random}:seed0", f"--tiny_random {a.tiny_random}"
    else:
        ident, flags = model_id(tokenizer, model), f"--model {os.path.abspath(a.model)}"
    return {"id": f"{ident}:{a.dtype}:len{a.text_len}", "flags": f"{flags} --text_len {a.text_len} --dtype {a.dtype}",
            **({} if a.tiny_random else {"weights": weights_digest(model)})}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local folder with the umT5-XXL encoder and tokenizer (or, beyond the paper, "
                   "another transformers text encoder's)")
    p.add_argument("--tiny_random", type=int, metavar="DIM",
                   help="no umT5 weights: a random DIM-wide encoder over the instructions' words (demos, tests)")
    p.add_argument("--text_len", type=int, default=TEXT_LEN, help="tokens per instruction (the DiT's text_len)")
    p.add_argument("--out", required=True, help="cache folder (safetensors shards)")
    # extend: a flag given twice adds to the first (add_command writes one per dataset; a second --lerobot replaced
    # the first, so the command a missing text names encoded the last dataset's instructions alone)
    p.add_argument("--lerobot", nargs="*", action="extend", default=[], help="LeRobot dataset roots")
    p.add_argument("--egodex", nargs="*", action="extend", default=[], help="EgoDex roots")
    p.add_argument("--manifest", nargs="*", action="extend", default=[], help="JSONL manifests")
    p.add_argument("--texts", nargs="*", action="extend", default=[], help="text files, one instruction per line")
    p.add_argument("--paraphrases", nargs="*", action="extend", default=[],
                   help="JSON files {instruction: [other wordings]} (train.py --paraphrases) or {instruction: another} "
                        "(eval.py --instructions): every text in them")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=2000)
    a = p.parse_args()
    if not (a.model or a.tiny_random):
        p.error("give --model (a local umT5 folder) or --tiny_random DIM")
    if a.model and a.tiny_random:
        p.error("give --model or --tiny_random, not both: --tiny_random makes a random encoder, not the model's")
    if min(a.batch_size, a.shard_size, a.text_len, a.tiny_random or 1) < 1:
        p.error("--batch-size, --shard-size, --text_len and --tiny_random must be at least 1")
    if not device_here(a.device):
        p.error(f"--device {a.device}: no such device here ({torch.cuda.device_count()} CUDA GPUs); pass --device cpu")
    try:
        texts = [line for f in a.texts for line in data.read_text(f).splitlines()]  # not UTF-8: the file and line named
        texts += [w for f in a.paraphrases for k, v in data.read_paraphrases(f).items() for w in (k, *v)]
        for root in a.lerobot:  # every camera's episodes: a dataset downloaded without its first camera has them too
            texts += [t for e in data.read_lerobot(root, "all", probe=False) for t in e.extra.get("tasks", [e.instruction])]
        texts += [e.instruction for r in a.egodex for e in data.read_egodex(r)]
        texts += [e.instruction for m in a.manifest for e in data.read_manifest(m)]
        dtype = getattr(torch, a.dtype)
        if a.tiny_random:
            tokenizer, model = tiny_random_encoder(a.tiny_random)
        else:
            tokenizer, model = load_encoder(a.model, dtype=dtype, device=a.device)
            most = getattr(model.config, "max_position_embeddings", None)  # umT5's positions are relative: none
            if most and a.text_len > most:
                raise SystemExit(f"--text_len {a.text_len}: {a.model} reads at most {most} tokens; pass --text_len "
                                 f"{most} or less")
        n = build_cache(texts, tokenizer, model, a.out, a.batch_size, a.shard_size, dtype, a.text_len,
                        encoder_record(a, tokenizer, model))
        print(f"{a.out}: encoded {n} new instructions; {len(TextCache(a.out))} in the cache")
    except (TextCacheError, data.DataError, CheckpointError, OSError) as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()

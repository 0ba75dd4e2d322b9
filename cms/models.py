"""Model cards: turn a card into a loadable HF directory, count its parameters, load it.

A card names a hub id or a local directory (``path``), optionally a shipped
architecture config (``arch``, for counting parameters offline), or a ``tiny``
Llama config that cms builds locally: with random weights and a byte-level
tokenizer, or, when the card has a ``train`` spec, trained from scratch on the
toy world's arithmetic (``cms.toy``). Either way no download is needed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from filelock import FileLock

ARCHS = Path(__file__).parent / "archs"
TINY_DEFAULTS = {"vocab_size": 259, "max_position_embeddings": 8192, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
SPECIALS = ["<pad>", "<s>", "</s>"]


class ModelError(ValueError):
    """A model card that cannot be resolved, with the fix in its message."""


def _card(card) -> dict:
    return dict(card) if not isinstance(card, dict) else card


def looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or os.path.exists(path)


def card_key(card) -> str:
    """A stable identity for a card: part of every cache key that depends on the model."""
    c = _card(card)
    key = {k: c.get(k) for k in ("name", "path", "arch", "tiny", "train")}
    if c.get("tiny") and c.get("dtype") not in (None, "auto"):
        key["dtype"] = c["dtype"]  # a tiny model is built in its card's dtype
    return json.dumps(key, sort_keys=True, default=str)


def model_config(card):
    """The HF config of a card, without loading weights (offline where the card allows)."""
    from transformers import AutoConfig, LlamaConfig

    c = _card(card)
    if c.get("tiny"):
        return LlamaConfig(**{**TINY_DEFAULTS, **dict(c["tiny"])})
    path = c.get("path")
    if path and looks_local(path):
        if not Path(path).expanduser().is_dir():
            raise ModelError(f"model path {path!r} of {c.get('name')!r} does not exist: fix family.<role>.path")
        return AutoConfig.from_pretrained(Path(path).expanduser())
    if c.get("arch"):
        arch = ARCHS / f"{c['arch']}.json"
        if not arch.exists():
            known = ", ".join(sorted(p.stem for p in ARCHS.glob("*.json")))
            raise ModelError(f"no shipped architecture {c['arch']!r}: use one of {known}, or a local path")
        fields = json.loads(arch.read_text())
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    if path:
        try:
            return AutoConfig.from_pretrained(path)
        except OSError as err:
            raise ModelError(
                f"cannot read the config of {path!r} from the hub ({err.__class__.__name__}): without hub access, "
                "set family.<role>.path to a local model directory (or family.<role>.arch to count it offline)"
            ) from err
    raise ModelError(f"model card {c.get('name')!r} has no path, arch or tiny config: set one of them")


@functools.lru_cache(maxsize=64)
def _count(key: str) -> int:
    from transformers import AutoModelForCausalLM

    config = model_config(json.loads(key))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_params(card) -> int:
    """Parameters of a card's model, counted by building it on the meta device."""
    return _count(card_key(card))


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny(card, directory: Path, seed: int = 0, tokenizer=None) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer (byte-level by default) as an HF directory."""
    from transformers import LlamaForCausalLM

    tokenizer = tokenizer or byte_tokenizer()
    config = model_config(card)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = 0, 1, 2
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dtype = _card(card).get("dtype") or "auto"
    if dtype != "auto":  # e.g. bfloat16, to test the path real bf16 checkpoints take
        model = model.to(getattr(torch, dtype))
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def resolve(card, cache_dir: str | Path) -> str:
    """A path or hub id that ``from_pretrained`` (HF or vLLM) can load for this card."""
    c = _card(card)
    if c.get("tiny"):
        digest = hashlib.sha256(card_key(c).encode()).hexdigest()[:12]
        directory = Path(cache_dir) / "models" / f"{c['name']}-{digest}"
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory) + ".lock"):
            if not directory.exists():
                if c.get("train"):
                    from cms import toy

                    toy.build(c, directory)
                else:
                    build_tiny(c, directory)
        return str(directory)
    path = c.get("path")
    if not path:
        raise ModelError(f"model card {c.get('name')!r} has no path to load weights from: set family.<role>.path")
    if looks_local(path):
        local = Path(path).expanduser()
        if not (local / "config.json").exists():
            raise ModelError(
                f"model path {path!r} of {c.get('name')!r} does not exist or holds no config.json: "
                "fix family.<role>.path (a hub id or an HF model directory)"
            )
        return str(local)
    return path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "auto", device: str | None = None):
    """An HF causal LM in eval mode, on ``device`` (CUDA when there is one)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")
    except OSError as err:
        raise ModelError(
            f"cannot load model {path!r} ({err}): without hub access, point family.<role>.path at a local "
            "HF model directory"
        ) from err
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()

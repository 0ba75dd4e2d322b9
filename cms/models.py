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

from cms import hub, resume

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
    if c.get("api"):  # a hosted model: what answers, and how it is asked (not its rate limits)
        key["api"] = {k: v for k, v in c["api"].items() if k not in ("limits", "key_env")}
    if c.get("tiny") and c.get("adds_bos"):
        key["adds_bos"] = True
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
    """Parameters of a card's model: its ``params`` if given, else counted by building it on the meta device."""
    c = _card(card)
    if c.get("params"):
        return int(c["params"])
    if c.get("api"):
        raise ModelError(f"{c.get('name')!r} is a hosted model, and cms cannot count its parameters: set family.<role>.params=<count>")
    return _count(card_key(card))


def params_or_none(card) -> int | None:
    """``count_params``, or None for a hosted model of unknown size (price and number matching need none)."""
    c = _card(card)
    return None if c.get("api") and not c.get("params") else count_params(c)


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def adding_bos(tokenizer):
    """``tokenizer`` made to start every encoded text with BOS, as Gemma's and Llama's do."""
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    return tokenizer


def build_tiny(card, directory: Path, seed: int = 0, tokenizer=None) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer (byte-level by default; adding BOS when
    the card says ``adds_bos``) as an HF directory."""
    from transformers import LlamaForCausalLM

    tokenizer = tokenizer or byte_tokenizer()
    if _card(card).get("adds_bos"):
        tokenizer = adding_bos(tokenizer)
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
    if c.get("api") and not c.get("path") and not c.get("tiny"):
        raise ModelError(
            f"{c.get('name')!r} is a hosted model ({c['api'].get('base_url')}): it can generate data (sampler=openai), but cms "
            "fine-tunes and evaluates local weights only: choose a setting whose learner is a local model (setting=kd, "
            "family.student.path), or give the card a path to the same model's weights"
        )
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


WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".gguf")


def weights_id(path: str) -> str:
    """What identifies the weights at ``path``, for cache keys: a local directory by its config and
    its weight files' names, sizes and modification times (retraining into the same directory changes
    it); a hub id by the commit it resolves to (the id alone when the hub cannot be asked)."""
    local = Path(path).expanduser()
    if local.is_dir():
        config = local / "config.json"
        stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(local.iterdir())
                 if f.name.endswith(WEIGHT_FILES) or f.name.endswith(".index.json")]
        parts = [config.read_text() if config.exists() else "", stats]
        return "local:" + resume.digest(parts)
    from huggingface_hub import HfApi, try_to_load_from_cache

    try:
        if hub.unreachable():
            snapshot = try_to_load_from_cache(path, "config.json")  # .../snapshots/<commit>/config.json
            return f"hub:{path}@{Path(snapshot).parent.name if isinstance(snapshot, str) else 'unresolved'}"
        return f"hub:{path}@{HfApi().model_info(path).sha}"
    except Exception:  # not a hub id, a private or gated model, a network error: the id is all there is
        return f"hub:{path}@unresolved"


def card_weights(card) -> str | None:
    """``weights_id`` of a card's model; None for a tiny card, which its card key already names (cms
    builds it from that key, once), and for a hosted model (its card key names the endpoint and model)."""
    c = _card(card)
    return None if c.get("tiny") or c.get("api") else weights_id(resolve(c, ""))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids of a prompt, for every backend (HF sampler, vLLM, fine-tuning, evaluation, judge):
    the tokenizer's own special tokens, so BOS where the model was trained with one (Gemma, Llama)
    and none where it was not (Qwen)."""
    return tokenizer(prompt, add_special_tokens=True).input_ids


def text_ids(tokenizer, text: str) -> list[int]:
    """The token ids of text that continues a prompt (a solution): no special tokens."""
    return tokenizer(text, add_special_tokens=False).input_ids


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

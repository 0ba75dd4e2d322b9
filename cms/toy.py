"""The toy world's models: WC, SE and student trained from scratch on arith.

Each is a small Llama with a BPE tokenizer learnt from the arith pretraining
corpus: the ``pretrain`` split, which holds no question of the train (sampled,
validation) or test splits (``arith.PARTS``). It is trained on prompts in the sampling
format with a loss on the solution only; by default the prompts are zero-shot,
as the arith dataset's are (models this small copy numbers from an exemplar
instead of the question: 27% vs 44.5% greedy accuracy for toy-se 1-shot vs 0-shot). Training is deterministic given the card's seed
and runs once: ``models.resolve`` caches the result under a key of the card.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from pathlib import Path

from cms import arith, finetuning, models, threads
from cms.data import PromptFormat

log = logging.getLogger(__name__)


def tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE learnt from ``corpus`` (small numbers become single tokens)."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(tmodels.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=models.SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def examples(records: list, seed: int, max_shots: int = 0) -> list[tuple[str, str]]:
    """Training pairs in the sampling format: 0 to ``max_shots`` solved exemplars, then a
    question (the prompt, masked from the loss) and its solution (the completion)."""
    rng = random.Random(seed)
    fmt = PromptFormat(arith.QUESTION_TEMPLATE, arith.SOLUTION_TEMPLATE)
    pairs = []
    for r in records:
        shots = rng.sample(records, rng.randint(0, max_shots))
        pairs.append((fmt.prompt(r, shots), fmt.completion(r.solution)))
    return pairs


def build(card: dict, directory: Path) -> Path:
    """Train the card's model from scratch and write it as an HF directory at ``directory``."""
    spec = dict(card["train"])
    corpus = arith.load("pretrain", {"pretrain": spec["corpus_size"]}, seed=spec.get("data_seed", 0))
    pairs = examples(corpus, spec.get("seed", 0))
    tok = tokenizer([p + c for p, c in pairs], card["tiny"].get("vocab_size", 512))
    threads.refresh()
    log.info("training toy model %s from scratch: %d params, %d steps on %d examples (cached afterwards in %s)",
             card["name"], models.count_params(card), spec["steps"], len(pairs), directory)
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        init = models.build_tiny(card, Path(tmp) / "init", seed=spec.get("seed", 0), tokenizer=tok)
        metrics = finetuning.run(str(init), pairs, Path(tmp) / "train", steps=spec["steps"],
                                 batch_size=spec.get("batch_size", 32), lr=spec.get("lr", 2e-3),
                                 warmup_steps=spec.get("warmup_steps", 50), schedule="cosine", max_length=spec.get("max_length", 256),
                                 seed=spec.get("seed", 0), log_every=50, desc=f"training {card['name']}")
        shutil.move(metrics["checkpoint"], directory)
    log.info("toy model %s trained: loss %.3f -> %.3f", card["name"], metrics["train_loss_first"], metrics["train_loss_last"])
    return directory

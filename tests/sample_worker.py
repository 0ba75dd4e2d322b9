"""A sampling job for the crash and concurrency tests: python tests/sample_worker.py CACHE_DIR N [QUESTIONS]."""

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cms import sampling
from cms.data import Record

ROOT = Path(__file__).resolve().parents[1]


def main(cache_dir: str, n: int, n_questions: int = 12) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "family" / "tiny.yaml"))["wc"]
    questions = [Record(f"q{i}", f"question {i}", "1", "") for i in range(n_questions)]
    rows, hit, _ = sampling.run(
        generator=card, questions=questions, prompts=[f"Question: {i} + {i}?\nAnswer:" for i in range(n_questions)], n=n,
        sampler={"backend": "hf", "temperature": 0.7, "top_p": 1.0, "batch_size": 2},
        decoding={"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 24, "stop": []},
        seed=0, cache_dir=cache_dir, key_parts={"dataset": "worker"},
    )
    print(f"rows={len(rows)} tokens={sum(r['tokens'] for r in rows)} hit={hit}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:]))

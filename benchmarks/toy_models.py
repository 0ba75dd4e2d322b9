"""The toy world's models: counted parameters, per-sample and greedy accuracy on the
arith test split, and the SE:WC parameter ratio used for compute matching.

Trains the models if the cache lacks them (as the first grid run would), then
samples 4 solutions per test question at temperature 0.7, zero-shot as the
arith dataset prompts. The last line is the SE:WC ratio.

    python benchmarks/toy_models.py [--samples 4]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from omegaconf import OmegaConf

from cms import arith, budget, config, grading, models, sampling
from cms.data import PromptFormat

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    family = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/family/toy.yaml"))
    ds = OmegaConf.load(ROOT / "conf/dataset/arith.yaml")
    test = arith.load("test", dict(ds.generator.sizes), ds.generator.seed)
    fmt = PromptFormat(ds.question_template, ds.solution_template)
    cache = os.environ.get("CMS_CACHE_DIR") or config.user_cache()
    params = {}
    for role in ("student", "wc", "se"):
        card = family[role]
        params[role] = models.count_params(card)
        engine = sampling.HFSampler(models.resolve(card, cache), batch_size=64)
        prompts = [fmt.prompt(r) for r in test]
        seeds = [[sampling.seed_for(0, r.id, i) for i in range(args.samples)] for r in test]
        out = engine.generate(prompts, args.samples, 0.7, 1.0, ds.max_new_tokens, list(ds.stop), seeds)
        verdicts = grading.grade("gsm8k", [(s.text, r.answer) for r, row in zip(test, out) for s in row])
        greedy = engine.generate(prompts, 1, 0.0, 1.0, ds.max_new_tokens, list(ds.stop), [[0]] * len(test))
        g = grading.grade("gsm8k", [(row[0].text, r.answer) for r, row in zip(test, greedy)])
        by_level = {}
        for r, row in zip(test, out):
            for s in row:
                by_level.setdefault(r.level, []).append(grading.grade_gsm8k(s.text, r.answer) == grading.CORRECT)
        levels = ", ".join(f"{k}: {100 * sum(v) / len(v):.0f}%" for k, v in sorted(by_level.items()))
        print(f"{card['name']}: {params[role]:,} params; per-sample accuracy {100 * verdicts.count('correct') / len(verdicts):.1f}% "
              f"({len(verdicts)} samples; {levels}); greedy pass@1 {100 * g.count('correct') / len(g):.1f}%")
    s_wc = budget.samples_per_question("wc", params, se_samples=1)
    print(f"SE:WC parameter ratio {params['se'] / params['wc']:.2f} -> compute-matched WC samples per SE sample: {s_wc}")


if __name__ == "__main__":
    main()

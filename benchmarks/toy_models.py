"""The toy world's models: counted parameters, per-sample accuracy by level and greedy accuracy on
the arith test split, and each family's SE:WC parameter ratio used for compute matching.

Trains the models if the cache lacks them (as the first run of a family would), then samples
``--samples`` solutions per test question at temperature 0.7, zero-shot as the arith dataset
prompts, on the first ``--questions`` test questions. The last lines give each family's SE:WC ratio.

    python benchmarks/toy_models.py [--families toy toy9 toy27] [--students toy_small toy_large] [--samples 4] [--questions 1000]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cms import arith, budget, config, grading, models, sampling
from cms.data import PromptFormat

ROOT = Path(__file__).resolve().parents[1]


def _family(name: str, student: str | None = None) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"family={name}"] + ([f"family/student={student}"] if student else [])
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def measure(card: dict, test: list, fmt: PromptFormat, ds: dict, samples: int, cache: str) -> str:
    """One model's line: parameters, per-sample accuracy overall and by level, greedy pass@1."""
    engine = sampling.HFSampler(models.resolve(card, cache), batch_size=64)
    prompts = [fmt.prompt(r) for r in test]
    seeds = [[sampling.seed_for(0, r.id, i) for i in range(samples)] for r in test]
    out = engine.generate(prompts, samples, 0.7, 1.0, ds["max_new_tokens"], list(ds["stop"]), seeds)
    greedy = engine.generate(prompts, 1, 0.0, 1.0, ds["max_new_tokens"], list(ds["stop"]), [[0]] * len(test))
    engine.close()
    by_level: dict[str, list[bool]] = {}
    for r, row in zip(test, out):
        for s in row:
            by_level.setdefault(r.level, []).append(grading.grade_gsm8k(s.text, r.answer) == grading.CORRECT)
    every = [ok for v in by_level.values() for ok in v]
    g = [grading.grade_gsm8k(row[0].text, r.answer) == grading.CORRECT for r, row in zip(test, greedy)]
    levels = ", ".join(f"{k}: {100 * sum(v) / len(v):.0f}%" for k, v in sorted(by_level.items()))
    return (f"{card['name']}: {models.count_params(card):,} params; per-sample accuracy {100 * sum(every) / len(every):.1f}% "
            f"({len(every)} samples; {levels}); greedy pass@1 {100 * sum(g) / len(g):.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["toy"])
    ap.add_argument("--students", nargs="+", default=[], help="family/student options to measure besides the default")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--questions", type=int, default=1000)
    args = ap.parse_args()
    cfg = _family(args.families[0])
    ds = cfg["dataset"]
    test = arith.load("test", ds["generator"]["sizes"], ds["generator"]["seed"])[: args.questions]
    fmt = PromptFormat(ds["question_template"], ds["solution_template"])
    cache = os.environ.get("CMS_CACHE_DIR") or config.user_cache()
    done, ratios = set(), {}
    cards = [(f, _family(f)["family"]) for f in args.families] + [(s, _family("toy", s)["family"]) for s in args.students]
    for name, family in cards:
        for role in ("student", "wc", "se"):
            card = family[role]
            if card["name"] not in done:
                done.add(card["name"])
                print(measure(card, test, fmt, ds, args.samples, cache), flush=True)
        params = {r: models.count_params(family[r]) for r in ("wc", "se")}
        ratios[name] = (params["se"] / params["wc"], budget.samples_per_question("wc", params, se_samples=1))
    for name, (exact, s_wc) in ratios.items():
        print(f"{name}: SE:WC parameter ratio {exact:.2f} -> compute-matched WC samples per SE sample: {s_wc}")


if __name__ == "__main__":
    main()

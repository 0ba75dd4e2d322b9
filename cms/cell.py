"""One cell of the grid: sample with ``model``, keep the correct solutions,
fine-tune the ``setting``'s learner on them, evaluate it (``python -m cms.run``
composes the config and calls ``run_cell``).

This module only calls the stages in order; each stage is a plain function of
its own module. Every stage's output lands in the run
directory (or the shared cache), so re-running a finished cell does no work.
The cell's settings are recorded in ``cell.json`` (and in results.json); a run
directory that holds a cell of other settings is refused, not reused, unless
``rerun=true``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cms import budget, config, data, evaluation, filtering, finetuning, grading, judge, models, prices, resume, sampling, threads, tracking

log = logging.getLogger("cms")


def _writable(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a probe of this process's own: cells sharing the cache check it at once
            pass
    except OSError as err:
        raise PermissionError(f"cannot write {path} ({err.strerror or err}), {what} at a writable directory") from None


def run_cell(cfg: DictConfig, run_dir: Path, group: str | None = None) -> dict:
    """Run one (model, setting) cell into ``run_dir``; return its results."""
    config.validate(cfg)
    threads.apply(cfg.threads)
    _writable(run_dir, "the run directory: point paths.output_dir (CMS_OUTPUT_DIR) or hydra.run.dir")
    _writable(Path(cfg.paths.cache_dir), "the cache: point paths.cache_dir (CMS_CACHE_DIR)")
    c = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = _claim(run_dir, c)
    if (run_dir / "results.json").exists():
        log.info("cell already finished: %s", run_dir / "results.json")
        return json.loads((run_dir / "results.json").read_text())
    family, ds, cache = c["family"], c["dataset"], Path(c["paths"]["cache_dir"]).absolute()
    transfer = {name: config.dataset_group(name) for name in c["evaluation"]["transfer"]}  # a wrong name fails now, not after training
    role, learner = c["model"]["role"], c["setting"]["learner"]
    generator, learner_card = family[role], family[learner]

    params = {r: models.params_or_none(family[r]) for r in ("wc", "se")}
    b = c["budget"]
    output_prices = {r: prices.output_price(family[r], c["prices"]) for r in ("wc", "se")}
    budget_args = dict(match=b["match"], se_samples=b["se_samples"], flops_per_question=b["flops_per_question"], prices=output_prices,
                       solution_tokens=ds["assumed_solution_tokens"], max_samples=b["max_samples_per_question"], ratio=b["ratio"], rounding=b["rounding"])
    plan = budget.plan(role, params, **budget_args)
    log.info("budget %s (%s-matched): %s draws %d samples per question (P_WC=%s, P_SE=%s, $/Mtok out WC=%s, SE=%s%s)",
             b["name"], b["match"], generator["name"], plan.samples_per_question, *(f"{v:.3g}" if v else "?" for v in (*params.values(), *output_prices.values())),
             f", WC:SE ratio {plan.ratio_exact:.3f} drawn as {plan.ratio_used:g}" if plan.ratio_exact else "")

    train, test = _split(c, ds, "train_split"), _split(c, ds, "test_split")
    sources = {split: {**data.provenance(ds["name"], ds[f"{split}_split"], c["paths"]["data_dir"], ds["hub"], ds["generator"]),
                       "rows": len(records)} for split, records in (("train", train), ("test", test))}
    log.info("data: %s train from %s; test from %s", ds["name"], data.describe(sources["train"]), data.describe(sources["test"]))
    exemplars, questions, val = data.split_exemplars(train, ds["num_shots"], ds["train_limit"], c["finetune"]["val_size"])
    test = test[: ds["test_limit"]] if ds["test_limit"] is not None else test
    changed = grading.gold_changes(ds["answer_format"], [r.answer for r in exemplars + questions + val + test])
    if changed:
        log.info("grading: %d gold answers are read other than as written (a trailing period, thin spaces or thousands commas, "
                 "unbraced \\frac or \\sqrt, a unit: cms.grading.normalise_math)", changed)
    eval_args = _eval_args(c, ds)
    fmt = eval_args["prompt_format"]

    spent = {"spent_flops": 0.0, "mean_solution_tokens": None}
    dollars, n_failed, mixed = {"spent_usd": 0.0, "provider_usd": None, "usage_tokens": None}, 0, None
    if c["data"]["source"] == "reference":
        kept, quality = filtering.reference(questions)
        source = "reference"
    else:
        if c["data"]["source"] == "mix":
            alone = {r: budget.plan(r, params, **budget_args).samples_per_question for r in ("wc", "se")}
            counts = budget.mix(alone, c["data"]["mix_se"], [q.id for q in questions], c["seed"])
            mixed = {r: sum(n.values()) for r, n in counts.items()}
            log.info("data.source=mix: %.0f%% of the budget to SE: %d SE samples (%s), %d WC samples (%s) over %d questions",
                     100 * c["data"]["mix_se"], mixed["se"], family["se"]["name"], mixed["wc"], family["wc"]["name"], len(questions))
        else:
            counts = {role: {q.id: plan.samples_per_question for q in questions}}
        gold = {q.id: q.answer for q in questions}
        pairs, stores, paid = [], [], []
        for r, per in counts.items():
            if not any(per.values()):
                continue
            drawn, store = _draw(c, ds, family[r], max(per.values()), questions, exemplars, fmt, sources, cache)
            failed = [x for x in drawn if x["finish"] == "failed"]
            if failed:
                log.warning("sampling: %d of %d samples failed after every retry (%s); they are neither right nor wrong: left out of "
                            "grading, kept in the store (rerun=false keeps them; delete %s to draw them again)", len(failed), len(drawn),
                            failed[0].get("error"), store)
            drawn, n_failed = [x for x in drawn if x["finish"] != "failed"], n_failed + len(failed)
            graded = grading.grade_cached(store / "verdicts.json", ds["answer_format"], [(x["text"], gold[x["qid"]]) for x in drawn], **c["grading"])
            used = [(x, v) for x, v in zip(drawn, graded) if x["index"] < per[x["qid"]]]  # a mix uses a prefix of each question's samples
            pairs += [({**x, "generator": r}, v) for x, v in used] if mixed else used
            paid.append(prices.spent([x for x, _ in used], prices.entry(family[r], c["prices"]), output_prices[r], bool((family[r].get("api") or {}).get("batch"))))
            if params[r] is None:
                spent["spent_flops"] = None
            elif spent["spent_flops"] is not None:
                spent["spent_flops"] += budget.sample_flops(params[r], sum(x["tokens"] for x, _ in used))
            stores.append(store)
        if mixed:  # question order, SE's samples before WC's within a question (keep=one reads them so)
            order = {q.id: i for i, q in enumerate(questions)}
            pairs.sort(key=lambda xv: (order[xv[0]["qid"]], xv[0]["generator"] != "se", xv[0]["index"]))
        rows, verdicts = [x for x, _ in pairs], [v for _, v in pairs]
        dollars = prices.together(paid)
        spent["mean_solution_tokens"] = sum(x["tokens"] for x in rows) / len(rows) if rows else 0.0
        check, same = filtering.hooks(ds)
        kept, quality = filtering.run(questions, rows, verdicts, check, c["data"]["keep"], same)
        data.write_rows(run_dir / "graded.jsonl", filtering.graded(questions, rows, verdicts, lambda t: grading.final_answer(ds["answer_format"], t), same))
        source = "+".join(family[r]["name"] for r in counts if any(counts[r].values()))
        if c["stop_after"] == "sampling":
            log.info("stop_after=sampling: %d samples drawn and graded in %s; the grid's cells will reuse them", len(rows), ", ".join(map(str, stores)))
            return {"samples": len(rows), "store": str(stores[0]) if len(stores) == 1 else [str(x) for x in stores], **quality, **spent}
    data.write_rows(run_dir / "kept.jsonl", kept)
    log.info("data from %s: %d kept solutions, coverage %.3f, diversity %.3f", source, len(kept), quality["coverage"], quality["diversity"])

    learner_path = models.resolve(learner_card, cache)
    ev = c["evaluation"]
    baseline = None
    if ev["baseline"]:
        shots = ds["num_shots"] if ev["baseline_shots"] is None else ev["baseline_shots"]
        base_args = {**eval_args, "sampler": _sampler_for(eval_args["sampler"], learner_card)}
        baseline = evaluation.run(learner_path, test, exemplars[:shots], **base_args,
                                  out_path=baseline_path(cache, learner_card, learner_path, ds, test, exemplars[:shots], base_args))

    fpr_judge = _judge(c, cache, judge.rows(kept, "train"), run_dir / "judge_train.jsonl")
    tracker = tracking.Tracker(c["logger"], run_dir, c, name=f"{role}-{c['setting']['name']}-{ds['name']}", group=group,
                               key=resume.digest(fingerprint))
    finetuned, final, selected, protocols, changed = None, None, None, {}, None
    if kept:
        pairs = [(fmt.prompt(data.Record(k["qid"], k["question"], "", "")), fmt.completion(k["solution"])) for k in kept]
        ft, shots = c["finetune"], exemplars[: ev["finetuned_shots"]]
        in_process = ft["strategy"]["devices"] == 1 and ft["strategy"]["num_nodes"] == 1
        validate = evaluation.validation_spec(val, shots, run_dir / "validation", **eval_args) if ft["keep_checkpoints"] == "best" else None
        finetuned = finetuning.run(learner_path, pairs, run_dir / "finetune", seed=c["seed"], validate=validate,
                                   wandb=tracker.lightning(in_process), desc=f"fine-tuning {learner_card['name']}", **ft)
        selected = evaluation.select(finetuned["checkpoints"], val, shots, out_dir=run_dir / "validation", **eval_args)
        changed = finetuning.changed_fraction(learner_path, selected["path"])
        log.info("%.2f%% of the parameters of the selected checkpoint differ from %s (finetune.save_dtype=%s)",
                 100 * changed, learner_card["name"], ft["save_dtype"])
        final = evaluation.run(selected["path"], test, shots, out_path=run_dir / "eval_finetuned.jsonl", **eval_args)
        protocols = _protocols(c, selected["path"], test, exemplars, transfer, run_dir, eval_args, cache)
    else:
        log.error("no solution from %s graded correct (%d samples): nothing to fine-tune on, so accuracy is n/a. "
                  "Raise the budget, use stronger models, or fine-tune on data.source=reference.", source, quality["n_samples"])

    n_q = len(questions)
    planned = {r: budget.sample_flops(params[r], ds["assumed_solution_tokens"]) * n if params[r] is not None else None for r, n in (mixed or {}).items()}
    results = {
        "model": "mix" if mixed else role, "setting": c["setting"]["name"], "dataset": ds["name"], "budget": b["name"],
        "family": family["name"], "source": c["data"]["source"], "seed": c["seed"],
        "generator": source if mixed else generator["name"], "finetuned": learner_card["name"],
        "generator_params": None if mixed else params[role], "finetuned_params": models.count_params(learner_card),
        "match": b["match"], "se_samples": b["se_samples"], "ratio": b["ratio"], "keep": c["data"]["keep"],
        "rounding": b["rounding"], "ratio_exact": plan.ratio_exact, "ratio_used": plan.ratio_used,
        "lr": c["finetune"]["lr"], "train_limit": ds["train_limit"], "data": sources,
        "samples_per_question": sum(mixed.values()) / n_q if mixed else plan.samples_per_question,
        "mix_se": c["data"]["mix_se"] if mixed else None, "mix_samples": mixed,
        "planned_flops": (None if None in planned.values() else sum(planned.values())) if mixed
        else plan.planned_flops_per_question * n_q if plan.planned_flops_per_question is not None else None,
        "spent_flops": spent["spent_flops"], "mean_solution_tokens": spent["mean_solution_tokens"],
        "planned_usd": None if mixed else prices.planned(output_prices[role], plan.samples_per_question * n_q, ds["assumed_solution_tokens"])
        if output_prices[role] is not None else None,
        "spent_usd": dollars["spent_usd"], "provider_usd": dollars["provider_usd"], "usage_tokens": dollars["usage_tokens"],
        "prices": c["prices"].get("version"), "n_failed_samples": n_failed,
        "n_questions": n_q, **quality, "n_train_examples": len(kept),
        "baseline_accuracy": baseline["accuracy"] if baseline else None,
        "accuracy": final["accuracy"] if final else None,
        "n_test": len(test),
        "train_loss_first": finetuned["train_loss_first"] if finetuned else None,
        "train_loss_last": finetuned["train_loss_last"] if finetuned else None,
        "checkpoint": selected["path"] if selected else None,
        "selected_step": selected["step"] if selected else None,
        "val_accuracy": selected["val_accuracy"] if selected else None,
        "n_val": len(val),
        "finetune_steps": finetuned["steps"] if finetuned else None,
        **{k: finetuned[k] if finetuned else None for k in ("tokens_per_s", "mfu", "padding_waste", "weights")},
        "changed_fraction": changed,
        "fpr_judge": fpr_judge["fpr"], "n_judged": fpr_judge["n"], "judge_unparsed": fpr_judge["unlabelled"],
        **protocols,
        "config": c,
        "fingerprint": fingerprint,
    }
    data.write_json(run_dir / "results.json", results)
    log.info("results: %s", run_dir / "results.json")

    tracker.open()
    tracker.table("samples", [{"question": k["question"], "solution": k["solution"]} for k in kept[: c["logger"]["table_rows"]]])
    tracker.summary(results)
    tracker.finish()
    return results


# what a cell writes once it has claimed its directory: one of them without cell.json is an older cms's cell
OUTPUTS = ("results.json", "kept.jsonl", "graded.jsonl", "finetune", "eval_finetuned.jsonl")


def _claim(run_dir: Path, c: dict) -> dict:
    """Record this cell's settings in ``run_dir/cell.json``, or refuse a directory that holds a cell of
    other settings (``rerun=true`` moves those outputs to ``previous/`` and goes on)."""
    fingerprint, record, hydra = config.cell_fingerprint(c), run_dir / "cell.json", run_dir / ".hydra"
    stored = json.loads(record.read_text()) if record.exists() else None
    started = stored is not None or any((run_dir / name).exists() for name in OUTPUTS)
    if started:
        try:
            resume.check(stored and stored.get("fingerprint"), fingerprint, run_dir, "a cell")
            return fingerprint
        except resume.StaleError:
            if not c["rerun"]:
                for name, text in (stored or {}).get("hydra", {}).items():  # Hydra rewrote the cell's record: put it back
                    (hydra / name).write_text(text)
                raise
        moved = resume.set_aside(run_dir)
        log.warning("rerun=true: the outputs of this cell's earlier settings moved to %s; recomputing", moved)
    texts = {p.name: p.read_text() for p in sorted(hydra.glob("*.yaml"))} if hydra.is_dir() else {}
    data.write_json(record, {"fingerprint": fingerprint, "hydra": texts})
    return fingerprint


def _draw(c: dict, ds: dict, card: dict, n: int, questions: list, exemplars: list, fmt, sources: dict, cache: Path) -> tuple[list[dict], Path]:
    """``n`` samples per question from ``card``'s model at the run's decoding, from the shared store or drawn."""
    decoding = {"temperature": c["sampler"]["temperature"], "top_p": c["sampler"]["top_p"], "max_new_tokens": ds["max_new_tokens"], "stop": ds["stop"]}
    prompts = [fmt.prompt(q, exemplars) for q in questions]
    rows, _, store = sampling.run(
        generator=card, questions=questions, prompts=prompts, n=n, sampler=_sampler_for(c["sampler"], card), decoding=decoding,
        seed=c["seed"], cache_dir=cache, worker=c["sampler"].get("worker", 0), workers=c["sampler"].get("workers", 1),
        key_parts={"dataset": ds["name"], "split": ds["train_split"], "data": data.identity(sources["train"]), "prompts": sampling.cache_key(p=prompts)},
        chats=[fmt.messages(q, exemplars) for q in questions],
    )
    return rows, store


def _sampler_for(sampler: dict, card: dict) -> dict:
    """The sampler config for a family card's model: its ``dtype`` unless ``sampler.dtype`` names one."""
    return {**sampler, "dtype": card.get("dtype") or "auto"} if sampler.get("dtype", "auto") == "auto" else sampler


def baseline_path(cache: Path, card: dict, path: str, ds: dict, test: list, exemplars: list, eval_args: dict) -> Path:
    """Where the learner's evaluation before fine-tuning is cached, shared by every cell with the same learner:
    keyed by the card, its weights' identity, the dataset group and everything the evaluation depends on."""
    key = sampling.cache_key(card=models.card_key(card), weights=models.card_weights(card), ds=ds,
                             **evaluation.fingerprint(path, test, exemplars, **eval_args))
    return cache / "evals" / key / "outputs.jsonl"


def _split(c: dict, ds: dict, split: str, limit: int | None = None) -> list:
    """The records of a dataset group's split (``train_split`` or ``test_split``), the first ``limit``."""
    records = data.load(ds["name"], ds[split], ds["answer_format"], c["paths"]["data_dir"], ds["hub"], ds["generator"])
    return records[:limit] if limit is not None else records


def _engine_for(c: dict, card: dict, backend: str | None) -> dict:
    """The sampler config that runs ``card``'s model: the group ``backend`` names, else the run's sampler
    when it can (an API's for a hosted card, a local one for local weights), else openai or hf."""
    if backend:
        return config.sampler_group(backend)
    if sampling.hosted(c["sampler"]) == bool(card.get("api")):
        return c["sampler"]
    return config.sampler_group("openai" if card.get("api") else "hf")


def _eval_args(c: dict, ds: dict) -> dict:
    """How evaluation prompts, decodes and grades on a dataset group (the learner is local weights: an API
    sampler's run evaluates with ``evaluation.backend``, hf by default)."""
    local = _engine_for(c, {}, c["evaluation"]["backend"])
    sampler = {**local, "batch_size": c["evaluation"]["batch_size"] or local["batch_size"]}
    return dict(fmt=ds["answer_format"], prompt_format=data.PromptFormat(ds["question_template"], ds["solution_template"]),
                sampler=sampler, stop=ds["stop"], max_new_tokens=c["evaluation"]["max_new_tokens"] or ds["max_new_tokens"],
                grading_cfg=c["grading"])


def _judge(c: dict, cache: Path, rows: list[dict], out_path: Path) -> dict:
    """The LLM judge's false positive rate on a seeded subset of ``rows`` (nothing without a judge); a
    hosted judge (a card with an api) is asked through its API."""
    jc = c["judge"]
    card = c["family"][jc["role"]] if jc["role"] else jc["model"]
    if not card or not rows:
        return judge.rate([])
    path = None if card.get("api") else models.resolve(card, cache)
    return judge.judge(judge.pick(rows, jc["subset"], jc["seed"]), out_path, model_path=path, card=card,
                       sampler=_sampler_for(_engine_for(c, card, jc["backend"]), card),
                       template=jc["template"] or judge.RUBRIC, max_new_tokens=jc["max_new_tokens"])


def _protocols(c: dict, model_path: str, test: list, exemplars: list, transfer: dict, run_dir: Path, eval_args: dict, cache: Path) -> dict:
    """The fine-tuned model beyond greedy pass@1: the false positives among its correct
    test answers, pass@1 over k samples and maj@k, and accuracy on other datasets."""
    ev, ds, out = c["evaluation"], c["dataset"], {}
    correct = judge.candidates(run_dir, "test")
    check, _ = filtering.hooks(ds)
    if check:
        out["test_fpr"] = judge.rate([check(r["question"], r["solution"]) for r in correct])["fpr"]
    if c["judge"]["test_outputs"]:
        out["test_fpr_judge"] = _judge(c, cache, correct, run_dir / "judge_test.jsonl")["fpr"]
    if ev["samples"]:
        s = evaluation.sampled(model_path, test, exemplars[: ev["finetuned_shots"]], k=ev["samples"], temperature=ev["temperature"],
                               maj_k=ev["maj_k"], out_path=run_dir / "eval_sampled.jsonl", seed=c["seed"], **eval_args)
        out.update({"pass1_mean": s["pass1_mean"], "pass1_ci95": s["pass1_ci95"], "eval_samples": s["k"],
                    **{k: v for k, v in s.items() if k.startswith("maj@")}})
    scores = {}
    for name, t in transfer.items():
        t_test = _split(c, t, "test_split", ev["transfer_test_limit"] or t["test_limit"])
        r = evaluation.run(model_path, t_test, [], out_path=run_dir / f"eval_transfer_{name}.jsonl", **_eval_args(c, t))
        scores[name] = {"accuracy": r["accuracy"], "n": r["n"]}
    if scores:
        out["transfer"] = scores
    return out


# a user's mistakes: one line naming the cause and the fix (cms.run), not a traceback
USER_ERRORS = (config.ConfigError, data.DataError, models.ModelError, budget.BudgetError, resume.StaleError, PermissionError, FloatingPointError)

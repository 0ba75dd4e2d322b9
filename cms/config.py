"""The config schema: every YAML group under conf/ merges into these dataclasses,
so a misspelt key or a wrong type fails when the config is composed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cms.resume import flatten

ROOT = Path(__file__).resolve().parents[1]
CONF = Path(__file__).resolve().parent / "conf"  # the checkout's conf/ (a link to it here), shipped inside the package


@dataclass
class ApiConf:
    """An OpenAI-compatible endpoint serving a card's model (cms.api_sampling)."""

    base_url: str = MISSING  # https://api.openai.com/v1, a `vllm serve` at http://127.0.0.1:8000/v1, ...
    model: str = MISSING  # the model's name at the endpoint
    endpoint: str = "chat"  # chat (the few-shot prompt as messages) | completions (the prompt as text)
    key_env: Optional[str] = "OPENAI_API_KEY"  # the environment variable holding the key (never written anywhere); null: no key
    n: bool = True  # the endpoint honours n > 1 (one request per question); false: one request per sample
    seed: bool = False  # the endpoint accepts a seed: each request is seeded with its (question, index)
    batch: bool = False  # OpenAI's Batch API (the batch discount; results within 24 h)
    limits: Dict[str, Any] = field(default_factory=lambda: {"rpm": 500, "tpm": 200_000, "concurrency": 16})


@dataclass
class ModelCard:
    """One HF causal LM: a hub id or local directory, or a tiny model cms builds."""

    name: str = MISSING
    path: Optional[str] = None  # hub id or local directory
    arch: Optional[str] = None  # cms/archs/<arch>.json: count parameters offline
    tiny: Optional[Dict[str, Any]] = None  # Llama config fields: build locally
    train: Optional[Dict[str, Any]] = None  # with tiny: train from scratch on arith (cms.toy)
    price_per_mtok: Optional[float] = None  # dollars per million output tokens (budget.match=price); None: the price table's
    priced_as: Optional[str] = None  # the model's entry in the price table (conf/prices/); None: api.model
    params: Optional[int] = None  # parameter count (compute matching) where cms cannot count it: a hosted model
    api: Optional[ApiConf] = None  # a hosted model or an OpenAI-compatible server: sample it with sampler=openai
    adds_bos: bool = False  # with tiny: its tokenizer starts every prompt with BOS (as Gemma's and Llama's do)
    dtype: str = "auto"  # the weights' dtype: tiny models are built in it; sampling, baseline and judge load the card in it (sampler.dtype=auto)


@dataclass
class FamilyConf:
    name: str = MISSING
    wc: ModelCard = field(default_factory=ModelCard)
    se: ModelCard = field(default_factory=ModelCard)
    student: ModelCard = field(default_factory=ModelCard)


@dataclass
class GeneratorConf:
    role: str = MISSING  # wc | se: which family model generates the data


@dataclass
class SettingConf:
    name: str = MISSING  # kd | self | w2s
    learner: str = MISSING  # student | wc | se: which family model is fine-tuned


@dataclass
class BudgetConf:
    name: str = MISSING
    match: str = "compute"  # compute | number | price
    se_samples: Optional[int] = 1
    flops_per_question: Optional[float] = None
    max_samples_per_question: int = 1000
    ratio: Optional[float] = None  # WC samples per SE sample; None: P_SE/P_WC (compute) or price_SE/price_WC (price)
    finetune_steps: int = 600  # the paper's SFT steps at this budget (low 600, high 6000); finetune=paper uses it
    rounding: str = "ratio"  # ratio: S_WC = S_SE * round(ratio), as the paper (10 x 2.946 -> 30) | samples: round(S_SE * ratio) (29); halves up


@dataclass
class DatasetConf:
    name: str = MISSING
    answer_format: str = MISSING  # gsm8k (numeric) | math (math-verify)
    train_split: str = "train"
    test_split: str = "test"
    hub: Dict[str, Any] = field(default_factory=dict)  # split -> {path, name, split, revision} for datasets.load_dataset
    generator: Optional[Dict[str, Any]] = None  # generated, not read: {function: module.fn, **its arguments}: fn(split, **arguments)
    step_checker: Optional[str] = None  # module.fn(question, solution) -> bool: whether the reasoning is valid (the exact FPR)
    solution_key: Optional[str] = None  # module.fn(solution) -> str: solutions with equal keys are the same (diversity); default: the text up to whitespace
    num_shots: int = 8
    question_template: str = "Question: {question}\nAnswer:"
    solution_template: str = " {solution}\n\n"
    stop: List[str] = field(default_factory=list)
    max_new_tokens: int = 512
    assumed_solution_tokens: int = 256
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None


@dataclass
class DataConf:
    source: str = "sampled"  # sampled | reference (the datasets' human-written solutions) | mix (both generators, one budget)
    mix_se: float = 0.2  # data.source=mix: the share of the compute-matched budget spent on SE samples, the rest on WC's
    keep: str = "all"  # all: every correct solution | one: the first correct solution per question (no diversity)


@dataclass
class GradingConf:
    timeout_s: float = 5.0  # hard limit per MATH item, in a worker process
    workers: int = 1


@dataclass
class StrategyConf:
    name: str = "single"  # single | ddp | fsdp
    devices: int = 1  # per node
    num_nodes: int = 1  # > 1: the ranks are started with srun inside the cell's SLURM allocation
    sharding: str = "FULL_SHARD"  # fsdp: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD
    activation_checkpointing: bool = False


@dataclass
class FinetuneConf:
    steps: int = 600
    batch_size: int = 32  # examples per step (with packing: rows carrying about as many tokens)
    lr: float = 1e-6
    warmup_steps: int = 20
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (after the warm-up)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    max_length: int = 1024
    packing: bool = True  # best-fit-decreasing rows, position ids restart per example, no cross-attention
    pack_length: Optional[int] = None  # tokens per packed row; None: max_length
    precision: str = "32-true"
    accelerator: str = "auto"
    log_every: int = 10
    checkpoints: int = 10  # evenly spaced HF checkpoints; the best on the validation split is evaluated
    val_size: int = 0  # validation questions carved from train (0: no selection, the last checkpoint)
    save_every: Optional[int] = None  # steps between resume states (None: at the checkpoints only)
    peak_tflops: Optional[float] = None  # per device, for MFU (None: known GPUs, none on CPU)
    save_dtype: str = "fp32"  # fp32 | bf16: the exported checkpoints (training keeps fp32 master weights either way)
    keep_checkpoints: str = "all"  # all | best: score each checkpoint on validation as it is written, keep only the best so far
    strategy: StrategyConf = field(default_factory=StrategyConf)


@dataclass
class EvaluationConf:
    baseline: bool = True
    baseline_shots: Optional[int] = None  # None: the dataset's few-shot prompt
    finetuned_shots: int = 0
    batch_size: Optional[int] = None  # prompts per generate call when evaluating; None: sampler.batch_size
    backend: Optional[str] = None  # a sampler group for the local learner (hf, vllm); None: the run's sampler, hf where that is an API's
    max_new_tokens: Optional[int] = None  # None: the dataset's
    samples: int = 0  # k > 0: also draw k samples per test question (pass@1 = mean over k, with a CI; maj@k)
    temperature: float = 0.7
    maj_k: List[int] = field(default_factory=lambda: [1, 4, 8, 16])  # the ones <= samples are reported
    transfer: List[str] = field(default_factory=list)  # other dataset groups to evaluate the fine-tuned model on
    transfer_test_limit: Optional[int] = None  # None: each transfer dataset's own test_limit


@dataclass
class JudgeConf:
    """An LLM judge of the reasoning behind right final answers (false positives)."""

    role: Optional[str] = None  # wc | se | student: the family's model judges
    model: Optional[ModelCard] = None  # or any model (hub id or local path); neither: no judge
    backend: Optional[str] = None  # a sampler group (hf, vllm, openai); None: the run's sampler (hf where that is an API's)
    subset: int = 500  # kept solutions judged per cell (a seeded random subset)
    test_outputs: bool = True  # also judge the fine-tuned model's correct test answers
    max_new_tokens: int = 96
    seed: int = 0
    template: Optional[str] = None  # {question} {reference} {solution}; None: cms.judge.RUBRIC


@dataclass
class LoggerConf:
    backend: str = "wandb"  # wandb | none
    project: str = "cms"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online | disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    init_timeout_s: float = 60.0
    table_rows: int = 16


@dataclass
class PathsConf:
    output_dir: str = MISSING
    cache_dir: str = MISSING
    data_dir: str = MISSING


@dataclass
class RunConf:
    seed: int = 0
    threads: str = "auto"  # torch CPU threads: auto (the cores other processes leave free) or a count (cms.threads)
    rerun: bool = False  # recompute a cell whose run directory holds outputs of other settings (they move to previous/)
    detach: bool = False  # with hydra/launcher=submitit_slurm: submit the grid and return (python -m cms.slurm status)
    stop_after: Optional[str] = None  # null: the whole cell | sampling: draw (and grade) the samples, then stop
    model: GeneratorConf = field(default_factory=GeneratorConf)
    setting: SettingConf = field(default_factory=SettingConf)
    family: FamilyConf = field(default_factory=FamilyConf)
    budget: BudgetConf = field(default_factory=BudgetConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    data: DataConf = field(default_factory=DataConf)
    sampler: Dict[str, Any] = field(default_factory=dict)  # conf/sampler/<name>.yaml: its engine (_target_) and options
    prices: Dict[str, Any] = field(default_factory=dict)  # conf/prices/<version>.yaml: dollars per million tokens
    grading: GradingConf = field(default_factory=GradingConf)
    finetune: FinetuneConf = field(default_factory=FinetuneConf)
    evaluation: EvaluationConf = field(default_factory=EvaluationConf)
    judge: JudgeConf = field(default_factory=JudgeConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    paths: PathsConf = field(default_factory=PathsConf)


CHOICES = {
    "model.role": ("wc", "se"),
    "setting.learner": ("student", "wc", "se"),
    "data.source": ("sampled", "reference", "mix"),
    "data.keep": ("all", "one"),
    "judge.role": (None, "wc", "se", "student"),
    "stop_after": (None, "sampling"),
    "family.wc.api.endpoint": (None, "chat", "completions"),
    "family.se.api.endpoint": (None, "chat", "completions"),
    "dataset.answer_format": ("gsm8k", "math"),
    "logger.backend": ("wandb", "none"),
    "logger.mode": ("offline", "online", "disabled"),
    "finetune.schedule": ("constant", "cosine"),
    "finetune.strategy.name": ("single", "ddp", "fsdp"),
    "finetune.save_dtype": ("fp32", "bf16"),
    "finetune.keep_checkpoints": ("all", "best"),
    "budget.rounding": ("ratio", "samples"),
}


# settings that say where or how fast a cell runs, not what it computes
UNFINGERPRINTED = ("paths.output_dir", "paths.cache_dir", "logger", "threads", "detach", "rerun", "stop_after", "sampler.worker", "sampler.workers",
                   "sampler._target_", "prices",  # the class behind a backend's name; the table (a cell's fingerprint holds the two prices it used)
                   "sampler.concurrency", "sampler.max_retries", "sampler.timeout_s", "sampler.poll_s", "family.wc.api.limits", "family.se.api.limits",
                   "sampler.batch_size", "sampler.max_rows", "sampler.isolate", "sampler.gpu_memory_utilization", "sampler.cpu_memory_utilization", "sampler.enforce_eager", "sampler.tensor_parallel_size",
                   "grading.workers", "evaluation.batch_size", "finetune.log_every", "finetune.save_every", "finetune.peak_tflops",
                   "finetune.accelerator", "finetune.strategy")


def cell_fingerprint(c: dict) -> dict:
    """The settings that change what a cell computes: the resolved config less ``UNFINGERPRINTED``, and
    under price matching the two output prices it matched on (not the whole table)."""
    from cms import prices

    out = {k: v for k, v in flatten(c).items() if not any(k == u or k.startswith(u + ".") for u in UNFINGERPRINTED)}
    if (c.get("data") or {}).get("source") != "mix":
        out.pop("data.mix_se", None)  # read by mixed data alone: a cell of another source (or of a cms before it) is the same without it
    if (c.get("budget") or {}).get("match") == "price":
        out.update({f"prices.{r}.output": prices.output_price(c["family"][r], c.get("prices") or {}) for r in ("wc", "se")})
    return out


class ConfigError(ValueError):
    """A config value no dataclass type can refuse; the message names the fix."""


def validate(cfg) -> None:
    """Check the enumerated choices that a dataclass cannot type; name the fix."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            names = ", ".join("null" if a is None else a for a in allowed)
            raise ConfigError(f"{key}={value!r} is not one of {names}: override it, e.g. {key}={allowed[-1]}")
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    _check_sampler(sampler, "sampler")
    for key in ("evaluation.backend", "judge.backend"):
        if OmegaConf.select(cfg, key):
            _check_sampler(sampler_group(OmegaConf.select(cfg, key), key), key)
    for role in ("wc", "se", "student"):
        card = OmegaConf.select(cfg, f"family.{role}")
        if card is not None and card.get("tiny") and card.get("path"):
            raise ConfigError(
                f"family.{role}.path={card.path!r} and family.{role}.tiny are both set, and a tiny card never reads its path: "
                f"to load the model at the path, also pass family.{role}.tiny=null family.{role}.train=null "
                f"(and family.{role}.name=<its name>); to build the tiny model, drop family.{role}.path"
            )


# keys every sampler group has; the rest are its engine's keyword arguments
SAMPLER_KEYS = ("_target_", "backend", "temperature", "top_p", "batch_size", "isolate", "worker", "workers", "dtype")


def sampler_group(name: str, key: str = "sampler") -> dict:
    """The sampler group ``conf/sampler/<name>.yaml`` (``key`` names the setting that chose it)."""
    path = CONF / "sampler" / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in (CONF / "sampler").glob("*.yaml")))
        raise ConfigError(f"{key}={name!r} is not a sampler group: use one of {names}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _check_sampler(sampler: dict, key: str) -> None:
    """A sampler group names an engine class (``_target_``) that exists, and only keys it takes."""
    import difflib
    import inspect

    from cms import sampling

    if not sampler.get("_target_") or not sampler.get("backend"):
        raise ConfigError(f"{key} names no engine: a sampler group sets _target_ (its class) and backend (its name); see conf/sampler/hf.yaml")
    try:
        cls = sampling.engine_class(sampler["_target_"])
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}._target_={sampler['_target_']!r} cannot be imported ({err}): name a class, module.Class") from None
    named = [p.name for p in inspect.signature(cls).parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    allowed = set(SAMPLER_KEYS) | set(named) - {"path", "card", "seed"}
    for name in sampler:
        if name not in allowed:
            near = difflib.get_close_matches(name, sorted(allowed), n=1)
            raise ConfigError(f"{key}.{name} is not a setting of {cls.__name__}" + (f" (did you mean {key}.{near[0]}?)" if near else "")
                              + f": it takes {', '.join(sorted(allowed))}")


def dataset_group(name: str) -> dict:
    """The dataset group ``conf/dataset/<name>.yaml``, checked against the schema (transfer evaluation)."""
    groups = CONF / "dataset"
    path = groups / f"{name}.yaml"
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in groups.glob("*.yaml")))
        raise ConfigError(f"evaluation.transfer names {name!r}, which is not a dataset group: use some of {names}")
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(DatasetConf), OmegaConf.load(path)), resolve=True)


def unknown_override(args: list[str]) -> Optional[str]:
    """A one-line message for the first command-line override whose key is neither a config group nor a
    setting of the schema (``modle=wc``), naming the nearest key; None when all are known. Hydra would stop
    on it with a schema error and suggest ``+modle=wc``, which the run would then ignore. ``+``/``~`` keys
    (the preflight checks them), ``hydra.*`` and keys below free-form settings are left alone."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # a malformed override: Hydra says what is wrong with it
        return None
    schema = OmegaConf.structured(RunConf)
    for o in overrides:
        key = o.key_or_group
        if o.is_add() or o.is_delete() or key.split("/")[0].split(".")[0] == "hydra" or (CONF / key).is_dir():
            continue
        node, parts = schema, key.replace("/", ".").split(".")
        for i, part in enumerate(parts):
            fields = getattr(OmegaConf.get_type(node), "__dataclass_fields__", None) if isinstance(node, DictConfig) else None
            if fields is None:  # a free-form setting: anything below it is the user's
                break
            if part not in fields:
                at = "".join(f"{p}." for p in parts[:i])
                near = difflib.get_close_matches(part, list(fields), n=1)
                return (f"{o.input_line}: cms has no setting {at}{part}" + (f" (did you mean {at}{near[0]}?)" if near else "")
                        + "; `python -m cms.run --help` lists the groups, and conf/ every option")
            node = node._get_node(part)
    return None


def register() -> None:
    """Register the schema and the resolvers the YAML files use."""
    ConfigStore.instance().store(name="schema", node=RunConf)
    if not OmegaConf.has_resolver("cms_root"):
        OmegaConf.register_new_resolver("cms_root", lambda: str(ROOT))
    if not OmegaConf.has_resolver("cms_user_cache"):
        OmegaConf.register_new_resolver("cms_user_cache", user_cache)
    if not OmegaConf.has_resolver("cms_per_se_sample"):
        OmegaConf.register_new_resolver("cms_per_se_sample", per_se_sample)


def per_se_sample(steps: int, se_samples: int | None) -> int:
    """Fine-tuning steps that scale with the sampling budget, as the paper's (600 steps at 1 SE sample
    per question, 6,000 at 10): ``steps`` per SE sample; a budget in FLOPs (no SE samples) gets ``steps``."""
    return int(steps) * int(se_samples or 1)


def user_cache() -> str:
    """The per-user cache of models and samples: $XDG_CACHE_HOME/cms, else ~/.cache/cms."""
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cms")


register()

"""Check every input a run or grid needs before its first cell starts: dataset
files, model paths, unknown keys, the launcher. A grid with a missing file fails
once, in a second, with one message naming each cause and its fix, instead of
once per cell after minutes of hub retries; nothing is created.

``Preflight`` is a Hydra callback (``conf/config.yaml``): it expands a multirun's
overrides into its cells and checks each cell's config.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cms import budget, config, data, filtering, hub, models, sampling


new_folder: Path | None = None  # the top folder a multirun's sweep directory creates (removed when nothing could start)


class PreflightError(ValueError):
    """Inputs a run needs that are missing; the message names each and its fix."""


def _card_problem(key: str, card: dict) -> str | None:
    """What is wrong with loading a family card's weights here, if anything."""
    if card.get("tiny"):
        return None
    path = card.get("path")
    if not path:
        return f"{key}.path is not set: a hub id or a local HF model directory"
    if models.looks_local(path):
        if not (Path(path).expanduser() / "config.json").exists():
            return f"{key}.path={path}: no HF model directory there (no config.json); fix {key}.path"
        return None
    why = hub.unreachable()
    if why and not hub.cached(path):
        return (f"{key}.path={path} is a hub id, the hub is unreachable ({why}) and this machine's hub cache does not hold it: "
                f"set {key}.path to a local HF model directory")
    return None


def _api_problem(key: str, card: dict) -> str | None:
    """What is wrong with asking a card's API here: a key variable that is not set."""
    env = card["api"].get("key_env")
    if env and not os.environ.get(env):
        return f"{key} is asked through {card['api'].get('base_url')} with the key in ${env}, which is not set: export {env}=<your key>"
    return None


def problems(c: dict) -> list[str]:
    """Everything one cell's resolved config (a plain dict) needs and does not have."""
    out, family, ds = [], c["family"], c["dataset"]
    generators = {"sampled": {c["model"]["role"]}, "mix": {"wc", "se"}}.get(c["data"]["source"], set())
    roles = {c["setting"]["learner"]} | generators
    if c["judge"]["role"]:
        roles.add(c["judge"]["role"])
    hosted = sampling.hosted(c["sampler"])
    b = c["budget"]
    if generators:
        out.append(budget.unknown_size({r: None if family[r].get("api") and not family[r].get("params") else 1 for r in ("wc", "se")},
                                       b["match"], b["ratio"], b["flops_per_question"]))
    for role in generators:
        card = family[role]
        if card.get("api") and not hosted and not (card.get("path") or card.get("tiny")):
            out.append(f"family.{role} is a hosted model ({card['api']['base_url']}), which sampler={c['sampler']['backend']} cannot run: use sampler=openai")
        if hosted and not card.get("api"):
            out.append(f"sampler={c['sampler']['backend']} asks a model behind an API, and family.{role} ({card.get('name')}) has none: "
                       f"set family.{role}.api (family=local_api shows how), or use sampler=hf or vllm")
    for role in sorted(roles):
        card = family[role]
        if card.get("api") and role in generators | {c["judge"]["role"]}:
            out.append(_api_problem(f"family.{role}", card))
        if card.get("api") and role == c["setting"]["learner"] and not (card.get("path") or card.get("tiny")):
            out.append(f"setting={c['setting']['name']} fine-tunes family.{role}, a hosted model ({card['api']['base_url']}): "
                       f"give family.{role}.path (its weights), or choose setting=kd with a local family.student")
        elif not card.get("api") or role == c["setting"]["learner"]:
            out.append(_card_problem(f"family.{role}", card))
    if c["judge"]["model"]:
        card = c["judge"]["model"]
        out.append(_api_problem("judge.model", card) if card.get("api") else _card_problem("judge.model", card))
    for d in [ds] + [config.dataset_group(name) for name in c["evaluation"]["transfer"]]:
        out.append(_hooks_problem(d))
        if not d.get("generator"):
            splits = list(dict.fromkeys((d["train_split"], d["test_split"])))
            out.append(data.unavailable(c["paths"]["data_dir"], d["name"], splits, d["answer_format"], d.get("hub")))
    return [p for p in out if p]


def _hooks_problem(d: dict) -> str | None:
    """Why a function the dataset group names cannot be had (its generator, step checker, solution key)."""
    try:
        if d.get("generator"):
            data.function(d["generator"]["function"], "generator.function")
        filtering.hooks(d)
    except data.DataError as err:
        return str(err)
    return None


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys added with ``+key=value`` that no part of the schema reads (``+modle=wc``): the run would
    silently ignore them. Keys under free-form fields (``family.<role>.tiny``, ``.train``) are allowed."""
    out = []

    def walk(node: DictConfig, prefix: str) -> None:
        fields = getattr(OmegaConf.get_type(node), "__dataclass_fields__", None)
        if fields is None:  # a free-form dict
            return
        for key in node.keys():
            child = node._get_node(key)
            if key not in fields:
                out.append(f"{prefix}{key}")
            elif isinstance(child, DictConfig):
                walk(child, f"{prefix}{key}.")

    walk(cfg, "")
    return [k for k in out if k != "hydra"]


def _launcher_problem(cfg: DictConfig) -> str | None:
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        return ("hydra/launcher=submitit_slurm needs SLURM, and sbatch is not on this machine's PATH: run the command on "
                "the cluster's login node, or drop hydra/launcher=submitit_slurm to run the cells here")
    return None


def check(cfgs: list[DictConfig]) -> None:
    """Raise ``PreflightError`` naming every problem of ``cfgs`` (the cells of a run or grid), each once."""
    found = [_launcher_problem(cfgs[0])] if cfgs else []
    for cfg in cfgs:
        extra = unknown_keys(cfg)
        if extra:
            found.append(_unknown_message(extra))
            continue
        config.validate(cfg)
        found += problems({k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                           for k, v in cfg.items() if k != "hydra"})
    found = list(dict.fromkeys(p for p in found if p))
    if found:
        cells = f" ({len(cfgs)} cells checked, none started)" if len(cfgs) > 1 else ""
        raise PreflightError(f"cannot start{cells}: " + (found[0] if len(found) == 1 else "\n  - " + "\n  - ".join(found)))


def _unknown_message(keys: list[str]) -> str:
    import difflib

    schema, parts = OmegaConf.structured(config.RunConf), []
    for key in keys:
        head, _, leaf = key.rpartition(".")
        node = OmegaConf.select(schema, head) if head else schema
        near = difflib.get_close_matches(leaf, list(node.keys()) if isinstance(node, DictConfig) else [], n=1)
        parts.append(f"+{key} is not a cms setting" + (f" (did you mean {(head + '.') if head else ''}{near[0]}?)" if near else ""))
    return "; ".join(parts) + ": drop it (a '+' adds a key the run never reads); `python -m cms.run --help` lists the groups"


def cell_configs(config: DictConfig) -> list[DictConfig]:
    """The configs of the cells of a multirun whose composed (sweep) config is ``config``."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    loader = GlobalHydra.instance().config_loader()
    return [loader.load_sweep_config(config, list(cell)) for batch in batches for cell in batch]


class Preflight(Callback):
    """Checks a run's or a grid's inputs before anything starts; a problem ends the command with its message."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check([config])

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global new_folder
        sweep = Path(str(config.hydra.sweep.dir)).absolute()
        new_folder = None if sweep.exists() else next(p for p in [sweep, *sweep.parents] if p.parent.exists())
        self._check(cell_configs(config))

    @staticmethod
    def _check(cfgs: list[DictConfig]) -> None:
        try:
            check(cfgs)
        except (PreflightError, config.ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

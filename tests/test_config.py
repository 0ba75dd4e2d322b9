import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cms import config
from conftest import ROOT

CONF = ROOT / "conf"
NEEDS = {"budget=flops": ["budget.flops_per_question=1e15"]}
config.register()


def groups() -> dict[str, list[str]]:
    """Every group under conf/ (walked recursively) and its options."""
    found: dict[str, list[str]] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent == CONF:
            continue
        found.setdefault(str(path.parent.relative_to(CONF)), []).append(path.stem)
    return found


def compose_with(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [x for o in overrides for x in NEEDS.get(o, [])]
        return compose(config_name="config", overrides=list(overrides) + extra, return_hydra_config=hydra)


def test_groups_cover_the_design():
    g = groups()
    for group in ("model", "setting", "family", "budget", "dataset", "sampler", "finetune", "evaluation", "logger", "paths", "debug", "hydra/launcher"):
        assert group in g, group
    assert set(g["model"]) == {"wc", "se"} and set(g["setting"]) == {"kd", "self", "w2s"}
    assert {"gemma2", "tiny"} <= set(g["family"]) and {"gsm8k", "math"} <= set(g["dataset"])
    assert {"low", "high", "flops"} <= set(g["budget"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in groups().items() if not g.startswith("hydra") for o in opts])
def test_every_config_file_composes_and_resolves(group, option):
    cfg = compose_with([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=True)
    config.validate(cfg)


def test_every_valid_combination_composes():
    """Every (family, dataset, budget) combination, with model x setting, sampler, logger and
    debug cycled through alongside (they set independent keys), composes and validates."""
    g = groups()
    axes = [g["family"], g["dataset"], g["budget"]]
    others = itertools.cycle(itertools.product(g["model"], g["setting"], g["sampler"], g["logger"], [None, *g["debug"]]))
    count, seen = 0, set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for (family, dataset, budget), (model, setting, sampler, logger, debug) in zip(itertools.product(*axes), others):
            overrides = [f"model={model}", f"setting={setting}", f"family={family}", f"dataset={dataset}",
                         f"budget={budget}", f"sampler={sampler}", f"logger={logger}"] + ([f"debug={debug}"] if debug else [])
            overrides += [x for o in overrides for x in NEEDS.get(o, [])]
            cfg = compose(config_name="config", overrides=overrides)
            config.validate(cfg)
            assert cfg.model.role == model and cfg.setting.name == setting
            seen.add((model, setting))
            count += 1
    assert count == len(g["family"]) * len(g["dataset"]) * len(g["budget"])
    assert len(seen) == 6


def test_slurm_launcher_preset_reads_partition_from_environment(monkeypatch):
    monkeypatch.setenv("CMS_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("CMS_SLURM_GPUS", "4")
    cfg = compose_with(["hydra/launcher=submitit_slurm"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu-long" and launcher.gpus_per_node == 4
    local = compose_with(["hydra/launcher=submitit_local"], hydra=True)
    assert local.hydra.launcher._target_.endswith("LocalLauncher")


@pytest.mark.parametrize("override", ["dataset.num_shot=3", "family.wc.nmae=x", "finetune.lr=fast"])
def test_typos_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_with([override])


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(ConfigCompositionException, match="gemma2"):
        compose_with(["family=gemma3"])


def test_invalid_choice_names_the_fix():
    cfg = compose_with(["data.keep=some"])
    with pytest.raises(ValueError, match="data.keep='some' is not one of all, one"):
        config.validate(cfg)


def test_a_sampler_group_names_an_engine_that_exists_and_only_its_options():
    with pytest.raises(config.ConfigError, match="sampler._target_='cms.sampling.TGISampler' cannot be imported"):
        config.validate(compose_with(["sampler._target_=cms.sampling.TGISampler"]))
    with pytest.raises(config.ConfigError, match=r"sampler.max_row is not a setting of HFSampler \(did you mean sampler.max_rows\?\)"):
        config.validate(compose_with(["+sampler.max_row=3"]))
    with pytest.raises(config.ConfigError, match="sampler.gpu_memory_utilization is not a setting of OpenAISampler"):
        config.validate(compose_with(["sampler=openai", "+sampler.gpu_memory_utilization=0.5"]))
    with pytest.raises(config.ConfigError, match="judge.backend='tgi' is not a sampler group: use one of hf, openai, vllm"):
        config.validate(compose_with(["judge.backend=tgi"]))


def test_paper_finetune_takes_its_steps_from_the_budget_and_strategies_build():
    from cms import finetuning, models

    for budget, steps in (("low", 600), ("high", 6000)):
        cfg = compose_with(["finetune=paper", f"budget={budget}"])
        assert cfg.finetune.steps == steps and cfg.finetune.checkpoints == 10 and cfg.finetune.val_size == 500
    assert compose_with(["finetune=paper", "budget=high", "finetune.steps=100"]).finetune.steps == 100
    tiny = OmegaConf.to_container(OmegaConf.load(CONF / "family" / "student" / "tiny.yaml"))
    model = models.load_model(str(models.build_tiny(tiny, Path(__import__("tempfile").mkdtemp()) / "m")), device="cpu")
    fsdp = compose_with(["finetune=paper", "finetune/strategy=fsdp"]).finetune.strategy
    assert fsdp.devices == 8 and fsdp.activation_checkpointing
    built = finetuning._strategy(OmegaConf.to_container(fsdp), finetuning.decoder_layers(model))
    assert type(built).__name__ == "FSDPStrategy"
    assert {c.__name__ for c in built.kwargs["auto_wrap_policy"]._module_classes} == {"LlamaDecoderLayer"}
    # ranks other than 0 start on the meta device and get rank 0's weights when the model is sharded
    assert built.kwargs["sync_module_states"] and built.kwargs["param_init_fn"] is finetuning._materialize
    assert built.sharding_strategy.name == "FULL_SHARD" and built._activation_checkpointing_kwargs
    multi = compose_with(["finetune/strategy=multinode"]).finetune.strategy
    assert multi.num_nodes == 2 and multi.sharding == "HYBRID_SHARD"
    with pytest.raises(ValueError, match="finetune.strategy.name"):
        config.validate(compose_with(["finetune.strategy.name=deepspeed"]))


def test_toy_finetuning_steps_scale_with_the_sampling_budget():
    """The paper's rule (600 steps at budget=low, 6000 at high) for finetune=toy: 100 per SE sample."""
    steps = {o: compose_with(list(o)).finetune.steps for o in [(), ("budget=high",), ("budget.se_samples=3",), ("budget=number",), ("budget=flops",)]}
    assert steps == {(): 100, ("budget=high",): 1000, ("budget.se_samples=3",): 300, ("budget=number",): 1000, ("budget=flops",): 100}
    assert compose_with(["budget=high", "finetune.steps=50"]).finetune.steps == 50


def test_every_schema_key_is_read_somewhere():
    """A setting nothing reads does nothing (family.*.dtype, evaluation.batch_size and finetune.log_every
    once were such): every field of the schema is named in code outside the schema, or in the configs'
    interpolations."""
    import dataclasses
    import re

    code = [p for p in (ROOT / "cms").glob("*.py") if p.name != "config.py"] + list((ROOT / "hydra_plugins").rglob("*.py"))
    text = "\n".join(p.read_text() for p in code) + "\n".join(p.read_text() for p in CONF.rglob("*.yaml") if "${" in p.read_text())
    unread = []
    for cls in (obj for obj in vars(config).values() if dataclasses.is_dataclass(obj)):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else None):
                continue  # a group: its own fields are checked
            if not re.search(r"(?<![\w])" + re.escape(f.name) + r"(?![\w])", text):
                unread.append(f"{cls.__name__}.{f.name}")
    assert not unread, unread


def test_the_toy_families_span_size_ratios_3_9_27_with_the_same_se_and_student():
    from cms import budget, models

    cards = {}
    for family in ("toy", "toy9", "toy27"):
        c = OmegaConf.to_container(compose_with([f"family={family}"]), resolve=True)["family"]
        cards[family] = c
        params = {r: models.count_params(c[r]) for r in ("wc", "se")}
        assert budget.samples_per_question("wc", params) == {"toy": 3, "toy9": 9, "toy27": 27}[family]
        assert c["wc"]["train"] == cards["toy"]["wc"]["train"]  # the same recipe
    assert cards["toy9"]["se"] == cards["toy27"]["se"] == cards["toy"]["se"] and cards["toy27"]["student"] == cards["toy"]["student"]
    assert len({cards[f]["wc"]["name"] for f in cards}) == 3  # three WC models, cached apart


def test_the_student_group_swaps_the_toy_student():
    from cms import models

    small, large = (OmegaConf.to_container(compose_with(o), resolve=True)["family"]["student"] for o in (["family/student=toy_small"], []))
    assert (small["name"], large["name"]) == ("toy-student", "toy-student-large")
    assert models.count_params(small) < models.count_params(large) < models.count_params(
        OmegaConf.to_container(compose_with([]), resolve=True)["family"]["wc"])


def test_the_mix_share_is_a_setting_of_mixed_cells_only():
    """A cell of another source computes the same whatever data.mix_se says, and cells written before the
    key existed stay reusable: it is in the fingerprint only with data.source=mix."""
    plain = config.cell_fingerprint(OmegaConf.to_container(compose_with(["data.mix_se=0.5"]), resolve=True))
    mixed = config.cell_fingerprint(OmegaConf.to_container(compose_with(["data.source=mix", "data.mix_se=0.5"]), resolve=True))
    assert "data.mix_se" not in plain and mixed["data.mix_se"] == 0.5

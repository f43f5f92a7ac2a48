"""Config sections: validation names the field path and the allowed values, roles are declared
once, old flat names are refused with their new path, presets come from one table."""

import dataclasses
import json

import pytest

from dblocks_jax import PRESETS, Config, get_config
from dblocks_jax.config import parse_overrides
from dblocks_jax.presets import describe_presets
from dblocks_jax.engine import settings

BAD = [
    ({"model.num_layers": 6, "model.num_blocks": 4}, "model.num_layers", "multiple of model.num_blocks"),
    ({"model.num_blocks": 0}, "model.num_blocks", ">= 1"),
    ({"partition.overlap": -0.01}, "partition.overlap", r"\[0, 0.5\)"),
    ({"partition.overlap": 0.5}, "partition.overlap", r"\[0, 0.5\)"),
    ({"noise.sigma_min": 80.0, "noise.sigma_max": 80.0}, "noise.sigma_min", "sigma_min < sigma_max"),
    ({"noise.sigma_min": 100.0}, "noise.sigma_min", "sigma_min < sigma_max"),
    ({"data.batch_size": 0}, "data.batch_size", ">= 1"),
    ({"schedule.name": "round_robin"}, "schedule.name", "interleaved, sequential"),
    ({"partition.strategy": "linear"}, "partition.strategy", "equiprobable, uniform_log"),
    ({"sampling.solver": "rk4"}, "sampling.solver", "euler, heun, edm_stochastic"),
    ({"data.dataset": "imagenet"}, "data.dataset", "shapes"),
    ({"model.width": 100, "model.num_heads": 3}, "model.width", "multiple of model.num_heads"),
    ({"model.patch_size": 3}, "model.patch_size", "divisor of data.image_size"),
    ({"optim.steps": 2.5}, "optim.steps", "int"),
    ({"optim.learning_rate": float("inf")}, "optim.learning_rate", "a finite number"),
    ({"task": "translation"}, "task", "image_generation"),
    ({"data.dataset": "pydoc"}, "data.dataset", "an image dataset for task image_generation"),
    ({"text.vocabulary": "words"}, "text.vocabulary", "text8, bytes"),
    ({"text.seq_len": 1}, "text.seq_len", ">= 2"),
    ({"text.holdout": 1.0}, "text.holdout", r"\(0, 1\)"),
    ({"model.positions": "alibi"}, "model.positions", "learned, rope"),
    ({"task": "masked_lm"}, "model.family", "transformer"),
    ({"task": "masked_lm", "model.family": "transformer"}, "data.dataset", "a text source for task masked_lm"),
    ({"task": "autoregressive_lm", "model.family": "transformer", "data.dataset": "pydoc", "ar.bridge": "mean"},
     "ar.bridge", "soft, normalised, hard"),
    ({"task": "autoregressive_lm", "model.family": "transformer", "data.dataset": "pydoc", "ar.top_p": 0.0},
     "ar.top_p", r"a number in \(0, 1\]"),
]


@pytest.mark.parametrize("overrides,path,allowed", BAD)
def test_bad_config_names_field_path_and_allowed_values(overrides, path, allowed):
    with pytest.raises(ValueError, match=rf"{path}=.*allowed: .*{allowed}"):
        get_config("shapes", overrides)


def test_unknown_preset_and_field_list_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown config preset 'cifar'.*allowed: cifar100_vit, cifar10_dit_s, "
                                         "cifar10_vit, digits_vit, lm1b_ar, lm1b_recurrent, patterns_vit, pydoc_ar, "
                                         "pydoc_md4, pydoc_recurrent, shapes, text8_md4"):
        get_config("cifar")
    with pytest.raises(ValueError, match=r"unknown config field.*model\.num_block\b.*allowed: .*model\.num_blocks"):
        get_config("shapes", {"model.num_block": 3})
    with pytest.raises(ValueError, match="unknown config field.*depth"):
        parse_overrides(["depth=3"])


@pytest.mark.parametrize("flat,path", [("num_blocks", "model.num_blocks"), ("width", "model.width"),
                                       ("sample_steps", "sampling.steps"), ("schedule", "schedule.name"),
                                       ("overlap", "partition.overlap"), ("steps", "optim.steps")])
def test_an_old_flat_name_is_refused_with_its_new_path(flat, path):
    with pytest.raises(ValueError, match=rf"unknown config field\(s\) {flat} \(now {path}\)"):
        parse_overrides([f"{flat}=2"])


def test_overrides_are_parsed_with_the_field_types():
    parsed = parse_overrides(["model.num_blocks=2", "partition.overlap=0.1", "model.class_conditional=false",
                              "data.dataset=shapes"])
    assert parsed == {"model.num_blocks": 2, "partition.overlap": 0.1, "model.class_conditional": False,
                      "data.dataset": "shapes"}
    with pytest.raises(ValueError, match="model.num_blocks must be of type int"):
        parse_overrides(["model.num_blocks=two"])
    with pytest.raises(ValueError, match="optim.learning_rate must be a finite number"):
        parse_overrides(["optim.learning_rate=nan"])
    with pytest.raises(ValueError, match="section.field=value"):
        parse_overrides(["model.num_blocks"])


def test_configs_are_frozen_and_round_trip():
    config = get_config("shapes", {"model.num_blocks": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.num_blocks = 3
    again = Config.from_dict(json.loads(config.to_json()))
    assert again == config and again.model.num_blocks == 2


def test_a_flat_config_of_version_0_1_is_refused_naming_its_writer():
    with pytest.raises(ValueError, match=r"run/config.json was written by dblocks-jax 0.1 .*cannot read"):
        Config.from_dict({"num_blocks": 4, "width": 96}, source="run/config.json")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        Config.from_dict([1, 2], source="x")


def test_every_field_declares_one_role_and_consumers_read_them():
    roles = {path: field.metadata.get("role") for path, (_, field) in settings.leaves(Config()).items()}
    assert set(roles.values()) == set(settings.ROLES), roles
    # What the roles mean for the consumers: resume, assembly, sweeps.
    assert roles["model.width"] == roles["partition.overlap"] == roles["noise.p_mean"] == settings.ASSEMBLY
    assert roles["optim.learning_rate"] == roles["run.seed"] == settings.IDENTITY
    assert roles["sampling.steps"] == settings.SAMPLING and roles["run.log_every"] == settings.FREE
    a = get_config("shapes")
    b = a.override({"optim.learning_rate": 1e-3, "sampling.steps": 8, "run.log_every": 7, "model.width": 64})
    assert settings.differences(a, b, settings.TRAINING_ROLES) == ["model.width: 96 -> 64",
                                                                   "optim.learning_rate: 0.002 -> 0.001"]
    assert settings.differences(a, b, [settings.ASSEMBLY]) == ["model.width: 96 -> 64"]


# The paper's DiT-S/2 CIFAR-10 setting (arXiv 2506.14202, Sec. 4.1 and App. B; DiT-S/2 of Peebles & Xie
# 2023): the one place these published values are typed.
PAPER_DIT_S = {"model.num_layers": 12, "model.width": 384, "model.num_heads": 6, "model.patch_size": 2,
               "data.batch_size": 512, "optim.learning_rate": 1e-4, "model.num_blocks": 3,
               "partition.overlap": 0.05, "sampling.steps": 50, "sampling.solver": "euler",
               "sampling.guidance": 2.0, "model.label_dropout": 0.1, "data.image_size": 32,
               "data.dataset": "tfds:cifar10"}


PAPER_MD4 = {"model.num_layers": 12, "model.width": 768, "model.num_heads": 12, "text.seq_len": 256,
             "data.batch_size": 256, "optim.learning_rate": 3e-4, "optim.weight_decay": 0.03,
             "optim.warmup_steps": 2000, "model.num_blocks": 3, "partition.overlap": 0.05, "text.vocabulary": "text8"}


def test_the_text8_preset_is_the_papers_md4_setting():
    values = {p: v for p, (v, _) in settings.leaves(PRESETS["text8_md4"].config).items()}
    assert {p: values[p] for p in PAPER_MD4} == PAPER_MD4


def test_presets_are_valid_and_the_paper_setting_is_exact():
    assert {"shapes", "cifar10_dit_s"} <= set(PRESETS)
    values = {p: v for p, (v, _) in settings.leaves(PRESETS["cifar10_dit_s"].config).items()}
    assert {p: values[p] for p in PAPER_DIT_S} == PAPER_DIT_S
    listing = describe_presets()
    assert listing.splitlines()[0] == "image_generation:"
    assert all(f"  {name}" in listing and preset.description in listing for name, preset in PRESETS.items())

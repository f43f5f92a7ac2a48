import dataclasses

import pytest

from dblocks_jax import PRESETS, Config, get_config
from dblocks_jax.config import parse_overrides

BAD = [
    (dict(num_layers=6, num_blocks=4), "num_layers", "multiple of num_blocks"),
    (dict(num_blocks=0), "num_blocks", ">= 1"),
    (dict(overlap=-0.01), "overlap", r"\[0, 0.5\)"),
    (dict(overlap=0.5), "overlap", r"\[0, 0.5\)"),
    (dict(sigma_min=80.0, sigma_max=80.0), "sigma_min", "sigma_min < sigma_max"),
    (dict(sigma_min=100.0), "sigma_min", "sigma_min < sigma_max"),
    (dict(batch_size=0), "batch_size", ">= 1"),
    (dict(schedule="round_robin"), "schedule", "interleaved, sequential"),
    (dict(partition="linear"), "partition", "equiprobable, uniform_log"),
    (dict(solver="rk4"), "solver", "euler, heun"),
    (dict(dataset="imagenet"), "dataset", "shapes"),
    (dict(width=100, num_heads=3), "width", "multiple of num_heads"),
    (dict(patch_size=3), "patch_size", "divisor of image_size"),
    (dict(steps=2.5), "steps", "int"),
]


@pytest.mark.parametrize("overrides,field,allowed", BAD)
def test_bad_config_names_field_and_allowed_values(overrides, field, allowed):
    with pytest.raises(ValueError, match=rf"{field}=.*allowed: .*{allowed}"):
        get_config("shapes", **overrides)


def test_unknown_preset_and_field_list_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown config preset 'cifar'.*allowed: cifar10_dit_s, shapes"):
        get_config("cifar")
    with pytest.raises(ValueError, match="unknown config field.*num_block.*allowed: .*num_blocks"):
        get_config("shapes", num_block=3)
    with pytest.raises(ValueError, match="unknown config field.*depth"):
        parse_overrides(["depth=3"])


def test_overrides_are_parsed_with_the_field_types():
    parsed = parse_overrides(["num_blocks=2", "overlap=0.1", "class_conditional=false", "dataset=shapes"])
    assert parsed == {"num_blocks": 2, "overlap": 0.1, "class_conditional": False, "dataset": "shapes"}
    with pytest.raises(ValueError, match="num_blocks must be of type int"):
        parse_overrides(["num_blocks=two"])
    with pytest.raises(ValueError, match="field=value"):
        parse_overrides(["num_blocks"])


def test_configs_are_frozen_and_round_trip():
    config = get_config("shapes", num_blocks=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_blocks = 3
    assert Config.from_dict(config.to_dict()) == config


def test_presets_are_valid_and_the_paper_setting_is_exact():
    assert {"shapes", "cifar10_dit_s"} <= set(PRESETS)
    paper = PRESETS["cifar10_dit_s"]
    assert (paper.num_layers, paper.width, paper.num_heads, paper.patch_size) == (12, 384, 6, 2)
    assert (paper.batch_size, paper.learning_rate, paper.num_blocks, paper.overlap) == (512, 1e-4, 3, 0.05)
    assert (paper.sample_steps, paper.solver, paper.guidance, paper.label_dropout) == (50, "euler", 2.0, 0.1)
    assert paper.dataset_info.channels == 3 and paper.image_size == 32

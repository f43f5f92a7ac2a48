"""Config: the common sections plus the run's task's own; validation names the field path and the
allowed values; a field of another task's section is refused naming its owner; roles are declared
once; old flat names are refused with their new path; presets come from the tasks; config files of
version 0.2 load with the other tasks' sections dropped."""

import dataclasses
import glob
import json
import os

import pytest

from dblocks_jax import PRESETS, Config, get_config
from dblocks_jax.config import config_class, make_config, parse_overrides
from dblocks_jax.engine import settings
from dblocks_jax.presets import describe_fields, describe_presets
from dblocks_jax.tasks import registry, task_class, task_names

COMMON = {"data", "model", "noise", "partition", "optim", "schedule", "sampling", "run"}
V0_2 = os.path.join(os.path.dirname(__file__), "data", "v0_2")

BAD = [
    ("shapes", {"model.num_layers": 6, "model.num_blocks": 4}, "model.num_layers", "multiple of model.num_blocks"),
    ("shapes", {"model.num_blocks": 0}, "model.num_blocks", ">= 1"),
    ("shapes", {"partition.overlap": -0.01}, "partition.overlap", r"\[0, 0.5\)"),
    ("shapes", {"partition.overlap": 0.5}, "partition.overlap", r"\[0, 0.5\)"),
    ("shapes", {"noise.sigma_min": 80.0, "noise.sigma_max": 80.0}, "noise.sigma_min", "sigma_min < sigma_max"),
    ("shapes", {"noise.sigma_min": 100.0}, "noise.sigma_min", "sigma_min < sigma_max"),
    ("shapes", {"data.batch_size": 0}, "data.batch_size", ">= 1"),
    ("shapes", {"schedule.name": "round_robin"}, "schedule.name", "interleaved, sequential"),
    ("shapes", {"partition.strategy": "linear"}, "partition.strategy", "equiprobable, uniform_log"),
    ("shapes", {"sampling.solver": "rk4"}, "sampling.solver", "euler, heun, edm_stochastic"),
    ("shapes", {"data.dataset": "imagenet"}, "data.dataset", "shapes"),
    ("shapes", {"model.width": 100, "model.num_heads": 3}, "model.width", "multiple of model.num_heads"),
    ("shapes", {"model.patch_size": 3}, "model.patch_size", "divisor of data.image_size"),
    ("shapes", {"optim.steps": 2.5}, "optim.steps", "int"),
    ("shapes", {"optim.learning_rate": float("inf")}, "optim.learning_rate", "a finite number"),
    ("shapes", {"task": "translation"}, "task", "image_generation"),
    ("shapes", {"data.dataset": "pydoc"}, "data.dataset", "an image dataset for task image_generation"),
    ("shapes", {"model.positions": "rope"}, "model.positions", "'learned', its default: task image_generation"),
    ("pydoc_md4", {"text.vocabulary": "words"}, "text.vocabulary", "text8, bytes"),
    ("pydoc_md4", {"text.seq_len": 1}, "text.seq_len", ">= 2"),
    ("pydoc_md4", {"text.holdout": 1.0}, "text.holdout", r"\(0, 1\)"),
    ("pydoc_md4", {"model.positions": "alibi"}, "model.positions", "learned, rope"),
    ("pydoc_md4", {"data.dataset": "shapes"}, "data.dataset", "a text source for task masked_lm"),
    ("shapes", {"task": "masked_lm"}, "data.dataset", "a text source for task masked_lm"),
    ("pydoc_ar", {"ar.bridge": "mean"}, "ar.bridge", "soft, normalised, hard"),
    ("pydoc_ar", {"generation.top_p": 0.0}, "generation.top_p", r"a number in \(0, 1\]"),
    ("pydoc_ar", {"ar.steps": 3}, "ar.steps", "an integer >= 4"),  # B = 4: every block called once
    ("digits_vit", {"classify.steps": 2}, "classify.steps", "an integer >= 3"),
    ("pydoc_recurrent", {"generation.gen_len": 60}, "generation.gen_len", "at most text.seq_len - generation"),
    ("pydoc_recurrent", {"recurrent.method": "huginn", "recurrent.mean_steps": 1e9}, "recurrent.mean_steps",
     r"a number in \[2, 1024\]"),  # once a silent hang: every step iterated the core ~1e9 times
    ("text8_md4", {"text.holdout": 0.5}, "text.holdout", "text8:text8.zip holds out its own test split"),
]


@pytest.mark.parametrize("preset,overrides,path,allowed", BAD)
def test_bad_config_names_field_path_and_allowed_values(preset, overrides, path, allowed):
    with pytest.raises(ValueError, match=rf"{path}=.*allowed: .*{allowed}"):
        get_config(preset, overrides)


def test_unknown_preset_and_field_list_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown config preset 'cifar'.*allowed: cifar100_vit, cifar10_dit_s, "
                                         "cifar10_vit, digits_vit, lm1b_ar, lm1b_recurrent, patterns_vit, pydoc_ar, "
                                         "pydoc_md4, pydoc_recurrent, shapes, text8_md4"):
        get_config("cifar")
    with pytest.raises(ValueError, match=r"unknown config field.*model\.num_block\b.*allowed: .*model\.num_blocks"):
        get_config("shapes", {"model.num_block": 3})
    with pytest.raises(ValueError, match="unknown config field.*depth"):
        parse_overrides(["depth=3"], config_class("image_generation"))


def _foreign_fields():
    """(task, a field of a section it does not own, the tasks that own it) for every such pair."""
    cases = []
    for name in task_names():
        own = {s._path for s in task_class(name).sections}
        for section, (cls, owners) in registry.section_owners().items():
            if section not in own:
                cases.append((name, f"{section}.{dataclasses.fields(cls)[0].name}", owners))
    return cases


@pytest.mark.parametrize("task,path,owners", _foreign_fields())
def test_a_field_of_another_tasks_section_is_refused_naming_its_owner(task, path, owners):
    cls = config_class(task)
    message = rf"{path} belongs to {', '.join(owners)}; this run is {task}"
    with pytest.raises(ValueError, match=message):
        parse_overrides([f"{path}=1"], cls)
    preset = next(p.name for p in PRESETS.values() if p.task == task)
    with pytest.raises(ValueError, match=message):
        get_config(preset, {path: 1})
    with pytest.raises(ValueError, match=message):
        get_config(preset).override({path: 1})


def test_each_task_config_holds_the_common_sections_and_its_own_only():
    for name in task_names():
        sections = {f.name for f in dataclasses.fields(config_class(name)) if f.name != "task"}
        assert sections == COMMON | {s._path for s in task_class(name).sections}, name
    preset = get_config("pydoc_ar")
    assert {k for k, v in preset.to_dict().items() if isinstance(v, dict)} == COMMON | {"text", "ar", "generation"}
    assert set(get_config("shapes").to_dict()) == COMMON | {"format", "task"}
    assert "family" not in get_config("shapes").to_dict()["model"]  # the task's: `dblocks list` shows it


def test_a_preset_may_switch_task_and_the_new_tasks_sections_start_at_their_defaults():
    config = get_config("shapes", {"task": "masked_lm", "data.dataset": "pydoc", "text.seq_len": 32})
    assert type(config) is config_class("masked_lm") and config.text.seq_len == 32 and config.text.vocabulary == "text8"
    assert config.model.width == get_config("shapes").model.width  # the common sections carry over


def test_a_common_field_the_task_never_reads_is_refused():
    with pytest.raises(ValueError, match=r"model.patch_size=4; allowed: 2, its default: task masked_lm does not"):
        get_config("pydoc_md4", {"model.patch_size": 4})
    with pytest.raises(ValueError, match=r"sampling.guidance=3.0; allowed: 2.0, its default: task recurrent_lm"):
        get_config("pydoc_recurrent", {"sampling.guidance": 3.0})


@pytest.mark.parametrize("flat,path", [("num_blocks", "model.num_blocks"), ("width", "model.width"),
                                       ("sample_steps", "sampling.steps"), ("schedule", "schedule.name"),
                                       ("overlap", "partition.overlap"), ("steps", "optim.steps")])
def test_an_old_flat_name_is_refused_with_its_new_path(flat, path):
    with pytest.raises(ValueError, match=rf"unknown config field\(s\) {flat} \(now {path}\)"):
        parse_overrides([f"{flat}=2"], config_class("image_generation"))


def test_model_family_is_refused_as_the_tasks_own():
    with pytest.raises(ValueError, match=r"model.family \(the network family is the task's: image_classification "
                                         r"builds vit\)"):
        get_config("digits_vit", {"model.family": "vit"})


def test_overrides_are_parsed_with_the_field_types():
    cls = config_class("image_generation")
    parsed = parse_overrides(["model.num_blocks=2", "partition.overlap=0.1", "model.class_conditional=false",
                              "data.dataset=shapes"], cls)
    assert parsed == {"model.num_blocks": 2, "partition.overlap": 0.1, "model.class_conditional": False,
                      "data.dataset": "shapes"}
    assert parse_overrides(["ar.mc_draws=3"], config_class("autoregressive_lm")) == {"ar.mc_draws": 3}
    with pytest.raises(ValueError, match="model.num_blocks must be of type int"):
        parse_overrides(["model.num_blocks=two"], cls)
    with pytest.raises(ValueError, match="optim.learning_rate must be a finite number"):
        parse_overrides(["optim.learning_rate=nan"], cls)
    with pytest.raises(ValueError, match="section.field=value"):
        parse_overrides(["model.num_blocks"], cls)


def test_configs_are_frozen_and_round_trip():
    for name in ("shapes", "digits_vit", "pydoc_ar", "pydoc_recurrent"):
        config = get_config(name, {"optim.steps": 3})
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.model.num_blocks = 3
        again = Config.from_dict(json.loads(config.to_json()))
        assert again == config and type(again) is type(config) and again.to_dict()["format"] == 3


def test_a_flat_config_of_version_0_1_is_refused_naming_its_writer():
    with pytest.raises(ValueError, match=r"run/config.json was written by dblocks-jax 0.1 .*cannot read"):
        Config.from_dict({"num_blocks": 4, "width": 96}, source="run/config.json")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        Config.from_dict([1, 2], source="x")
    with pytest.raises(ValueError, match=r"x: invalid config: task='nope'; allowed: image_generation"):
        Config.from_dict({"format": 3, "task": "nope"}, source="x")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(V0_2, "*.json"))))
def test_a_config_written_by_version_0_2_loads_without_the_other_tasks_sections(path, capsys):
    """The files were written by dblocks-jax 0.2 (every task's sections, model.family, the
    generation settings under `ar`): they load as the preset they came from, with a note."""
    with open(path) as f:
        stored = json.load(f)
    config = Config.from_dict(stored, source=path)
    preset = os.path.splitext(os.path.basename(path))[0]
    note = capsys.readouterr().err
    own = {s._path for s in type(config).task_class.sections}
    dropped = sorted({"ar", "classify", "recurrent", "text"} - own)
    assert f"note: {path} was written by dblocks-jax 0.2" in note
    assert f"dropped the sections {', '.join(dropped)}, which task {config.task} never reads" in note
    assert ("moved ar.temperature -> generation.temperature" in note) == ("generation" in own)
    assert "reset" not in note  # the committed files leave every unread field at its default
    moved = {k: v for k, v in stored["ar"].items() if k in ("temperature", "top_p", "prompt_len", "gen_len")}
    expected = get_config(preset, {f"generation.{k}": v for k, v in moved.items()} if "generation" in own else {})
    assert config == expected.override({"model.dtype": stored["model"]["dtype"]})
    if "generation" in own:  # the committed files set these away from the preset
        assert config.generation != get_config(preset).generation
    for section in own | COMMON:  # every value that stays was read, none reset
        for name, value in stored.get(section, {}).items():
            if name != "family" and not (section == "ar" and name in moved):
                assert getattr(getattr(config, section), name) == value, (section, name)


def test_every_field_declares_one_role_and_consumers_read_them():
    roles = {path: f.metadata.get("role") for name in task_names()
             for path, (_, f) in settings.defaults(config_class(name)).items()}
    assert set(roles.values()) == set(settings.ROLES), roles
    # What the roles mean for the consumers: resume, assembly, sweeps.
    assert roles["model.width"] == roles["partition.overlap"] == roles["noise.p_mean"] == settings.ASSEMBLY
    assert roles["optim.learning_rate"] == roles["run.seed"] == settings.IDENTITY
    assert roles["sampling.steps"] == roles["generation.gen_len"] == settings.SAMPLING
    assert roles["run.log_every"] == settings.FREE
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
    for preset in PRESETS.values():  # every preset builds its own task's config
        assert preset.config.task == preset.task and type(preset.config) is make_config(preset.task,
                                                                                        preset.overrides).__class__
    listing = describe_presets()
    assert listing.splitlines()[0].startswith("image_generation (dit): ")
    assert all(f"  {name}" in listing and preset.description in listing for name, preset in PRESETS.items())


def test_the_field_listing_groups_common_sections_and_each_tasks_own():
    listing = describe_fields()
    common, _, owned = listing.partition("\nclassify (tasks: image_classification):")
    assert "  model.width: int = 96 [assembly]" in common and "ar." not in common and "text." not in common
    assert "\ntext (tasks: masked_lm, autoregressive_lm, recurrent_lm):\n  text.vocabulary" in listing
    assert "\ngeneration (tasks: autoregressive_lm, recurrent_lm):\n  generation.temperature" in listing
    assert "  classify.objective" in listing and "recurrent.method" in owned


def test_a_config_file_with_another_tasks_section_is_refused_naming_the_file(tmp_path):
    from dblocks_jax import runs

    stored = {**get_config("shapes").to_dict(), "ar": {"bridge": "hard"}}
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=rf"{tmp_path}/config.json: invalid config: ar.bridge belongs to "
                                         r"autoregressive_lm; this run is image_generation"):
        runs.read_run_config(str(tmp_path))


def test_runs_of_version_0_2_assemble_on_the_fields_their_task_reads(tmp_path):
    """Two masked_lm runs written by 0.2 that differ only in a field of another task's section
    (recurrent.core, which masked_lm never read) agree; a field masked_lm reads still counts."""
    from dblocks_jax.engine import rundir

    with open(os.path.join(V0_2, "pydoc_md4.json")) as f:
        stored = json.load(f)
    for name, core, seq_len in (("a", 4, 64), ("b", 7, 64), ("c", 4, 32)):
        os.makedirs(tmp_path / name)
        changed = {"recurrent": {**stored["recurrent"], "core": core}, "text": {**stored["text"], "seq_len": seq_len}}
        (tmp_path / name / "config.json").write_text(json.dumps({**stored, **changed}))
    config = rundir.read_runs_config([str(tmp_path / "a"), str(tmp_path / "b")], Config)
    assert config == get_config("pydoc_md4")
    with pytest.raises(ValueError, match=r"model-defining fields disagree: text.seq_len: 64 in .* vs 32"):
        rundir.read_runs_config([str(tmp_path / "a"), str(tmp_path / "c")], Config)
    with open(os.path.join(V0_2, "digits_vit.json")) as f:
        (tmp_path / "vit").mkdir()
        (tmp_path / "vit" / "config.json").write_text(f.read())
    with pytest.raises(ValueError, match=r"runs of different tasks \(masked_lm, image_classification\)"):
        rundir.read_runs_config([str(tmp_path / "a"), str(tmp_path / "vit")], Config)


# A field the task never reads, off its default in a 0.2 config (0.2 let some through): reset, said.
UNREAD = [("digits_vit", {"sampling": {"steps": 10}, "model": {"label_dropout": 0.3}},
           "reset model.label_dropout=0.3, sampling.steps=10 to the default"),
          ("pydoc_md4", {"noise": {"sigma_max": 40.0}, "data": {"image_size": 8}},
           "reset data.image_size=8, noise.sigma_max=40.0 to the default")]


@pytest.mark.parametrize("preset,changed,said", UNREAD, ids=[u[0] for u in UNREAD])
def test_a_0_2_config_with_an_unread_field_off_its_default_loads_with_it_reset(preset, changed, said, capsys):
    with open(os.path.join(V0_2, f"{preset}.json")) as f:
        stored = json.load(f)
    for section, fields in changed.items():
        stored[section] = {**stored[section], **fields}
    config = Config.from_dict(stored, source=f"{preset}-unread")
    assert said in capsys.readouterr().err
    assert config == get_config(preset)  # back at the defaults; every field the task reads kept
    now = get_config(preset).to_dict()  # a config of this version with the same value is refused instead
    for section, fields in changed.items():
        now[section] = {**now[section], **fields}
    with pytest.raises(ValueError, match="its default: task"):
        Config.from_dict(now)

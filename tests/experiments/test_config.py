"""The config schema (experiments.config): every option of the run commands comes from one declaration, and
a change of that declaration changes the command line, the validation and the config classes alike."""

import dataclasses
import json

import click
import pytest
from click.testing import CliRunner

import cli
from experiments import config as C
from experiments.validate import TrainError

#: Options that belong to one command and to no run (where to write, overwrite, resume, how to print, how to
#: parallelise): everything else must come from the schema.
LOCAL = {"out", "force", "resume_dir", "quiet", "as_json", "jobs", "scheduler", "no_plot"}
#: command path -> its composition
COMMANDS = {("train",): C.TRAIN, ("sweep",): C.SWEEP, ("finite-sweep",): C.FINITE_SWEEP,
            ("finite-vs-infinite",): C.COMPARE, ("bench",): C.BENCH,
            **{("verify", name): comp for name, comp in C.VERIFY.items()}}


def _command(path):
    cmd = cli.cli
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_comes_from_the_schema(path):
    comp = COMMANDS[path]
    params = _command(path).params
    assert not LOCAL & set(C.BY_NAME)                       # a local flag never shadows a schema field
    stray = [p.name for p in params if p.name not in LOCAL and not isinstance(p, C.SchemaOption)]
    assert not stray, f"{' '.join(path)}: options not from the schema: {stray}"
    for p in params:
        if isinstance(p, C.SchemaOption):
            field = comp.by_name[p.name]
            assert p.field == field and field.name in C.BY_NAME
            assert p.opts == ["--" + field.name.replace("_", "-")]
            assert p.default == field.cli_value and p.help.startswith(field.help)
            if not field.rule.flag and field.rule.click_type is not None:
                assert p.type is field.rule.click_type
    # every command-line field of the composition is an option, in the order of the composition
    assert [p.name for p in params if isinstance(p, C.SchemaOption)] == [f.name for f in comp.fields if f.cli]


def test_the_config_classes_are_compositions_with_one_layers():
    for cls, comp in ((C.TrainConfig, C.TRAIN), (C.SweepConfig, C.FINITE_SWEEP), (C.CompareConfig, C.COMPARE)):
        assert [f.name for f in dataclasses.fields(cls)] == list(comp.names())
        assert {f.name: f.default for f in dataclasses.fields(cls)} == comp.defaults()
    assert C.TrainConfig.layers is C.SweepConfig.layers is C.ModelConfig.layers
    # the train and sweep commands make a TrainConfig from their options: each option is a field of it
    train_fields = {f.name for f in dataclasses.fields(C.TrainConfig)}
    assert {p.name for p in cli.train.params} - LOCAL <= train_fields
    assert {p.name for p in cli.sweep.params} - LOCAL - train_fields == {"widths", "seeds"}


def _tiny_command(comp):
    @click.command()
    @C.cli_options(comp)
    def cmd(**kw):
        click.echo(json.dumps({k: v for k, v in kw.items() if k in ("batch_size", "dampening")}))
    return cmd


def test_a_rule_changed_in_the_schema_changes_the_command_line_and_the_validation(monkeypatch):
    before = CliRunner().invoke(_tiny_command(C.TRAIN), ["--batch-size", "2"])
    assert before.exit_code == 0 and json.loads(before.output)["batch_size"] == 2
    C.TrainConfig(batch_size=2).check_fields(["batch_size"])
    stricter = dataclasses.replace(C.BY_NAME["batch_size"], rule=C.count(3), cli_default=4)
    monkeypatch.setitem(C.BY_NAME, "batch_size", stricter)
    comp = C.Composition("train", C.train_fields())
    res = CliRunner().invoke(_tiny_command(comp), ["--batch-size", "2"])
    assert res.exit_code == 2 and "2 is not in the range x>=3" in res.output
    assert json.loads(CliRunner().invoke(_tiny_command(comp), []).output)["batch_size"] == 4
    with pytest.raises(TrainError, match=r"^batch_size: expected an integer >= 3, got 2$"):
        comp.by_name["batch_size"].check(2)


def test_a_new_field_is_one_declaration(monkeypatch):
    """A field declared once joins TrainConfig, the train and sweep options, the checks and config.json."""
    dampening = C.Field("dampening", "optimiser", 0.0, rule=C.NON_NEGATIVE, help="Momentum dampening.")
    assert "dampening" not in C.BY_NAME
    monkeypatch.setattr(C, "FIELDS", C.FIELDS + (dampening,))
    monkeypatch.setitem(C.BY_NAME, "dampening", dampening)
    comp = C.Composition("train", C.train_fields())

    @C.composed(comp)
    class Config(C.TrainConfig):
        pass
    cfg = Config(dampening=0.9)
    cfg.validate()
    assert cfg.dampening == 0.9 and Config.from_json(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(TrainError, match="^dampening: expected a non-negative finite number"):
        Config(dampening=-1.0).validate()
    res = CliRunner().invoke(_tiny_command(comp), ["--dampening", "0.5"])
    assert res.exit_code == 0 and json.loads(res.output)["dampening"] == 0.5
    assert CliRunner().invoke(_tiny_command(comp), ["--dampening", "-1"]).exit_code == 2


def test_validation_is_the_rule_of_the_field():
    """The learning rate: one rule, refused the same way by the library and by the command line."""
    with pytest.raises(TrainError, match=r"^lr: expected a positive finite number, got -1.0$"):
        C.TrainConfig(lr=-1.0).validate()
    res = CliRunner().invoke(cli.cli, ["train", "--lr", "-1"])
    assert res.exit_code == 2 and "expected a positive finite number, got '-1'" in res.stderr
    for cls in (C.SweepConfig, C.CompareConfig):
        with pytest.raises(TrainError, match="^lr: expected a positive finite number"):
            cls(lr=0.0).validate()


def test_json_round_trip_and_legacy_defaults():
    cfg = C.TrainConfig(width="inf", w_std=(1.0, 0.5), lr_policy="per-width", lr=1.0)
    cfg.validate()
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    back = C.TrainConfig.from_json(saved)
    back.validate()
    assert json.loads(json.dumps(dataclasses.asdict(back))) == saved and back.layers() == cfg.layers()
    # a config saved before eval_subset and lr_scale existed: the values such runs had
    old = {k: v for k, v in saved.items() if k not in ("eval_subset", "lr_scale")}
    assert C.TrainConfig.from_json(old).eval_subset == "seed" and C.TrainConfig.from_json(old).lr_scale == "none"
    assert C.LEGACY_DEFAULTS == {"eval_subset": "seed", "lr_scale": "none", "lr_schedule": "constant",
                                 "momentum": 0.0, "nesterov": False}      # plain SGD before the optimiser options
    sweep = C.SweepConfig(widths="1,4,2")
    sweep.validate()
    assert sweep.as_json()["widths"] == [1, 2, 4]
    assert C.SweepConfig.from_json(sweep.as_json()).as_json() == sweep.as_json()


def test_applies_when_is_declared_on_the_fields():
    assert C.unused_options("mnist", "default", "fixed") == {
        "latent_dim": "it belongs to --dataset multi-index and manifold",
        "lr_fraction": "it belongs to --lr-policy per-width", "lr_probe_steps": "it belongs to --lr-policy per-width"}
    assert set(C.unused_options("manifold", "autoencoder", "per-width")) == {"dr", "lr"}
    assert C.OPTION_DEFAULTS == {"dr": 1, "latent_dim": 2, "lr_fraction": 0.5, "lr_probe_steps": 100}

"""Model specs: JSON round trips, validation, and ``--set`` edits."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from helpers import one_line

from genvae.core.compose import apply_sets, preset_spec
from genvae.core.errors import GenvaeError, OptionsError
from genvae.core.options import option_names, options_to_dict
from genvae.core.spec import SPEC_FORMAT, ComponentSpec, LossSpec, ModelSpec, TrainConfig


def via_json(spec: ModelSpec) -> ModelSpec:
    return ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))


def base_dict(**changes) -> dict:
    data = {
        "encoder": {"name": "fc", "options": {"hidden": [16]}},
        "transform": {"name": "fc", "options": {"latent_dim": 4}},
        "decoder": {"name": "fc", "options": {}},
        "losses": [{"name": "mse"}, {"name": "kl", "weight": 0.5}],
        "image_size": 16,
    }
    data.update(changes)
    return data


def base(**changes) -> ModelSpec:
    return ModelSpec.from_dict(base_dict(**changes))


# -- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_presets_round_trip_through_json(name):
    spec = preset_spec(name)
    assert spec.preset == name and spec.description
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert via_json(spec) == spec
    assert spec.to_dict()["format"] == SPEC_FORMAT


def _changed_train_values() -> dict:
    defaults = TrainConfig()
    values: dict[str, Any] = {
        "lr": 3e-4,
        "betas": [0.5, 0.99],
        "weight_decay": 1e-5,
        "batch_size": 17,
        "epochs": 3,
        "max_steps": 123,
        "phase_lr": {"discriminator": 1e-4},
        "lr_multipliers": {"transform.lstm": 0.125},
        "grad_clamp": {"transform.lstm": 5.0},
        "freeze": ["encoder"],
        "train_only": ["prior", "decoder.net"],
        "grad_clip_norm": 10.0,
        "lr_warmup": {"decoder": [[5, 0.1]]},
        "grad_norms": "on",
        "classifier": "clf",
        "class_samples": 200,
        "max_time": 60.0,
        "time_clock": "process",
        "lr_schedule": "cosine",
        "lr_step_epochs": 7,
        "lr_gamma": 0.1,
        "flip": True,
        "amp": "bf16",
        "channels_last": "on",
        "compile": True,
        "retain_graph": "always",
        "posterior_samples": 5,
        "loggers": ["tensorboard", "mlflow"],
        "seed": 42,
        "checkpoint_every": 99,
        "log_every": 3,
        "keep_checkpoints": 5,
        "schedule": [
            {"phase": "model", "branch": "posterior", "fresh": False},
            {"phase": "discriminator", "branch": "all", "fresh": True},
        ],
    }
    # every field, so a new TrainConfig field must be added here (and round trip) too
    assert set(values) == set(option_names(TrainConfig)), set(option_names(TrainConfig)) ^ set(values)
    changed = TrainConfig(**values)
    for name in values:
        assert getattr(changed, name) != getattr(defaults, name), name
    return values


def test_every_train_field_round_trips():
    values = _changed_train_values()
    spec = base(train=values, preset="custom", description="all changed", channels=1)
    assert via_json(spec) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert via_json(spec).train == TrainConfig(**values)
    assert options_to_dict(spec.train) == {k: v for k, v in values.items()}


def test_component_and_loss_options_round_trip():
    spec = base(
        encoder={"name": "conv", "options": {"width": 8, "activation": "elu"}},
        losses=[
            {"name": "gaussian", "weight": 2.0, "options": {"learn_variance": False}},
            {"name": "kl", "options": {"group_weights": [1.0]}},
        ],
    )
    again = via_json(spec)
    assert again == spec
    assert again.losses[0] == LossSpec("gaussian", 2.0, {"learn_variance": False})


def test_short_forms_are_accepted():
    spec = ModelSpec.from_dict({"encoder": "fc", "transform": "fc", "decoder": "fc", "losses": ["mse", "kl"]})
    assert spec.encoder == ComponentSpec("fc")
    assert spec.prior == ComponentSpec("normal")
    assert spec.losses == (LossSpec("mse"), LossSpec("kl"))
    assert spec.image_shape == (3, 32, 32)
    assert via_json(spec) == spec


def test_with_train_validates():
    spec = base()
    assert spec.with_train(lr=0.5).train.lr == 0.5
    assert spec.train.lr == TrainConfig().lr  # specs are values
    with pytest.raises(OptionsError, match="unknown option 'nope' for train"):
        spec.with_train(nope=1)


# -- validation ---------------------------------------------------------------------------------------------


def test_unknown_key():
    with pytest.raises(OptionsError) as info:
        ModelSpec.from_dict(base_dict(colour="red"), where="my.json")
    message = one_line(info)
    assert message.startswith("my.json: unknown key 'colour'; known keys: ")
    assert "encoder" in message and "train" in message


def test_missing_component():
    data = base_dict()
    del data["decoder"]
    with pytest.raises(OptionsError) as info:
        ModelSpec.from_dict(data)
    assert "missing 'decoder'" in one_line(info)


def test_unsupported_format():
    with pytest.raises(GenvaeError) as info:
        ModelSpec.from_dict(base_dict(format=SPEC_FORMAT + 1))
    assert f"spec format {SPEC_FORMAT + 1} is not supported" in one_line(info)


@pytest.mark.parametrize(
    "train, words",
    [
        ({"nope": 1}, ["unknown option 'nope' for train", "known options: lr"]),
        ({"lr": -1}, ["train option 'lr': expected a finite number > 0, got -1"]),
        ({"lr": "fast"}, ["train option 'lr': expected a finite number > 0, got 'fast'"]),
        ({"betas": [0.9]}, ["train option 'betas'", "two finite numbers in [0, 1)"]),
        ({"max_steps": 0}, ["train option 'max_steps': expected a positive integer"]),
        ({"lr_schedule": "linear"}, ["lr_schedule"]),
        ({"batch_size": 2.5}, ["train option 'batch_size': expected a positive integer, got 2.5"]),
        ({"phase_lr": 3}, ["mapping"]),
    ],
)
def test_bad_train_settings(train, words):
    with pytest.raises(OptionsError) as info:
        base(train=train)
    message = one_line(info)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    "changes, word",
    [
        ({"image_size": 0}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"losses": [{"name": "kl", "weight": "heavy"}]}, "heavy"),
        ({"encoder": {"options": {}}}, "name"),
    ],
)
def test_bad_spec_values(changes, word):
    with pytest.raises(OptionsError) as info:
        base(**changes)
    assert word in one_line(info)


def test_freeze_accepts_a_comma_string():
    assert base(train={"freeze": "encoder, transform"}).train.freeze == ("encoder", "transform")
    assert base(train={"train_only": "prior"}).train.train_only == ("prior",)


# -- --set ----------------------------------------------------------------------------------------------------


def test_set_edits():
    spec = base()
    edited = apply_sets(
        spec,
        [
            "encoder.hidden=[64,32]",
            "encoder.activation=elu",
            "encoder.batch_norm=true",
            "transform.latent_dim=8",
            "prior.scale=2",  # component options are checked at build time, not here
            "loss.kl.weight=0.25",
            "loss.mse.reduction=mean",
            "train.lr=0.01",
            'train.lr_multipliers={"transform": 0.5}',
            "train.max_steps=10",
            "train.freeze=encoder",
            "image_size=24",
            "channels=1",
        ],
    )
    assert edited.encoder.options == {"hidden": [64, 32], "activation": "elu", "batch_norm": True}
    assert edited.transform.options == {"latent_dim": 8}
    assert edited.prior.options == {"scale": 2}
    assert edited.losses == (LossSpec("mse", 1.0, {"reduction": "mean"}), LossSpec("kl", 0.25))
    assert edited.train.lr == 0.01
    assert edited.train.lr_multipliers == {"transform": 0.5}
    assert edited.train.max_steps == 10
    assert edited.train.freeze == ("encoder",)
    assert (edited.image_size, edited.channels) == (24, 1)
    # the original is untouched
    assert spec == base()
    assert via_json(edited) == edited


def test_set_nothing_is_identity():
    spec = base()
    assert apply_sets(spec, []) == spec


def test_later_sets_win():
    assert apply_sets(base(), ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2


@pytest.mark.parametrize(
    "item, words",
    [
        ("encoder.width", ["--set 'encoder.width'", "expected kind.option=value"]),
        ("=3", ["expected kind.option=value"]),
        ("colour.red=1", ["unknown target 'colour.red'", "loss.NAME.X", "train.X"]),
        ("encoder=fc", ["unknown target 'encoder'"]),
        ("encoder.a.b=1", ["unknown target 'encoder.a.b'"]),
        ("loss.kl=1", ["unknown target 'loss.kl'"]),
        ("loss.adv.weight=1", ["the model has no loss 'adv'", "its losses: mse, kl"]),
        ("loss.kl.weight=heavy", ["--set 'loss.kl.weight=heavy'", "must be a number"]),
        ("loss.kl.weight=[1,2]", ["must be a number"]),
        ("train.nope=1", ["unknown option 'nope' for train"]),
        ("train.lr=fast", ["train option 'lr': expected a finite number > 0, got 'fast'"]),
        ("image_size=0", ["image_size"]),
        ("channels=4", ["channels"]),
    ],
)
def test_bad_sets(item, words):
    with pytest.raises(OptionsError) as info:
        apply_sets(base(), [item])
    message = one_line(info)
    for word in words:
        assert word in message, message


def test_spec_is_frozen():
    spec = base()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.image_size = 8  # type: ignore[misc]  # the assignment the test expects refused

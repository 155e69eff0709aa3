"""Option errors are one clear line: the component, the option, what is accepted, and a short echo of the value."""

from __future__ import annotations

import math

import pytest

from genvae.core.compose import compose_spec
from genvae.core.errors import GenvaeError, OptionsError, UnknownNameError, one_line, shorten
from genvae.core.layers import ACTIVATIONS
from genvae.core.model import build_model
from genvae.core.options import options_from_dict
from genvae.core.registry import KIND_NAMES, get_registry
from genvae.core.spec import ModelSpec, TrainConfig

LIMIT = 300
HUGE = 10_000


def check_line(message: str) -> str:
    assert "\n" not in message, message
    assert len(message) <= LIMIT, (len(message), message[:400])
    assert "Attribute(" not in message, message  # no attrs internals
    assert "<class" not in message and "<function" not in message, message
    return message


def refusal(*sets: str, error: type[Exception] = OptionsError, **kwargs) -> str:
    """The message with which ``genvae build --preset cvae --set ...`` refuses."""
    with pytest.raises(error) as info:
        build_model(compose_spec(preset=kwargs.pop("preset", "cvae"), sets=list(sets), **kwargs))
    return check_line(str(info.value))


# -- invalid values name the component, the option and what is accepted -------------------------------------------


@pytest.mark.parametrize(
    "item, words",
    [
        ("encoder.width=abc", ["encoder 'conv' option 'width'", "expected a positive integer", "got 'abc'"]),
        ("encoder.width=0", ["encoder 'conv' option 'width'", "expected a positive integer", "got 0"]),
        ("encoder.width=2.5", ["encoder 'conv' option 'width'", "expected a positive integer", "got 2.5"]),
        ("encoder.depth=[1,2]", ["encoder 'conv' option 'depth'", "expected a positive integer", "got [1, 2]"]),
        ("decoder.batch_norm=maybe", ["decoder 'conv' option 'batch_norm'", "expected true or false", "got 'maybe'"]),
        ("transform.latent_channels=-3", ["latent transform 'conv' option 'latent_channels'", "positive integer"]),
        ("train.lr=nan", ["train option 'lr'", "expected a finite number > 0", "got 'nan'"]),
        ("train.lr=NaN", ["train option 'lr'", "expected a finite number > 0", "got nan"]),
        ("train.lr=inf", ["train option 'lr'", "expected a finite number > 0", "got 'inf'"]),
        ("train.lr=-Infinity", ["train option 'lr'", "expected a finite number > 0", "got -inf"]),
        ("train.lr=0", ["train option 'lr'", "expected a finite number > 0", "got 0"]),
        ("train.lr=-1", ["train option 'lr'", "expected a finite number > 0", "got -1"]),
        ("train.lr=fast", ["train option 'lr'", "expected a finite number > 0", "got 'fast'"]),
        ("train.lr_gamma=nan", ["train option 'lr_gamma'", "expected a finite number > 0"]),
        ("train.weight_decay=-1", ["train option 'weight_decay'", "expected a finite number >= 0", "got -1"]),
        ("train.weight_decay=inf", ["train option 'weight_decay'", "expected a finite number >= 0"]),
        ("train.grad_clip_norm=inf", ["train option 'grad_clip_norm'", "finite number > 0 or none"]),
        ("train.grad_clip_norm=NaN", ["train option 'grad_clip_norm'", "finite number > 0 or none"]),
        ("train.betas=[0.9]", ["train option 'betas'", "expected two finite numbers in [0, 1)"]),
        ("train.betas=[0.9, 1.5]", ["train option 'betas'", "expected two finite numbers in [0, 1)"]),
        ("train.betas=[0.9, NaN]", ["train option 'betas'", "expected two finite numbers in [0, 1)"]),
        ("train.betas=[-0.1, 0.9]", ["train option 'betas'", "expected two finite numbers in [0, 1)"]),
        ("train.batch_size=2.5", ["train option 'batch_size'", "expected a positive integer", "got 2.5"]),
        ("train.max_steps=0", ["train option 'max_steps'", "expected a positive integer or none", "got 0"]),
        ("train.phase_lr=3", ["train option 'phase_lr'", "mapping of module name to finite number", "got 3"]),
        ('train.phase_lr={"discriminator": Infinity}', ["train option 'phase_lr'", "finite number"]),
        ('train.lr_multipliers={"encoder": NaN}', ["train option 'lr_multipliers'", "finite number"]),
        ('train.grad_clamp={"transform": -Infinity}', ["train option 'grad_clamp'", "finite number"]),
        ("train.flip=perhaps", ["train option 'flip'", "expected true or false", "got 'perhaps'"]),
        ("loss.kl.group_weights=[1, NaN]", ["loss 'kl' option 'group_weights'", "finite number"]),
        ("loss.kl.group_weights=a,b", ["loss 'kl' option 'group_weights'", "finite number", "got 'a,b'"]),
        ("loss.mse.reduction=median", ["loss 'mse' option 'reduction'", "expected one of sum, mean", "'median'"]),
    ],
)
def test_invalid_value_names_component_option_and_expectation(item, words):
    message = refusal(item)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("item", ["loss.kl.weight=nan", "loss.kl.weight=NaN", "loss.kl.weight=-Infinity"])
def test_non_finite_loss_weight(item):
    message = refusal(item)
    assert "loss 'kl'" in message and "weight" in message and "finite number" in message, message


def test_cross_field_check_falls_back_to_a_clean_line():
    message = refusal("transform.kernel=2")
    assert message == "invalid options for latent transform 'conv': kernel must be odd, got 2"


# -- choices ---------------------------------------------------------------------------------------------------


def test_choice_option_lists_the_choices():
    message = refusal("encoder.activation=nope")
    assert message.startswith("encoder 'conv' option 'activation': expected one of ")
    for choice in ACTIVATIONS:
        assert choice in message, message
    assert message.endswith("got 'nope'")
    assert "must be in" not in message  # attrs' own wording, with a tuple repr


def test_train_choice_and_spec_choice_are_clean():
    message = refusal("train.lr_schedule=linear")
    assert message == "train option 'lr_schedule': expected one of constant, step, cosine, got 'linear'"
    message = refusal("channels=2")
    assert "'channels'" in message and "one of 1, 3" in message and "got 2" in message, message


def test_direct_construction_of_a_choice_does_not_leak_attrs_internals():
    with pytest.raises(ValueError) as info:
        TrainConfig(lr_schedule="linear")
    message = str(info.value)
    assert message == "lr_schedule must be one of constant, step, cosine, got 'linear'"
    check_line(message)


# -- non-finite, zero and negative learning rates -----------------------------------------------------------------


@pytest.mark.parametrize("lr", [math.nan, math.inf, -math.inf, 0, 0.0, -1, -1e-3])
def test_train_config_refuses_bad_lr(lr):
    with pytest.raises(ValueError, match=r"\blr\b") as info:
        TrainConfig(lr=lr)
    check_line(str(info.value))
    with pytest.raises(OptionsError) as refused:
        options_from_dict(TrainConfig, {"lr": lr}, "train")
    message = check_line(str(refused.value))
    assert message.startswith("train option 'lr': expected a finite number > 0, got ")


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"lr_gamma": math.nan}, "lr_gamma"),
        ({"lr_gamma": math.inf}, "lr_gamma"),
        ({"weight_decay": math.nan}, "weight_decay"),
        ({"weight_decay": -math.inf}, "weight_decay"),
        ({"betas": (0.9, math.nan)}, "betas"),
        ({"betas": (0.9, math.inf)}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"grad_clip_norm": math.inf}, "grad_clip_norm"),
        ({"grad_clip_norm": math.nan}, "grad_clip_norm"),
        ({"phase_lr": {"discriminator": math.nan}}, "phase_lr"),
        ({"lr_multipliers": {"encoder": math.inf}}, "lr_multipliers"),
        ({"grad_clamp": {"transform": -math.inf}}, "grad_clamp"),
    ],
)
def test_train_config_refuses_non_finite_numbers(changes, name):
    with pytest.raises(ValueError):
        TrainConfig(**changes)
    with pytest.raises(OptionsError) as info:
        options_from_dict(TrainConfig, changes, "train")
    assert f"train option '{name}'" in check_line(str(info.value))


def test_finite_train_values_still_pass():
    config = TrainConfig(
        lr=3e-4,
        betas=(0.0, 0.999),
        weight_decay=0,
        lr_gamma=0.1,
        grad_clip_norm=1.0,
        phase_lr={"discriminator": 1e-4},
        lr_multipliers={"transform": 0.125},
        max_steps=10,
    )
    assert config.lr == 3e-4 and config.betas == (0.0, 0.999) and config.max_steps == 10
    assert options_from_dict(TrainConfig, {"betas": "0.5,0.9", "max_steps": "none"}, "train").betas == (0.5, 0.9)


# -- plugin options --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, name, options, words",
    [
        (
            "transform",
            "cr-lstm",
            {"lr_multiplier": "nan"},
            ["latent transform 'cr-lstm' option 'lr_multiplier'", "finite number > 0 or none"],
        ),
        ("transform", "cr-lstm", {"forget_bias": "inf"}, ["latent transform 'cr-lstm' option 'forget_bias'", "finite"]),
        ("encoder", "cr-lstm", {"slope": -1}, ["encoder 'cr-lstm' option 'slope'", "finite number >= 0"]),
        ("loss", "adv", {"mix": "0.5,0.5"}, ["loss 'adv' option 'mix'", "three fractions", "summing to 1"]),
        ("loss", "adv", {"widths": [64, 0]}, ["loss 'adv' option 'widths'", "positive channel counts"]),
        ("loss", "adv", {"beta": "nan"}, ["loss 'adv' option 'beta'", "finite number >= 0"]),
        ("loss", "mi", {"kappa": float("inf")}, ["loss 'mi' option 'kappa'", "finite number >= 0"]),
        ("loss", "mi", {"target": "w"}, ["loss 'mi' option 'target'", "one of auto, u, z", "got 'w'"]),
        ("loss", "gaussian", {"init_logvar": "nan"}, ["loss 'gaussian' option 'init_logvar'", "finite number"]),
        (
            "loss",
            "pyramid-mse",
            {"level_weights": [1, float("inf")]},
            ["loss 'pyramid-mse' option 'level_weights'", "finite"],
        ),
        ("encoder", "laplacian", {"kernel": "gauss"}, ["encoder 'laplacian' option 'kernel'", "binomial", "bilinear"]),
        ("encoder", "fc", {"hidden": [8, 0]}, ["encoder 'fc'", "hidden"]),
        ("prior", "m-net", {"hidden": "a"}, ["prior 'm-net' option 'hidden'", "integer"]),
    ],
)
def test_plugin_option_errors(kind, name, options, words):
    cls = get_registry().component(kind, name)
    with pytest.raises(OptionsError) as info:
        options_from_dict(cls.Options, options, f"{KIND_NAMES[kind]} '{name}'")
    message = check_line(str(info.value))
    for word in words:
        assert word in message, message


# -- long values are not echoed whole -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        "encoder.width=" + "9" * HUGE,
        "encoder.width=" + "[" * HUGE,
        "encoder.activation=" + "x" * HUGE,
        "train.lr=" + "a" * HUGE,
        "train.betas=" + ",".join(["0.5"] * HUGE),
        "encoder." + "w" * HUGE + "=1",
        "train." + "w" * HUGE + "=1",
        "loss.kl.group_weights=" + "b" * HUGE,
    ],
)
def test_a_huge_value_is_not_echoed_whole(item):
    message = refusal(item)  # at most LIMIT chars
    assert "..." in message, message  # the echo is cut, visibly


def test_a_huge_component_name_is_shortened():
    message = refusal(error=UnknownNameError, encoder="q" * HUGE)
    assert message.startswith("unknown encoder 'qqq") and "..." in message


def test_a_huge_spec_key_is_shortened():
    data = {**compose_spec(preset="cvae").to_dict(), "k" * HUGE: 1}
    with pytest.raises(OptionsError) as info:
        ModelSpec.from_dict(data, where="my.json")
    assert check_line(str(info.value)).startswith("my.json: unknown key 'kkk")


def test_a_long_known_list_is_shortened():
    known = [f"name-{i:03d}" for i in range(50)]
    message = check_line(str(UnknownNameError("preset", "zzz", known)))
    assert "and 30 more" in message and "name-000" in message and "name-049" not in message


# -- did you mean ------------------------------------------------------------------------------------------------


def test_unknown_option_suggests_the_close_one():
    message = refusal("encoder.widht=16")
    assert message.startswith("unknown option 'widht' for encoder 'conv'; did you mean 'width'? known options: width")


def test_unknown_train_option_suggests_and_stays_short():
    message = refusal("train.lr_schdule=step")
    assert message.startswith("unknown option 'lr_schdule' for train; did you mean 'lr_schedule'? known options: lr")


def test_unknown_spec_key_suggests_the_close_one():
    data = {**compose_spec(preset="cvae").to_dict(), "encodr": {"name": "conv"}}
    with pytest.raises(OptionsError) as info:
        ModelSpec.from_dict(data, where="my.json")
    message = check_line(str(info.value))
    assert message.startswith("my.json: unknown key 'encodr'; did you mean 'encoder'? known keys: ")


def test_no_suggestion_without_a_close_name():
    message = refusal("encoder.zzzzzz=1")
    assert "did you mean" not in message and "known options: width" in message


# -- spec-level values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"encoder": {"options": {}}}, ["'encoder'", "component name"]),
        ({"encoder": {"name": "conv", "options": [1]}}, ["'encoder'", "options must be a mapping"]),
        ({"losses": [{"name": "kl", "weight": "heavy"}]}, ["loss 'kl'", "weight", "finite number", "'heavy'"]),
        ({"losses": 5}, ["'losses'", "list of losses"]),
        ({"image_size": "big"}, ["'image_size'", "positive integer", "'big'"]),
    ],
)
def test_bad_spec_values_are_one_line(changes, words):
    data = {**compose_spec(preset="cvae").to_dict(), **changes}
    with pytest.raises(GenvaeError) as info:
        ModelSpec.from_dict(data, where="my.json")
    message = check_line(str(info.value))
    assert message.startswith("my.json: ")
    for word in words:
        assert word in message, message


# -- the helpers --------------------------------------------------------------------------------------------------


def test_shorten():
    assert shorten("abc") == "'abc'"
    assert shorten(2.5) == "2.5"
    assert shorten([1, 2]) == "[1, 2]"
    long = shorten("x" * HUGE)
    assert len(long) == 60 and long.endswith("...") and long.startswith("'xxx")
    assert len(shorten("x" * HUGE, limit=20)) == 20
    assert "\n" not in shorten("a\nb" * 10)
    assert len(shorten(10**HUGE)) <= 60  # repr() of such an int raises


def test_one_line():
    assert one_line("a\n  b\tc ") == "a b c"
    cut = one_line("word " * 1000)
    assert len(cut) == 400 and cut.endswith("...")
    assert len(one_line("y" * 1000, limit=50)) == 50

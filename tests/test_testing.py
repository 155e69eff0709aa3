"""The conformance kit ``genvae.testing`` itself: every check catches the fault it is there for.

Each faulty component below is a correct one (which passes ``check_component``) with exactly one
fault, registered through :func:`genvae.testing.plugin_registry`; the check meant for that fault
must raise AssertionError with a message naming the component and the fault. (Over 500 lines on purpose:
one faulty component per check, each a few lines of the class it breaks.)
"""

from __future__ import annotations

import inspect
import math
import random
import re
import time

import attrs
import pytest
import torch
from torch import nn

import genvae.testing
from genvae.core.components import Component, Decoder, Encoder, Loss
from genvae.core.hookspecs import hookimpl
from genvae.core.options import int_tuple, option, positive_int, to_int
from genvae.testing import (
    check_branches,
    check_component,
    check_determinism,
    check_gradients,
    check_options_roundtrip,
    check_sensitivity,
    check_serialisation,
    check_shapes,
    plugin_registry,
)

FEATURES = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


class Plugin:
    """A test plugin registering the given component classes under their kinds' hooks."""

    def __init__(self, *components: type[Component]):
        self.components = components

    def _register(self, kind, register):
        for cls in self.components:
            if cls.kind == kind:
                register(cls)

    @hookimpl
    def genvae_register_encoders(self, register):
        self._register("encoder", register)

    @hookimpl
    def genvae_register_decoders(self, register):
        self._register("decoder", register)

    @hookimpl
    def genvae_register_losses(self, register):
        self._register("loss", register)


def registry_with(*components: type):
    return plugin_registry(Plugin(*components))


def fault(label: str, *parts: str) -> str:
    """A regex: the message starts with the component's label and then names every part, in order."""
    return "^" + re.escape(label) + "".join(".*" + re.escape(p) for p in parts)


# -- correct components (the positive control and the base of every faulty one) ----------------------


@attrs.frozen
class WidthOptions:
    width: int = option(FEATURES, "size of the feature vector", positive_int, to_int)


class GoodEncoder(Encoder):
    """Flattened image -> one linear layer -> a feature vector."""

    name = "good"
    Options = WidthOptions

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.net = nn.Linear(math.prod(ctx.image_shape), options.width)
        self.output_shape = (options.width,)

    def forward(self, x, fwd=None):
        return torch.relu(self.net(x.flatten(1)))


class GoodDecoder(Decoder):
    """u (flattened) -> one linear layer -> image logits."""

    name = "good"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.image_shape = ctx.image_shape
        self.net = nn.Linear(math.prod(ctx.transform.output_shape), math.prod(ctx.image_shape))

    def forward(self, u, fwd=None):
        return self.net(u.flatten(1)).view(-1, *self.image_shape)


class GoodLoss(Loss):
    """Mean absolute error between the image and its reconstruction."""

    name = "good"

    def forward(self, fwd, phase):
        return {"l1": self.weight * (fwd.x_hat - fwd.x).abs().mean()}


@pytest.mark.parametrize("cls", [GoodEncoder, GoodDecoder, GoodLoss], ids=lambda c: c.kind)
def test_a_correct_component_passes_every_check(cls):
    spec = check_component(cls.kind, "good", registry=registry_with(cls))
    if cls.kind == "loss":
        assert "good" in [s.name for s in spec.losses]
    else:
        assert spec.component(cls.kind).name == "good"


# -- check_shapes -----------------------------------------------------------------------------------------


class MisshapenEncoder(GoodEncoder):
    """Declares (16,) features but produces (2, 8): the numel matches, so only the shape is wrong."""

    name = "misshapen"

    def forward(self, x, fwd=None):
        return super().forward(x).view(-1, 2, FEATURES // 2)


class MisshapenInTrainingEncoder(GoodEncoder):
    """Produces its declared shape in eval mode (as the build's dry run sees it), not in training."""

    name = "misshapen-in-training"

    def forward(self, x, fwd=None):
        out = super().forward(x)
        return out.view(-1, 2, FEATURES // 2) if self.training else out


def test_shapes_catches_features_that_differ_from_output_shape():
    registry = registry_with(MisshapenEncoder)
    with pytest.raises(
        AssertionError,
        match=fault("encoder 'misshapen'", "does not build", "declares features [16]", "produces [2, 8]"),
    ):
        check_shapes("encoder", "misshapen", registry=registry)


def test_shapes_catches_wrong_features_in_train_mode_only():
    registry = registry_with(MisshapenInTrainingEncoder)
    with pytest.raises(
        AssertionError,
        match=fault("encoder 'misshapen-in-training'", "features (train mode)", "shape [4, 2, 8], expected [4, 16]"),
    ):
        check_shapes("encoder", "misshapen-in-training", registry=registry)


# -- check_gradients --------------------------------------------------------------------------------------


class UnusedParameterDecoder(GoodDecoder):
    """Has a layer that forward never uses, so it never receives a gradient."""

    name = "unused-parameter"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.spare = nn.Linear(4, 4)


class DetachedParameterDecoder(GoodDecoder):
    """Uses its output bias only through .detach(), cutting it off from every loss."""

    name = "detached-parameter"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.shift = nn.Parameter(torch.zeros(ctx.image_shape))

    def forward(self, u, fwd=None):
        return super().forward(u) + self.shift.detach()


@pytest.mark.parametrize(
    "cls, params",
    [(UnusedParameterDecoder, "spare.weight, spare.bias"), (DetachedParameterDecoder, "shift")],
    ids=["unused", "detached"],
)
def test_gradients_catches_a_decoder_parameter_without_gradient(cls, params):
    registry = registry_with(cls)
    with pytest.raises(AssertionError, match=fault(f"decoder '{cls.name}'", "parameters without a gradient", params)):
        check_gradients("decoder", cls.name, registry=registry)


class DetachedLoss(GoodLoss):
    """Computes its term from detached reconstructions: it reports a value but trains nothing."""

    name = "detached"

    def forward(self, fwd, phase):
        return {"l1": self.weight * (fwd.x_hat.detach() - fwd.x).abs().mean()}


class ZeroGradientLoss(GoodLoss):
    """Its term depends on the model only through a factor of zero."""

    name = "zero-gradient"

    def forward(self, fwd, phase):
        return {"l1": 0.0 * fwd.x_hat.sum()}


def test_gradients_catches_a_loss_computed_from_detached_tensors():
    registry = registry_with(DetachedLoss)
    with pytest.raises(AssertionError, match=fault("loss 'detached'", "terms carry no gradient", "detached")):
        check_gradients("loss", "detached", registry=registry)


def test_gradients_catches_a_loss_that_moves_no_parameter():
    registry = registry_with(ZeroGradientLoss)
    with pytest.raises(AssertionError, match=fault("loss 'zero-gradient'", "zero gradient to every parameter")):
        check_gradients("loss", "zero-gradient", registry=registry)


# -- check_sensitivity and check_branches -------------------------------------------------------------------


class SelfComparingLoss(GoodLoss):
    """A slip: the decoder's weights measured instead of the reconstruction. It has a gradient (the gradient check
    passes it) but never looks at an image."""

    name = "self-comparing"

    def forward(self, fwd, phase):
        return {"l1": self.weight * next(fwd.model.decoder.parameters()).abs().mean()}


class PriorReadingLoss(GoodLoss):
    """Reads the prior samples but declares only the posterior branch (the default)."""

    name = "prior-reading"

    def forward(self, fwd, phase):
        return {"l1": self.weight * (fwd.x_hat - fwd.x).abs().mean(), "p": fwd.prior_sample().x.pow(2).mean()}


class BranchBlindLoss(PriorReadingLoss):
    """Declares both branches but computes both terms whatever the update asks for."""

    name = "branch-blind"
    branches = ("posterior", "prior")


class BranchAwareLoss(PriorReadingLoss):
    """The same terms, each computed only on its branch."""

    name = "branch-aware"
    branches = ("posterior", "prior")

    def forward(self, fwd, phase):
        terms = {}
        if fwd.wants("posterior"):
            terms["l1"] = self.weight * (fwd.x_hat - fwd.x).abs().mean()
        if fwd.wants("prior"):
            terms["p"] = fwd.prior_sample().x.pow(2).mean()
        return terms


def test_sensitivity_catches_a_term_that_does_not_read_its_inputs():
    registry = registry_with(SelfComparingLoss)
    check_gradients("loss", "self-comparing", registry=registry)  # the gradient check alone lets it through
    with pytest.raises(
        AssertionError, match=fault("loss 'self-comparing'", "model: l1 is the same for two different batches")
    ):
        check_sensitivity("loss", "self-comparing", registry=registry)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (PriorReadingLoss, "on a posterior update take gradient from the prior samples; declare branches"),
        (BranchBlindLoss, "on a posterior update take gradient from the prior samples; compute them only when"),
    ],
)
def test_branches_catches_a_loss_that_ignores_the_update_branch(cls, message):
    registry = registry_with(cls)
    with pytest.raises(AssertionError, match=fault(f"loss '{cls.name}'", message)):
        check_branches("loss", cls.name, registry=registry)


def test_branches_passes_a_loss_that_asks_state_wants():
    check_component("loss", "branch-aware", registry=registry_with(BranchAwareLoss))


# -- check_determinism ------------------------------------------------------------------------------------


class PythonRandomInitEncoder(GoodEncoder):
    """Perturbs its init with Python's global random module, which the seed does not cover."""

    name = "python-random"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        with torch.no_grad():
            self.net.bias.add_(random.gauss(0.0, 1.0))


class NumpyRandomInitEncoder(GoodEncoder):
    """Initialises its bias from an unseeded numpy generator."""

    name = "numpy-random"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        import numpy as np  # not a genvae dependency: the test using this class skips without it

        bias = np.random.default_rng().normal(size=options.width)
        with torch.no_grad():
            self.net.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


class ClockSeededInitEncoder(GoodEncoder):
    """Initialises its weights from a torch.Generator seeded by the clock."""

    name = "clock-seeded"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        g = torch.Generator().manual_seed(time.perf_counter_ns())
        with torch.no_grad():
            self.net.weight.normal_(0.0, 0.02, generator=g)


class PythonRandomForwardEncoder(GoodEncoder):
    """Deterministic weights, but adds noise from Python's random module in forward."""

    name = "python-random-forward"

    def forward(self, x, fwd=None):
        return super().forward(x) + random.random()


@pytest.mark.parametrize(
    "cls, parameter",
    [
        (PythonRandomInitEncoder, "encoder.net.bias"),
        (NumpyRandomInitEncoder, "encoder.net.bias"),
        (ClockSeededInitEncoder, "encoder.net.weight"),
    ],
    ids=["python-random", "numpy", "clock-seeded-generator"],
)
def test_determinism_catches_an_init_outside_the_torch_seed(cls, parameter):
    if cls is NumpyRandomInitEncoder:
        pytest.importorskip("numpy")
    registry = registry_with(cls)
    with pytest.raises(
        AssertionError,
        match=fault(f"encoder '{cls.name}'", "two builds under seed 0", f"state_dict['{parameter}']", "values differ"),
    ):
        check_determinism("encoder", cls.name, registry=registry)


def test_determinism_catches_a_forward_outside_the_torch_seed():
    registry = registry_with(PythonRandomForwardEncoder)
    with pytest.raises(
        AssertionError, match=fault("encoder 'python-random-forward'", "same input and torch seed", "values differ")
    ):
        check_determinism("encoder", "python-random-forward", registry=registry)


# -- check_options_roundtrip ------------------------------------------------------------------------------


@attrs.frozen
class HalfDocumentedOptions:
    width: int = option(FEATURES, "size of the feature vector", positive_int, to_int)
    depth: int = attrs.field(default=1)  # a plain attrs field: no help at all
    scale: float = option(1.0)  # option() without its help text


@attrs.define
class MutableOptions:
    width: int = option(FEATURES, "size of the feature vector", positive_int, to_int)


@attrs.frozen
class TupleWithoutConverterOptions:
    sizes: tuple[int, ...] = option((FEATURES,), "layer sizes (no converter: JSON gives back a list)")


@attrs.frozen
class TupleWithConverterOptions:
    sizes: tuple[int, ...] = option((FEATURES,), "layer sizes", converter=int_tuple)


def _encoder_with(options_cls: type, name: str) -> type:
    return type(
        f"Encoder_{name}",
        (GoodEncoder,),
        {"__doc__": "An encoder with faulty options.", "name": name, "Options": options_cls},
    )


def test_options_catch_a_field_without_help_text():
    registry = registry_with(_encoder_with(HalfDocumentedOptions, "no-help"))
    with pytest.raises(AssertionError, match=fault("encoder 'no-help'", "options without a help text: depth, scale")):
        check_options_roundtrip("encoder", "no-help", registry=registry)


def test_options_catch_a_mutable_options_class():
    registry = registry_with(_encoder_with(MutableOptions, "mutable"))
    with pytest.raises(AssertionError, match=fault("encoder 'mutable'", "must be frozen")):
        check_options_roundtrip("encoder", "mutable", registry=registry)


def test_options_catch_a_value_that_does_not_survive_json():
    registry = registry_with(
        _encoder_with(TupleWithoutConverterOptions, "tuple"), _encoder_with(TupleWithConverterOptions, "tuple-ok")
    )
    with pytest.raises(AssertionError, match=fault("encoder 'tuple'", "do not survive a JSON round trip")):
        check_options_roundtrip("encoder", "tuple", registry=registry)
    check_options_roundtrip("encoder", "tuple-ok", registry=registry)  # the converter is the fix


# -- check_serialisation ----------------------------------------------------------------------------------


class AttributeTensorEncoder(GoodEncoder):
    """Keeps a random offset in a plain tensor attribute, which save_model does not write."""

    name = "attribute-tensor"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.offset = torch.randn(options.width)

    def forward(self, x, fwd=None):
        return super().forward(x) + self.offset


class NonPersistentBufferEncoder(GoodEncoder):
    """Keeps a random offset in a non-persistent buffer, which is left out of state_dict too."""

    name = "non-persistent-buffer"

    def __init__(self, options, ctx):
        super().__init__(options, ctx)
        self.register_buffer("offset", torch.randn(options.width), persistent=False)

    def forward(self, x, fwd=None):
        return super().forward(x) + self.offset


@pytest.mark.parametrize("cls", [AttributeTensorEncoder, NonPersistentBufferEncoder], ids=lambda c: c.name)
def test_serialisation_catches_state_kept_outside_state_dict(cls):
    registry = registry_with(cls)
    with pytest.raises(
        AssertionError, match=fault(f"encoder '{cls.name}'", "after save/load", "posterior mean: values differ")
    ):
        check_serialisation("encoder", cls.name, registry=registry)
    # the state_dict itself round-trips: only comparing outputs finds this fault
    check_determinism("encoder", cls.name, registry=registry)


# -- the kit's own manners: the caller's RNG, crashes inside the model ------------------------------------


def test_serialisation_catches_state_outside_state_dict_whatever_the_callers_seed():
    registry = registry_with(AttributeTensorEncoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the check's own seed
        with pytest.raises(AssertionError, match=fault("encoder 'attribute-tensor'", "after save/load")):
            check_serialisation("encoder", "attribute-tensor", registry=registry)


@pytest.mark.parametrize(
    "check",
    [
        "check_registered",
        "check_options_roundtrip",
        "check_shapes",
        "check_serialisation",
        "check_gradients",
        "check_determinism",
        "check_spec_roundtrip",
        "check_sensitivity",
        "check_branches",
        "check_component",
    ],
)
def test_no_check_changes_the_callers_torch_rng_state(check):
    registry = registry_with(GoodEncoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        before = torch.get_rng_state()
        getattr(genvae.testing, check)("encoder", "good", registry=registry)
        assert torch.equal(before, torch.get_rng_state())


class MisnumberedInTrainingEncoder(GoodEncoder):
    """Produces 8 features instead of 16, only in train mode (the build's eval-mode dry run passes)."""

    name = "misnumbered-in-training"

    def forward(self, x, fwd=None):
        out = super().forward(x)
        return out[:, : FEATURES // 2] if self.training else out


def test_shapes_reports_a_train_mode_crash_as_an_assertion_naming_the_component():
    registry = registry_with(MisnumberedInTrainingEncoder)
    with pytest.raises(AssertionError, match=fault("encoder 'misnumbered-in-training'")):
        check_shapes("encoder", "misnumbered-in-training", registry=registry)


def test_every_check_takes_the_one_signature():
    checks = [getattr(genvae.testing, name) for name in genvae.testing.__all__ if name.startswith("check_")]
    assert len(checks) == len(genvae.testing.CHECKS) + 1  # and check_component
    for check in checks:
        params = list(inspect.signature(check).parameters)
        assert params[:6] == ["kind", "name", "options", "spec", "registry", "seed"], check.__name__


def test_a_given_spec_must_hold_the_component_and_its_options_are_the_ones_checked():
    registry = registry_with(GoodEncoder, _encoder_with(MutableOptions, "mutable"))
    spec = genvae.testing.tiny_spec("encoder", "good", registry=registry)
    with pytest.raises(AssertionError, match="^the given spec does not contain encoder 'mutable'$"):
        check_options_roundtrip("encoder", "mutable", spec=spec, registry=registry)
    with pytest.raises(AssertionError, match=fault("encoder 'good'", "the options under test are refused")):
        check_options_roundtrip("encoder", "good", {"no_such_option": 1}, registry=registry)
    check_options_roundtrip("encoder", "good", {"no_such_option": 1}, spec=spec, registry=registry)  # the spec's


def test_invoke_cli_runs_plugin_commands_as_genvae_does(tmp_path):
    """The built-in plugins' commands (here cr-lstm's draw) are there, and errors come back as one line."""
    from genvae.core.checkpoint import save_model
    from genvae.core.model import build_model
    from genvae.testing import invoke_cli, tiny_spec

    save_model(build_model(tiny_spec("transform", "cr-lstm")), tmp_path / "m")
    result = invoke_cli(["draw", tmp_path / "m", "-n", "2", "-o", tmp_path / "draw.png"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "draw.png").is_file()
    bad = invoke_cli(["draw", tmp_path / "nowhere", "-o", tmp_path / "x.png"])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1 and "Error:" in bad.output


# -- partners come from the registry, with their own test options --------------------------------------------


class SmallOwnEncoder(GoodEncoder):
    """A third-party encoder with counterparts and small test options: a plain vector family of its own."""

    name = "own"
    counterparts = {"transform": "own", "decoder": "own"}
    test_options = {"width": 4}


class OwnDecoder(GoodDecoder):
    """The family's decoder."""

    name = "own"


class OwnTransformPlugin:
    @hookimpl
    def genvae_register_transforms(self, register):
        from genvae.plugins.fc import FCLatent

        class OwnLatent(FCLatent):
            """The family's latent (fc's, under another name)."""

            name = "own"
            test_options = {"latent_dim": 3}

        register(OwnLatent)


def test_a_partner_gets_the_test_options_it_declares():
    from genvae.testing import tiny_spec

    registry = plugin_registry(Plugin(SmallOwnEncoder, OwnDecoder), OwnTransformPlugin())
    spec = tiny_spec("loss", "mse", registry=registry, encoder="own")
    assert spec.encoder.name == "own" and dict(spec.encoder.options) == {"width": 4}
    # the built-in families come first, whatever else is installed
    assert tiny_spec("loss", "mse", registry=registry).encoder.name == "conv"


def test_without_built_ins_the_kit_finds_a_third_party_family():
    from genvae.testing import tiny_spec

    registry = plugin_registry(
        "genvae.plugins.normal",
        "genvae.plugins.mse",
        "genvae.plugins.kl",
        Plugin(SmallOwnEncoder, OwnDecoder, GoodLoss),
        OwnTransformPlugin(),
        builtin=False,
    )
    spec = tiny_spec("loss", "good", registry=registry)
    assert (spec.encoder.name, spec.transform.name, spec.decoder.name) == ("own", "own", "own")
    assert dict(spec.transform.options) == {"latent_dim": 3}
    check_component("loss", "good", registry=registry)


def test_without_any_family_the_kit_says_so():
    from genvae.testing import tiny_spec

    registry = plugin_registry(
        "genvae.plugins.normal", "genvae.plugins.mse", "genvae.plugins.kl", Plugin(GoodLoss), builtin=False
    )
    with pytest.raises(AssertionError, match="no partners to test it among"):
        tiny_spec("loss", "good", registry=registry)

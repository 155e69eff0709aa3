"""The five component kinds and the objects that flow between them.

One training step of a composed model is a walk through these classes (docs/architecture.md):

    x --Encoder--> features --LatentTransform.posterior--> q(z|x) --rsample--> z
    z --LatentTransform.generate--> u --Decoder--> output --(its output space)--> x_hat
    Prior(pass) --> p(z | context)        Loss(pass, phase) --> named terms

A :class:`ForwardPass` records everything one forward computed, so losses read what they need and
components that depend on each other (an M-network prior re-encoding the coarser level) can do so
without the engine knowing about them.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import attrs
import torch
from torch import Tensor, nn

from genvae.core.errors import BuildError
from genvae.core.options import NoOptions
from genvae.core.precision import FLOAT32, Precision, to_float32

if TYPE_CHECKING:
    from genvae.core.capabilities import FakeFeatures, PyramidPass
    from genvae.core.model import GenerativeModel

Shape = tuple[int, ...]
#: a component's options: the attrs class it names as ``Options`` (``class ConvEncoder(Encoder[ConvOptions])``)
OptionsT = TypeVar("OptionsT")


@attrs.frozen
class LatentLayout:
    """The latent's per-sample shape and its groups (channel blocks / time steps, pyramid levels).

    Groups are contiguous runs of the flattened latent, in order; a plain latent has one group.
    Per-group weights (KL per time step, lambda per level) are expressed against these groups.
    """

    shape: Shape
    group_sizes: tuple[int, ...] = attrs.field(default=())
    group_label: str = "group"

    def __attrs_post_init__(self):
        if not self.group_sizes:
            object.__setattr__(self, "group_sizes", (self.numel,))
        if sum(self.group_sizes) != self.numel:
            raise BuildError(
                f"latent groups {list(self.group_sizes)} do not cover the latent of shape {list(self.shape)}"
            )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    def element_weights(self, group_weights: Sequence[float]) -> Tensor:
        """A (numel,) tensor giving every latent element its group's weight."""
        if len(group_weights) != self.num_groups:
            raise BuildError(f"{len(group_weights)} weights given for {self.num_groups} latent {self.group_label}s")
        return torch.repeat_interleave(
            torch.tensor(list(group_weights), dtype=torch.float32), torch.tensor(self.group_sizes)
        )

    def group_mask(self, groups, device=None) -> Tensor:
        """A bool tensor of the latent's shape, True on the elements of the given groups."""
        flat = torch.zeros(self.numel, dtype=torch.bool, device=device)
        starts = [0]
        for size in self.group_sizes:
            starts.append(starts[-1] + size)
        for g in groups:
            if not 0 <= g < self.num_groups:
                raise ValueError(f"{self.group_label} {g} does not exist; the latent has {self.num_groups}")
            flat[starts[g] : starts[g + 1]] = True
        return flat.view(self.shape)

    def per_group(self, values: Tensor) -> Tensor:
        """Sum (B, *shape) values within each group: (B, G)."""
        flat = values.flatten(1)
        if self.num_groups == 1:
            return flat.sum(1, keepdim=True)
        return torch.stack([part.sum(1) for part in flat.split(list(self.group_sizes), dim=1)], dim=1)


LOG_2PI = math.log(2 * math.pi)


class Gaussian:
    """A diagonal Gaussian with mean and log-variance tensors of the latent's shape (batch first)."""

    __slots__ = ("mean", "logvar", "standard")

    def __init__(self, mean: Tensor, logvar: Tensor, standard: bool = False):
        # float32 even when a network under autocast made them: the KL and log-densities are computed in float32
        self.mean = to_float32(mean)
        self.logvar = to_float32(logvar)
        self.standard = standard  # N(0, I): KL takes the short closed form

    @classmethod
    def standard_like(cls, other: Gaussian) -> Gaussian:
        zeros = torch.zeros_like(other.mean)
        return cls(zeros, zeros, standard=True)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, k: int | None = None) -> Tensor:
        """A reparameterised sample, z = mean + std * eps, differentiable in mean and logvar; ``k`` draws at once
        are (k, *mean.shape)."""
        # randn, not randn_like: the same draws whatever the memory layout (channels-last keeps it)
        shape = self.mean.shape if k is None else (k, *self.mean.shape)
        return self.mean + self.std * torch.randn(shape, dtype=self.mean.dtype, device=self.mean.device)

    def sample(self, k: int | None = None) -> Tensor:
        """Like :meth:`rsample`, without gradient."""
        with torch.no_grad():
            return self.rsample(k)

    def kl(self, prior: Gaussian) -> Tensor:
        """Elementwise KL(self || prior), same shape as the mean."""
        if prior.standard:
            return 0.5 * (torch.exp(self.logvar) + self.mean.pow(2) - 1.0 - self.logvar)
        return 0.5 * (
            prior.logvar
            - self.logvar
            + (torch.exp(self.logvar) + (self.mean - prior.mean).pow(2)) * torch.exp(-prior.logvar)
            - 1.0
        )

    def detach(self) -> Gaussian:
        return Gaussian(self.mean.detach(), self.logvar.detach(), self.standard)

    def log_density(self, z: Tensor) -> Tensor:
        """Elementwise log density of z (broadcast against the mean: same shape, or with leading sample dims)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean).pow(2) * torch.exp(-self.logvar))

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z) per image: the log density summed over the latent, (batch,) for z of the mean's shape, or
        (k, batch) for k draws (k, batch, *latent). The one interface every latent distribution has (a mixture
        prior's, a flow posterior's), so a loss never branches on the kind."""
        event = self.mean.dim() - 1
        density = self.log_density(z)
        return density.flatten(density.dim() - event).sum(-1) if event else density

    def __getitem__(self, rows) -> Gaussian:
        """The rows ``rows`` of the batch (a slice or index tensor), as a Gaussian."""
        return Gaussian(self.mean[rows], self.logvar[rows], self.standard)


class PriorSample:
    """One batch of the prior branch: z ~ p(z), u and x = decoder(u), with gradient; ``extras`` is scratch
    that belongs to this batch (dropped with it when an update asks for fresh samples)."""

    __slots__ = ("z", "u", "x", "extras")

    def __init__(self, z: Tensor, u: Tensor, x: Tensor):
        self.z, self.u, self.x = z, u, x
        self.extras: dict[str, Any] = {}

    def __iter__(self):
        return iter((self.z, self.u, self.x))


T = TypeVar("T")


@runtime_checkable
class LatentDistribution(Protocol):
    """What every distribution over the latent offers (a Gaussian, a mixture prior, a flow posterior): the log
    density per image. A prior's ``forward`` returns one; closed-form KL is an optimisation a loss may take when
    both sides are :class:`Gaussian`."""

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over the latent: (batch,) for z (batch, *latent), (k, batch) for (k, batch, *latent)."""
        ...


class PassField(Generic[T]):
    """A typed key for data a plugin hands to others through the pass: ``FLOW = PassField[FlowData]("flow")``,
    then ``fwd[FLOW] = FlowData(...)`` in one component and ``fwd.get(FLOW)`` (a ``FlowData`` or None) in
    another. A third-party capability gets its own field this way, typed, without the engine knowing it."""

    __slots__ = ("name", "doc")

    def __init__(self, name: str, doc: str = ""):
        self.name, self.doc = name, doc

    def __repr__(self) -> str:
        return f"PassField({self.name!r})"


class MultiSample:
    """k posterior draws per image, run through the latent transform and the decoder as one (k*B) batch (so batch
    norms see one batch), shaped (k, B, ...): what a multi-sample bound (IWAE) reads. ``log_q`` is log q(z|x) of
    each draw (with a flow: the base density less the log-determinant)."""

    __slots__ = ("k", "z0", "z", "log_q", "decoder_output", "x_hat")

    def __init__(self, k: int, z0: Tensor, z: Tensor, log_q: Tensor, decoder_output: Tensor, x_hat: Tensor):
        self.k, self.z0, self.z, self.log_q = k, z0, z, log_q
        self.decoder_output, self.x_hat = decoder_output, x_hat


class FlowPosterior:
    """q(z|x) of a latent transform with a flow: z = f(z0), z0 ~ the base Gaussian. Its ``mean`` is the flow of the
    base mean, the point commands use where a Gaussian gives its mean; ``rsample_with_log_prob`` gives samples
    with their log density (the density at an arbitrary z would need the flow's inverse)."""

    def __init__(self, base: Gaussian, transform: LatentTransform):
        self.base, self.transform = base, transform

    @property
    def mean(self) -> Tensor:
        return self.transform.flow(self.base.mean)[0]

    def rsample(self, k: int | None = None) -> Tensor:
        return self.rsample_with_log_prob(k)[0]

    def rsample_with_log_prob(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """(z, log q(z|x)): (batch, *latent) and (batch,), or with k draws (k, batch, *latent) and (k, batch).
        A deterministic transform (``stochastic = False``) maps the base mean, every draw the same."""
        if self.transform.stochastic:
            z0 = self.base.rsample(k)
        else:
            z0 = self.base.mean if k is None else self.base.mean.expand(k, *self.base.mean.shape)
        flat = z0 if k is None else z0.flatten(0, 1)
        z, log_det = self.transform.flow(flat)
        log_q = self.base.log_prob(z0)
        if log_det is not None:
            log_q = log_q - (log_det if k is None else log_det.view(k, -1))
        return (z if k is None else z.view(z0.shape)), log_q

    def log_prob(self, z: Tensor) -> Tensor:
        raise BuildError(
            f"latent transform '{self.transform.name}' is a flow: its posterior's density is known at its own "
            "samples (rsample_with_log_prob), not at any z"
        )


class ForwardPass:
    """Everything one forward pass computed; losses and context-dependent priors read from it.

    What components hand to each other beyond the common fields is typed: a plugin declares a
    :class:`PassField` and stores under it (``fwd[FIELD] = value``, ``fwd.get(FIELD)``); the built-in
    capabilities' fields are attributes, ``pyramid`` (a Laplacian pyramid's bands, by level) and ``fake_features``
    (a discriminator trunk's features of the fakes, shared by adv and mi). ``extras`` is older, untyped scratch
    kept for plugins written against 0.1; new code uses a PassField.

    The latent: ``posterior`` is the base posterior q0(z0|x), ``z0`` its sample and ``z`` the latent transform's
    flow of it (the same without a flow), ``log_det`` the flow's log-determinant and ``log_q`` log q(z|x) per
    image. With k posterior draws per image, ``multi`` holds all of them, shaped (k, B, ...).

    ``step`` and ``epoch`` are the training step being taken and its epoch (None outside training), for
    losses whose weight follows a schedule (KL warm-up).

    ``branch`` says which terms the trainer's current update wants (``train.schedule``): ``all``,
    ``posterior`` (terms of x -> q(z|x) -> x_hat) or ``prior`` (terms of z ~ p(z) -> x); a loss asks
    ``fwd.wants(branch)``. ``update`` is the index of that update within the step, so a cache can
    tell one update from the next.
    """

    __slots__ = (
        "model",
        "x",
        "features",
        "posterior",
        "z",
        "u",
        "decoder_output",
        "x_hat",
        "prior",
        "extras",
        "extra_posterior",
        "pyramid",
        "fake_features",
        "branch",
        "update",
        "step",
        "epoch",
        "_prior_sample",
        "z0",
        "log_det",
        "multi",
        "logged",
        "_fields",
    )

    def __init__(self, model: GenerativeModel, x: Tensor):
        self.model = model
        self.x = x
        self.features: Any = None
        self.posterior: Gaussian | None = None
        self.z: Tensor | None = None
        self.u: Tensor | None = None
        #: the decoder's output, in the output space it declares (``Decoder.output``: tanh logits, Bernoulli
        #: logits, or the image itself); ``x_hat`` is that output as an image in [-1, 1]
        self.decoder_output: Tensor | None = None
        self.x_hat: Tensor | None = None
        #: the prior's ``forward``: a Gaussian, or (a prior with ``gaussian = False``) any object with ``log_prob``
        self.prior: Any = None
        self.extras: dict[str, Any] = {}
        #: q(z|u) of the prior's extra inputs (``Prior.extra_inputs``, e.g. VampPrior's pseudo-inputs), encoded in
        #: the same pass as x; None when the prior has none
        self.extra_posterior: Gaussian | None = None
        #: the pyramid capability's bands (filled by a pyramid encoder and decoder); None without one
        self.pyramid: PyramidPass | None = None
        #: the discriminator capability's trunk features of this update's fakes; None until a loss computes them
        self.fake_features: FakeFeatures | None = None
        self.branch = "all"
        self.update = 0
        #: the training step being taken (0-based) and its epoch; None outside training (evaluation, a
        #: dry run), where a step-dependent weight takes its final value
        self.step: int | None = None
        self.epoch: int | None = None
        self._prior_sample: PriorSample | None = None
        #: the base posterior's sample; z = the latent transform's flow of it (the same tensor without a flow)
        self.z0: Tensor | None = None
        #: log|det dz/dz0| per image (B,), None without a flow
        self.log_det: Tensor | None = None
        #: k > 1 posterior draws per image (``train.posterior_samples`` or a loss's need); z, u, x_hat are draw 0's
        self.multi: MultiSample | None = None
        #: values logged with this pass's step and never summed into the objective (:meth:`log`)
        self.logged: dict[str, Tensor] = {}
        self._fields: dict[PassField[Any], Any] = {}

    @property
    def logits(self) -> Tensor | None:
        """Deprecated since 0.2 (goes in 0.3): ``decoder_output``, which holds any decoder's output."""
        import warnings

        warnings.warn(
            "ForwardPass.logits is deprecated; use ForwardPass.decoder_output", DeprecationWarning, stacklevel=2
        )
        return self.decoder_output

    @property
    def log_q(self) -> Tensor:
        """log q(z|x) per image (B,) of this pass's z: the base posterior's log density of z0, less the flow's
        log-determinant. Every KL or ELBO term reads it, so a flow is never left out."""
        z0 = self.z0 if self.z0 is not None else self.z  # a pass made by hand may set z alone (no flow)
        assert self.posterior is not None and z0 is not None, "the forward pass has encoded x"
        log_q = self.posterior.log_prob(z0)
        return log_q if self.log_det is None else log_q - self.log_det

    def draws(self, k: int) -> tuple[Tensor, Tensor]:
        """k fresh posterior draws per image through the transform's flow and their log q(z|x): (k, B, *latent)
        and (k, B); what a Monte Carlo estimate takes beyond the pass's own z (never the decoder)."""
        assert self.posterior is not None, "the forward pass has encoded x"
        transform = self.model.transform
        if transform.has_flow or not transform.stochastic:
            return FlowPosterior(self.posterior, transform).rsample_with_log_prob(k)
        z = self.posterior.rsample(k)
        return z, self.posterior.log_prob(z)

    def log(self, name: str, value: Tensor) -> None:
        """Log ``value`` (a number as a 0-dim tensor; a tensor is averaged) with this step, detached: a diagnostic
        (a log-determinant, a code-book's usage) shown in metrics.jsonl and the report, never in the objective.
        Name it after your plugin (``flow.log_det``)."""
        self.logged[name] = value.detach().float().mean()

    def __getitem__(self, field: PassField[T]) -> T:
        """The value a component stored under ``field``; KeyError when none did."""
        try:
            return self._fields[field]
        except KeyError:
            raise KeyError(f"nothing in this pass under {field!r}") from None

    def __setitem__(self, field: PassField[T], value: T) -> None:
        self._fields[field] = value

    def get(self, field: PassField[T], default: T | None = None) -> T | None:
        """The value under ``field``, or ``default``."""
        return self._fields.get(field, default)

    def wants(self, branch: str) -> bool:
        """Whether the current update trains on ``branch`` ("posterior" or "prior")."""
        return self.branch == "all" or self.branch == branch

    def prior_sample(self) -> PriorSample:
        """A batch of prior samples as large as x, drawn once and shared by every loss until
        :meth:`new_prior_sample` (an update with ``fresh`` on the prior branch)."""
        if self._prior_sample is None:
            model = self.model
            z = model.prior.sample(self.x.shape[0], model, self.x.device)
            u, x = model.generate(z)
            self._prior_sample = PriorSample(z, u, x)
        return self._prior_sample

    def new_prior_sample(self) -> None:
        """Forget the prior batch: the next :meth:`prior_sample` draws a new one with the current weights."""
        self._prior_sample = None


@attrs.define
class BuildContext:
    """What a component can see while it is built: the image shape and the components built before it."""

    image_shape: Shape
    encoder: Encoder | None = None
    transform: LatentTransform | None = None
    decoder: Decoder | None = None
    prior: Prior | None = None
    spec: Any = None

    @property
    def layout(self) -> LatentLayout:
        assert self.transform is not None, "the latent transform is built before the prior and losses"
        return self.transform.layout


class Component(nn.Module, Generic[OptionsT], metaclass=abc.ABCMeta):
    """Base of every component: options, capabilities and per-module optimisation hints.

    ``provides``/``requires`` are capability names checked at build time, so an incompatible
    composition is refused with a message naming both sides (e.g. ``mi`` requires
    ``discriminator``, which ``adv`` provides).
    """

    #: the kind (``encoder``, ``transform``, ...), how messages name it, and the hook that registers it: set once,
    #: on each base class below; everything else that lists the kinds derives from ``COMPONENT_BASES``
    kind: ClassVar[str] = ""
    kind_label: ClassVar[str] = ""
    hook: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    provides: ClassVar[frozenset[str]] = frozenset()
    requires: ClassVar[frozenset[str]] = frozenset()
    #: the type the model's networks compute in, set on every component by ``GenerativeModel.precision``: a
    #: component that runs a network of its own outside the model's passes (a discriminator, a feature network)
    #: runs it in ``with self.precision.autocast():`` and hands on float32 (``to_float32``)
    precision: Precision = FLOAT32
    #: small options (a few channels, one narrow layer) the conformance kit (``genvae.testing``) builds this
    #: component with when it is the partner of a component under test
    test_options: ClassVar[Mapping[str, Any]] = {}

    options: OptionsT

    def __init__(self, options: OptionsT, ctx: BuildContext):
        super().__init__()
        self.options = options

    def refer(self, name: str, value: Any) -> None:
        """Keep ``value`` (another part of the model, or a list of its modules) as ``self.<name>`` without
        registering it as a submodule, so it is saved, moved and counted once, under its owner. For ``attach``."""
        self.__dict__[name] = value

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def lr_multipliers(self) -> dict[str, float]:
        """Default learning-rate multipliers for named submodules (e.g. ``{"lstm": 1/8}``)."""
        return {}

    def grad_clamps(self) -> dict[str, float]:
        """Default gradient value clamps for named submodules (e.g. ``{"lstm": 5.0}``)."""
        return {}

    def lr_warmups(self) -> dict[str, tuple[tuple[int, float], ...]]:
        """Default learning-rate warm-ups for named submodules, ``{"head": ((10, 0.02), (30, 0.2))}``: the rate is
        ``factor`` x its base before each ``until_step`` ("" names the whole component); ``train.lr_warmup``
        overrides them per module path."""
        return {}

    def attach(self, model: GenerativeModel) -> None:
        """Called once after the whole model is composed: look up partners here (e.g. ``mi`` finds the
        discriminator trunk of ``adv``). Keep references out of the module tree (no double registration)."""

    def require_spatial(self, shape: Shape, producer: str, hint: str = "") -> tuple[int, int, int]:
        """The (C, H, W) a neighbour produces, or a build error naming it (``producer``: "encoder 'fc'")."""
        if len(shape) != 3:
            what = "spatial features" if self.kind == "transform" else "a spatial input"
            raise self.fail(
                f"needs {what} (C, H, W) but {producer} produces "
                f"[{', '.join(str(s) for s in shape)}]" + (f"; {hint}" if hint else "")
            )
        return tuple(shape)  # type: ignore[return-value]

    def fail(self, message: str) -> BuildError:
        """A build error that names this component."""
        return BuildError(f"{self.kind_label or self.kind} '{self.name}': {message}")


class Encoder(Component[OptionsT]):
    """Maps an image batch (B, C, H, W) in [-1, 1] to features of ``output_shape``."""

    kind = "encoder"
    kind_label = "encoder"
    hook = "genvae_register_encoders"
    #: names of the natural partners: {"decoder": ..., "transform": ..., "preset": ...}
    counterparts: ClassVar[dict[str, str]] = {}
    output_shape: Shape

    @abc.abstractmethod
    def forward(self, x: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        """Features of the batch, (B, *output_shape)."""


class LatentTransform(Component[OptionsT]):
    """Both sides of the latent: features -> q(z|x), and z -> u, the decoder's input.

    Sets ``layout`` (the latent's shape and groups) and ``output_shape`` (the shape of u).
    """

    kind = "transform"
    kind_label = "latent transform"
    hook = "genvae_register_transforms"
    layout: LatentLayout
    output_shape: Shape
    #: False for a transform whose posterior is a point: z0 is the base posterior's mean, never a draw, and
    #: :meth:`flow` maps it (a vector quantiser: z = the nearest code, straight-through). KL terms do not apply.
    stochastic: ClassVar[bool] = True

    @abc.abstractmethod
    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        """q(z|x) from the encoder's features, a Gaussian of shape (B, *layout.shape)."""

    @abc.abstractmethod
    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        """u, the decoder's input (B, *output_shape), from z."""

    def flow(self, z0: Tensor, fwd: ForwardPass | None = None) -> tuple[Tensor, Tensor | None]:
        """The posterior sample z = f(z0) of the base sample z0 (a normalising flow), and log|det df/dz0| per row
        of z0; the default is no flow: ``(z0, None)``. The engine applies it wherever a posterior sample is
        drawn (training, ``encode``, ``sample --from``, completion, evaluation), and ``ForwardPass.log_q`` takes
        the log-determinant off the base density."""
        return z0, None

    @property
    def has_flow(self) -> bool:
        """Whether this transform overrides :meth:`flow` (read once at build time)."""
        return type(self).flow is not LatentTransform.flow

    def generation_modules(self) -> list[nn.Module]:
        """The submodules used by ``generate`` (for the generator-side parameter count)."""
        return [self]


def _as_image(output: Tensor) -> Tensor:
    return output


def _bernoulli_mean(logits: Tensor) -> Tensor:
    return torch.tanh(0.5 * logits)  # 2 sigmoid(a) - 1


#: How a decoder's output becomes x_hat in [-1, 1], by the name the decoder declares in ``Decoder.output``:
#: ``tanh`` (unbounded logits a, x_hat = tanh(a); the default), ``bernoulli`` (logits a of the pixels'
#: Bernoulli probabilities p = sigmoid(a), x_hat = 2p - 1) and ``image`` (the output is x_hat itself, which
#: the decoder keeps in [-1, 1]). The output itself is ``ForwardPass.decoder_output``; losses that need logits check
#: the space.
OUTPUT_SPACES: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "bernoulli": _bernoulli_mean,
    "image": _as_image,
}


class Decoder(Component[OptionsT]):
    """Maps u to an output of the image's shape, in the space it declares (``output``; tanh logits by default)."""

    kind = "decoder"
    kind_label = "decoder"
    hook = "genvae_register_decoders"
    #: the output space (a key of ``OUTPUT_SPACES``); a class default, or set per instance from an option
    output: str = "tanh"

    def upsampling_plan(self, ctx: BuildContext, hint: str = "") -> tuple[int, int]:
        """(input channels, number of x2 upsamplings) from the latent's u to the image, or a build error."""
        transform = ctx.transform
        if transform is None:
            raise self.fail("is built after the latent transform, which is missing")
        c_in, h_in, w_in = self.require_spatial(transform.output_shape, f"latent transform '{transform.name}'", hint)
        _, h, w = ctx.image_shape
        ups = 0
        while h_in * 2**ups < h:
            ups += 1
        if h_in * 2**ups != h or w_in * 2**ups != w:
            raise self.fail(f"cannot upsample {h_in}x{w_in} to the image size {h}x{w} by factors of 2")
        return c_in, ups

    @abc.abstractmethod
    def forward(self, u: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        """The output (B, C, H, W) from u, in the declared ``output`` space."""


class Prior(Component[OptionsT]):
    """p(z): the distribution the KL term pulls the posterior towards and samples are drawn from."""

    kind = "prior"
    kind_label = "prior"
    hook = "genvae_register_priors"
    #: False for a prior that is not one diagonal Gaussian (a mixture, a flow): its ``forward`` returns an object
    #: with ``log_prob(z) -> (batch,)`` (log p(z) summed over the latent) and the ``kl`` loss estimates
    #: KL(q || p) by Monte Carlo instead of the closed form
    gaussian: ClassVar[bool] = True

    def __init__(self, options: OptionsT, ctx: BuildContext):
        super().__init__(options, ctx)
        self.layout = ctx.layout

    @abc.abstractmethod
    def forward(self, fwd: ForwardPass) -> Any:
        """The prior for this pass's posterior (may depend on it: an M-network prior does): a ``Gaussian``, or
        (``gaussian = False``) any object with ``log_prob(z)``."""

    def extra_inputs(self) -> Tensor | None:
        """Images (K, C, H, W) in [-1, 1] the model encodes together with x in each forward pass, so the
        encoder's batch norms see one batch per step; their posterior arrives as ``fwd.extra_posterior``."""
        return None

    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        """n latent samples, (n, *layout.shape).

        With ``fixed`` (a latent, (1 or n, *shape)) the first ``fixed_groups`` groups are taken from
        it and only the rest are drawn: coarse pyramid levels or early time steps stay, the others
        vary. A prior whose later groups depend on earlier ones (M-network) overrides this.
        """
        z = torch.randn(n, *self.layout.shape, device=device)
        if fixed is not None and fixed_groups > 0:
            mask = self.layout.group_mask(range(fixed_groups), device=device)
            z = torch.where(mask, fixed.to(device).expand_as(z), z)
        return z


class Loss(Component[OptionsT]):
    """A training objective. ``forward(fwd, phase)`` returns named terms that are summed.

    A loss contributes to the ``model`` phase (encoder, transform, decoder, prior parameters) by
    default. One that trains networks of its own (a discriminator) lists them in
    ``owned_modules()`` by phase; each phase gets its own optimiser and runs once per step, in
    the order of ``phase_order`` (phases not listed there run after ``model``).

    A loss with ``may_skip = True`` may ask to skip its phase's update this step: its terms then include
    ``Loss.SKIP``, a one-element bool tensor (True = skip). Reading it is a host sync, so only losses that
    declare it are asked, and the build refuses the key from any other.
    """

    kind = "loss"
    kind_label = "loss"
    hook = "genvae_register_losses"
    #: the key of a skip flag among the terms of a loss with ``may_skip``: not summed; True skips this phase's
    #: update this step (e.g. the discriminator when it is already too strong)
    SKIP = "skip_step"
    may_skip: ClassVar[bool] = False
    #: the order this loss's phases run in within a step, as a chain (``("discriminator", "model")``); the
    #: model merges every loss's chain, and a phase no chain places runs after ``model``
    phase_order: ClassVar[tuple[str, ...]] = ()
    #: "reconstruction", "divergence", "adversarial", "auxiliary" or "objective": a build adds a default
    #: reconstruction and divergence loss when the user names none; a loss whose role is "objective" is the
    #: whole objective (an IWAE bound, a WAE), and then neither is added.
    role: ClassVar[str] = "auxiliary"
    phases: ClassVar[tuple[str, ...]] = ("model",)
    #: the branches this loss has terms on: "posterior" (x -> q(z|x) -> x_hat, the default) and/or
    #: "prior" (z ~ p(z) -> x). An update of ``train.schedule`` on one branch calls only the losses
    #: with terms there; inside, ``fwd.wants(branch)`` says which terms to compute.
    branches: ClassVar[tuple[str, ...]] = ("posterior",)

    def __init__(self, options: OptionsT, ctx: BuildContext, weight: float = 1.0):
        super().__init__(options, ctx)
        self.weight = float(weight)

    def owned_modules(self) -> dict[str, nn.Module]:
        """Modules this loss trains itself, by phase name (never ``model``)."""
        return {}

    def posterior_samples(self) -> int:
        """How many posterior draws per image this loss needs in a training pass (a k-sample bound: k); the model
        draws the most any loss or ``train.posterior_samples`` asks for, as one batch (``ForwardPass.multi``)."""
        return 1

    @abc.abstractmethod
    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        """Named, weighted terms of ``phase`` (summed by the trainer)."""


#: what a loss may be, by ``Loss.role``
LOSS_ROLES: tuple[str, ...] = ("reconstruction", "divergence", "adversarial", "auxiliary", "objective")
#: the component bases, in the order of a spec: the one place the kinds are listed
COMPONENT_BASES: tuple[type[Component], ...] = (Encoder, LatentTransform, Decoder, Prior, Loss)
#: every component kind; MODEL_PART_KINDS: the kinds a model has exactly one of (all but losses)
COMPONENT_KINDS: tuple[str, ...] = tuple(base.kind for base in COMPONENT_BASES)
MODEL_PART_KINDS: tuple[str, ...] = tuple(base.kind for base in COMPONENT_BASES if base is not Loss)
KIND_LABELS: dict[str, str] = {base.kind: base.kind_label for base in COMPONENT_BASES}

"""The contracts components exchange beyond the five kinds: capabilities and what a pass carries for them.

A component lists capabilities in ``provides`` / ``requires``. Each capability here is a name (a ``str``,
so plain names still work) plus the typed protocol its providers implement, by component kind. The build
checks both: every capability a component requires is provided by another component of the model, and
every provider has the members its protocol names (one-line error otherwise, before any forward pass).

A third-party capability is made the same way: ``MY_CAP = Capability("my-cap", "what it means", loss=MyProto)``.

What providers hand to consumers during a pass goes into typed fields of :class:`~genvae.core.ForwardPass`
(``fwd.pyramid``, ``fwd.fake_features``); a third-party capability declares a ``PassField`` for its data
(``fwd[FIELD] = value``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
from torch import Tensor, nn

if TYPE_CHECKING:
    from genvae.core.components import ForwardPass


class Capability(str):
    """A capability name with the protocol each kind of provider implements (``protocols[kind]``)."""

    protocols: Mapping[str, type]
    doc: str

    def __new__(cls, name: str, doc: str, **protocols: type) -> Capability:
        self = super().__new__(cls, name)
        self.protocols = dict(protocols)
        self.doc = doc
        return self

    def missing_members(self, component: Any) -> list[str]:
        """The members of its kind's protocol that ``component`` lacks (empty when it conforms, or when this
        capability names no protocol for that kind)."""
        protocol = self.protocols.get(getattr(component, "kind", ""))
        if protocol is None:
            return []
        return [name for name in protocol_members(protocol) if not hasattr(component, name)]


def protocol_members(protocol: type) -> list[str]:
    """The attribute and method names a protocol declares (its own and its protocol bases')."""
    names: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        for name in (*getattr(klass, "__annotations__", {}), *vars(klass)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


# -- discriminator: an adversarial loss's trunk, shared by the MI regulariser --------------------------------


@runtime_checkable
class DiscriminatorTrunk(Protocol):
    """A loss that trains a discriminator and lets others use its convolutional trunk."""

    #: the trunk (images -> features of ``trunk_shape``); saved once, under its owner
    trunk: nn.Module
    trunk_shape: tuple[int, ...]
    #: how many layers (blocks) the trunk has, for layer_features
    trunk_layers: int

    def fake_features(self, fwd: ForwardPass) -> dict[str, Tensor]:
        """Trunk features of the generated images the current update judges, by branch: ``"recon"`` and/or
        ``"prior"``; computed once per update (``fwd.fake_features``) and shared."""
        ...

    def layer_features(self, images: Tensor, layer: int) -> Tensor:
        """The trunk's features at ``layer`` (1-based), dropout off: a perceptual loss's learned similarity."""
        ...

    def discriminate(self, images: Tensor) -> Tensor:
        """The discriminator's logits (B, 1) for images in [-1, 1] (real = positive), as in training: a layer
        such as minibatch discrimination may compare the images of the batch with each other. A provider may
        also define ``discriminate_each(images)``, the logits of each image as a batch of its own; image
        completion uses it for its per-image objective, and otherwise calls ``discriminate`` one image at a
        time."""
        ...


DISCRIMINATOR = Capability(
    "discriminator", "a discriminator trunk other losses may reuse (adv -> mi)", loss=DiscriminatorTrunk
)


@attrs.define
class FakeFeatures:
    """``ForwardPass.fake_features``: the trunk features of one update's fakes, by branch (see DiscriminatorTrunk)."""

    update: int
    by_branch: dict[str, Tensor]


# -- mi-target: what an MI regulariser should recover from a generated image ----------------------------------


@runtime_checkable
class MITarget(Protocol):
    """A latent transform that says what an MI head recovers from a generated image (crVAE: the LSTM's u)."""

    def mi_target(self, z: Tensor, u: Tensor) -> Tensor:
        """The target for a (z, u) pair, shaped like u."""
        ...


MI_TARGET = Capability("mi-target", "the latent transform names the MI regulariser's target", transform=MITarget)


# -- pyramid: a Laplacian pyramid of per-level encoders, latents and decoders ----------------------------------


@runtime_checkable
class PyramidEncoder(Protocol):
    """Per-level encoders; level k = 0 is the finest, K = num_levels - 1 the coarsest."""

    num_levels: int
    kernel: str
    levels: nn.ModuleList

    def encode_level(self, k: int, h: Tensor, coarser: Tensor | None) -> Tensor:
        """Level k's flat features from its band h_k and the coarser image x_{k+1} (None at the coarsest)."""
        ...

    def upsample(self, x: Tensor) -> Tensor:
        """The pyramid's u(): double an image's size with the pyramid's kernel."""
        ...


@runtime_checkable
class PyramidLatent(Protocol):
    """Per-level Gaussian latents; latent group g is level K - g (coarsest first)."""

    num_levels: int
    levels: nn.ModuleList
    #: latent size of each level, by level k
    sizes: list[int]

    def split_levels(self, z: Tensor) -> list[Tensor]:
        """(B, N) latent -> [z_0, ..., z_K]."""
        ...

    def join_levels(self, zs: list[Tensor]) -> Tensor:
        """[z_0, ..., z_K] -> (B, N), coarsest first."""
        ...

    def level_posterior(self, k: int, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mu_k, log sigma_k^2) from level k's flat features."""
        ...

    def level_u(self, k: int, zs: list[Tensor]) -> Tensor:
        """Level k's decoder input from z_k..z_K."""
        ...


@runtime_checkable
class PyramidDecoder(Protocol):
    """Per-level decoders of the bands h_k."""

    num_levels: int
    levels: nn.ModuleList

    def decode_level(self, k: int, u_k: Tensor) -> Tensor:
        """Level k's band h_k from its decoder input."""
        ...


PYRAMID = Capability(
    "pyramid",
    "a Laplacian pyramid of per-level encoders, latents and decoders",
    encoder=PyramidEncoder,
    transform=PyramidLatent,
    decoder=PyramidDecoder,
)


@attrs.define
class PyramidPass:
    """``ForwardPass.pyramid``: one pass's pyramid, lists indexed by level k (0 = finest).

    The encoder fills ``targets`` (the input's bands h_k), ``blurred`` (b_k) and ``condition`` (the coarser
    image each level was conditioned on, None at the coarsest); the decoder fills ``predictions`` (h_hat_k)
    and ``reconstructions`` (x_hat_k = h_hat_k + u(x_hat_{k+1}), before any clamp)."""

    targets: list[Tensor] = attrs.field(factory=list)
    blurred: list[Tensor] = attrs.field(factory=list)
    condition: list[Tensor | None] = attrs.field(factory=list)
    predictions: list[Tensor] = attrs.field(factory=list)
    reconstructions: list[Tensor] = attrs.field(factory=list)


def pyramid_parts(model: Any) -> tuple[PyramidEncoder, PyramidLatent, PyramidDecoder]:
    """(encoder, transform, decoder) of a model whose three parts provide ``pyramid``, or a one-line
    :class:`~genvae.core.GenvaeError` naming them."""
    from genvae.core.errors import GenvaeError

    parts = (model.encoder, model.transform, model.decoder)
    if not all(PYRAMID in part.provides and not PYRAMID.missing_members(part) for part in parts):
        enc, tr, dec = parts
        raise GenvaeError(
            f"this model has no Laplacian pyramid (encoder '{enc.name}', latent transform '{tr.name}', "
            f"decoder '{dec.name}'); build one with --encoder laplacian or --preset lapcvae"
        )
    return parts


#: every capability genvae defines, by name (for messages and docs)
CAPABILITIES: dict[str, Capability] = {c: c for c in (DISCRIMINATOR, MI_TARGET, PYRAMID)}

__all__ = [
    "CAPABILITIES",
    "DISCRIMINATOR",
    "MI_TARGET",
    "PYRAMID",
    "Capability",
    "DiscriminatorTrunk",
    "FakeFeatures",
    "MITarget",
    "PyramidDecoder",
    "PyramidEncoder",
    "PyramidLatent",
    "PyramidPass",
    "protocol_members",
    "pyramid_parts",
]

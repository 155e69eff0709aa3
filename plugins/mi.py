"""``mi``: the mutual-information regulariser of crVAE-GAN (paper section 3.3.3).

A head q on the discriminator's trunk predicts, from a generated image x~, what generated it: u,
the generation LSTM's output, for the ``cr-lstm`` latent (the transform's ``mi_target``), z for
latents without one (the ``fc`` VAE-GAN baseline), or either by ``target``. z is drawn both from the
posterior (x~ = the reconstruction) and from the prior (x~ = a sample: the step's
``ForwardPass.prior_sample()``, shared with ``adv``). On an update of ``train.schedule`` restricted to one
branch, only that branch's error counts.

* phase ``mi`` (before each model update of the same branch in the authors' order, ``train.schedule``:
  ``mi@posterior, model@posterior, mi@prior:fresh, model@prior, discriminator``): the head (and, with
  ``train_trunk``, the shared trunk at the trunk's learning rate) learns to predict the detached target from
  the detached images;
* phase ``model``: kappa times the same error, with the head fixed, reaches the generator.

The error is a mean squared error weighted per latent group (time step): the authors' weights
[0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1, 1] for an 8-step target, 1 otherwise, unless ``group_weights``
says; it weights both branches (``weighted_branches``). In the released ``train_test_lstm.lua``
the weights are applied in place to ``df_dz_recon``, the gradient buffer of the shared
``nn.MSECriterion``; the prior branch's ``df_dz_recon_sample`` is that same buffer (a Torch
criterion returns its one ``gradInput`` tensor), so each branch's gradient (head, trunk and
decoder alike) is weighted once. ``weighted_branches: recon`` weights the posterior branch only.
The head (as in the authors' code): conv3x3 -> BN -> LReLU(0.2) -> conv1x1 -> BN -> LReLU(0.1)
-> Linear -> plus a learnable bias of the target's shape; ``bn_eps``/``bn_momentum`` set its batch
norms (the authors ran eps 1e-6, momentum 0.9).

``mi`` needs the trunk of ``adv`` (``requires = {"discriminator"}``): a model without it is
refused at build time. The trunk is referenced, not registered, so it is saved once (under adv).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    DISCRIMINATOR,
    MI_TARGET,
    BuildContext,
    DiscriminatorTrunk,
    ForwardPass,
    GenerativeModel,
    LatentLayout,
    LatentTransform,
    Loss,
    MITarget,
    RegisterComponent,
    float_tuple,
    hookimpl,
    non_negative,
    one_of,
    option,
    positive,
    positive_int,
    shorten,
    to_bool,
    to_float,
    to_float32,
    to_int,
    unit_interval,
)

PAPER_WEIGHTS = (0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1.0, 1.0)


@attrs.frozen
class MIOptions:
    kappa: float = option(
        0.02,
        "weight of the MI term reaching the generator (the paper's kappa; the loss weight multiplies it)",
        non_negative,
        to_float,
    )
    target: str = option(
        "auto",
        "what the head predicts: auto (the transform's mi_target, e.g. cr-lstm's u; else z), u or z",
        one_of("auto", "u", "z"),
    )
    group_weights: tuple[float, ...] = option(
        (),
        "weight per latent group (time step) of the target; empty: the paper's 8 weights for an 8-step target, "
        "1 otherwise",
        converter=float_tuple,
    )
    hidden: int = option(64, "channels of the head's convolutions", positive_int, to_int)
    train_trunk: bool = option(
        True, "the MI phase also trains the shared trunk (as the authors' code)", converter=to_bool
    )
    on_recon: bool = option(True, "use z from the posterior (reconstructions)", converter=to_bool)
    on_prior: bool = option(True, "use z from the prior (samples)", converter=to_bool)
    bias_init: float = option(0.01, "the head's output bias starts uniform in +-bias_init", non_negative, to_float)
    weighted_branches: str = option(
        "both",
        "which branches the group weights apply to: both (posterior and prior, as the released code runs: "
        "its two MI gradients share one buffer, which it weights once per branch) or recon (the posterior branch "
        "only, the prior branch unweighted)",
        one_of("both", "recon"),
    )
    bn_eps: float = option(
        1e-5, "eps of the head's batch norms (PyTorch's default; the authors ran 1e-6)", positive, to_float
    )
    bn_momentum: float = option(
        0.1,
        "momentum of the head's batch norms: the weight of the new batch in the running "
        "statistics, as Torch7's (PyTorch's default; the authors ran 0.9)",
        unit_interval,
        to_float,
    )

    def __attrs_post_init__(self) -> None:
        if any(w < 0 for w in self.group_weights):
            raise ValueError(f"group_weights must be >= 0, got {shorten(list(self.group_weights))}")
        if not (self.on_recon or self.on_prior):
            raise ValueError("on_recon and on_prior cannot both be off")


class MIHead(nn.Module):
    def __init__(
        self,
        trunk_shape: tuple[int, ...],
        target_shape: tuple[int, ...],
        hidden: int,
        bias_init: float,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        c, h, w = trunk_shape
        spatial = len(target_shape) == 3 and tuple(target_shape[1:]) == (h, w)
        second = target_shape[0] if spatial else hidden
        self.target_shape = tuple(target_shape)
        self.net = nn.Sequential(
            nn.Conv2d(c, hidden, 3, 1, 1),
            nn.BatchNorm2d(hidden, bn_eps, bn_momentum),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, second, 1),
            nn.BatchNorm2d(second, bn_eps, bn_momentum),
            nn.LeakyReLU(0.1),
            nn.Flatten(),
            nn.Linear(second * h * w, math.prod(target_shape)),
        )
        self.bias = nn.Parameter(torch.empty(self.target_shape).uniform_(-bias_init, bias_init))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).view(-1, *self.target_shape) + self.bias


class MILoss(Loss[MIOptions]):
    """Mutual-information regulariser: a head on adv's trunk recovers u (or z) from generated images."""

    name = "mi"
    Options = MIOptions
    role = "auxiliary"
    requires = frozenset({DISCRIMINATOR})
    test_options = {"hidden": 8}
    phases = ("mi", "model")
    phase_order = ("discriminator", "mi", "model")
    branches = ("posterior", "prior")
    # kept with refer() in attach: the partners (saved under their owners) and the resolved target
    _adv: DiscriminatorTrunk
    _mode: str
    _transform: LatentTransform
    element_weights: torch.Tensor  # a buffer, registered in attach

    def __init__(self, options: MIOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        self.head: MIHead | None = None

    # -- composition ---------------------------------------------------------------------------------------
    def attach(self, model: GenerativeModel) -> None:
        # the build has checked that a loss provides the discriminator capability (its DiscriminatorTrunk protocol)
        losses = typing.cast("Iterable[Loss]", model.losses.values())  # the model's losses, by name
        adv = next(loss for loss in losses if DISCRIMINATOR in loss.provides)
        self.refer("_adv", adv)  # the trunk is saved once, under adv
        transform, layout = model.transform, model.layout
        mode = self.options.target
        if mode == "auto":
            mode = "transform" if MI_TARGET in transform.provides else "z"
        self.refer("_mode", mode)
        self.refer("_transform", transform)
        shape = tuple(layout.shape) if mode == "z" else tuple(transform.output_shape)
        groups = layout if shape == tuple(layout.shape) else LatentLayout(shape)
        weights = self.options.group_weights
        if not weights:
            weights = PAPER_WEIGHTS if groups.num_groups == len(PAPER_WEIGHTS) else (1.0,) * groups.num_groups
        elif len(weights) != groups.num_groups:
            raise self.fail(
                f"{len(weights)} group_weights given, but its target ({mode}, shape {list(shape)}) has "
                f"{groups.num_groups} {groups.group_label}(s)"
            )
        device = next(adv.parameters()).device
        self.register_buffer(
            "element_weights", groups.element_weights(weights).view(shape).to(device), persistent=False
        )
        o = self.options
        self.head = MIHead(self._adv.trunk_shape, shape, o.hidden, o.bias_init, o.bn_eps, o.bn_momentum).to(device)

    def owned_modules(self) -> dict[str, nn.Module]:
        if self.head is None:  # asked before attach() (build_model validates ownership first): nothing yet
            return {}
        if self.options.train_trunk:
            return {"mi": nn.ModuleList([self.head, self._adv.trunk])}  # a fresh list: nothing registered twice
        return {"mi": self.head}

    # -- the loss ------------------------------------------------------------------------------------------
    def target(self, z: Tensor, u: Tensor) -> Tensor:
        if self._mode == "transform":  # chosen only for a transform that provides mi-target
            return typing.cast(MITarget, self._transform).mi_target(z, u).detach()
        return (z if self._mode == "z" else u).detach()

    def error(self, prediction: Tensor, target: Tensor, weighted: bool = True) -> Tensor:
        """Mean over all elements of the squared error, each element times its group's weight (``weighted``)."""
        squared = (prediction - target).pow(2)
        return (self.element_weights * squared).mean() if weighted else squared.mean()

    def weighted(self, branch: str) -> bool:
        return branch == "recon" or self.options.weighted_branches == "both"

    def pairs(self, fwd: ForwardPass) -> list[tuple[str, Tensor, Tensor]]:
        """(branch, images, targets) for the posterior branch and the prior branch, as switched on and as the
        current update wants them."""
        out = []
        if self.options.on_recon and fwd.wants("posterior"):
            assert fwd.x_hat is not None and fwd.z is not None and fwd.u is not None  # the model's forward sets them
            out.append(("recon", fwd.x_hat, self.target(fwd.z, fwd.u)))
        if self.options.on_prior and fwd.wants("prior"):
            z, u, x = fwd.prior_sample()
            out.append(("prior", x, self.target(z, u)))
        return out

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        pairs = self.pairs(fwd)
        if not pairs:
            return {}
        head = self.head
        assert head is not None, "attach() builds the head"
        if phase == "mi":
            images = torch.cat([x.detach() for _, x, _ in pairs])
            with self.precision.autocast(), torch.set_grad_enabled(self.options.train_trunk):
                features = self._adv.trunk(images)  # the convolutions in the model's precision
            features = to_float32(features)  # the head and the error in float32
            parts = features.split([x.shape[0] for _, x, _ in pairs])
            q = sum(self.error(head(f), t, self.weighted(which)) for f, (which, _, t) in zip(parts, pairs, strict=True))
            return {"q": typing.cast(Tensor, q)}  # pairs is not empty: a tensor
        features = self._adv.fake_features(fwd)
        total = sum(self.error(head(features[which]), t, self.weighted(which)) for which, _, t in pairs)
        return {"mi": self.weight * self.options.kappa * typing.cast(Tensor, total)}  # pairs is not empty: a tensor


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(MILoss)

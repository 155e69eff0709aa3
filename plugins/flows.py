"""``planar``, ``radial``, ``iaf``: normalising-flow posteriors, each wrapped around a base latent transform.

A flow transform builds a BASE latent transform (option ``base``, default ``fc``, with its options in the mapping
``base_options``) and hands it the posterior, the generation side, the layout and u's shape. What it adds is
:meth:`LatentTransform.flow`: z = f_L o ... o f_1 (z0) for the base posterior's sample z0 ~ q0(z0|x), with

    log q(z|x) = log q0(z0|x) - sum_l log |det df_l / dz_{l-1}|

per image (the engine takes the returned log-determinant off the base density: ``ForwardPass.log_q``). Every
step acts on the flattened latent (D values, whatever the layout's shape), and its parameters are global (not
amortised by the encoder): the contract ``flow(z0, fwd)`` is also called where no pass exists (``model.encode``,
``sample --from``), so the flow may depend on z0 alone. A base that has a flow of its own (another flow
transform) runs first, its log-determinant added: ``--set transform.base=iaf`` under ``planar`` stacks them.

* ``planar`` (Rezende & Mohamed, *Variational Inference with Normalizing Flows*, ICML 2015, section 4.1):
  f(z) = z + u_hat tanh(w^T z + b), log|det| = log|1 + (1 - tanh^2(w^T z + b)) w^T u_hat|. The step is
  invertible when w^T u_hat >= -1 (their appendix A.1): u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with
  m(a) = -1 + softplus(a) > -1, so the determinant never reaches 0.
* ``radial`` (the same paper): f(z) = z + beta h(alpha, r) (z - z_ref), r = ||z - z_ref||, h = 1 / (alpha + r),
  log|det| = (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r) = (D - 1) log(1 + beta h)
  + log(1 + beta alpha / (alpha + r)^2); alpha = softplus(alpha') > 0 and beta = -alpha + softplus(beta') > -alpha
  keep it invertible.
* ``iaf`` (Kingma et al., *Improved Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016, the
  numerically stable form of their algorithm 1): a MADE network (Germain et al. 2015; masked linear layers,
  ``hidden`` wide, two hidden ELU layers) gives m and s with m_i, s_i depending on z_<i only (in the step's
  order); sigma = sigmoid(s), z = sigma * z + (1 - sigma) * m, log|det| = sum_i log sigma_i (the Jacobian is
  triangular in the step's order). The bias of s starts at +2 (sigma near 0.88: the paper's "forget gate" bias
  of 1 or 2), and the order reverses between steps so every value eventually depends on every other.

The ``kl`` loss has no closed form through a flow: it takes the Monte Carlo estimate log q(z|x) - log p(z). With
the ``vamp`` prior the mixture's components are the pseudo-inputs' base posteriors (before the flow).
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genvae.api import (
    BuildContext,
    ForwardPass,
    Gaussian,
    GenvaeError,
    LatentLayout,
    LatentTransform,
    expects,
    get_registry,
    hookimpl,
    option,
    positive_int,
    shorten,
    to_int,
)

#: the initial bias of the IAF gate's s (sigma = sigmoid(s) starts near 0.88: each step starts close to identity)
FORGET_BIAS = 2.0


@expects('a mapping of the base transform\'s options, e.g. {"latent_dim": 16}')
def options_mapping(value: Any) -> dict[str, Any]:
    """The base's options as a dict: a mapping, or its JSON text (as ``--set`` may hand it over)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of option names to values, got {shorten(value)}")
    return {str(k): v for k, v in value.items()}


@attrs.frozen
class FlowOptions:
    length: int = option(4, "number of flow steps", positive_int, to_int)
    base: str = option("fc", "the latent transform the flow wraps (its posterior, generation and layout)")
    base_options: dict[str, Any] = option(
        help="the base transform's options, e.g. {'latent_dim': 16}; filled in with its defaults at build time",
        converter=options_mapping,
        factory=dict,
    )


@attrs.frozen
class IAFOptions(FlowOptions):
    hidden: int = option(64, "width of the MADE network's two hidden layers", positive_int, to_int)


def _plain(value: Any) -> Any:
    """An option value as JSON has it (tuples become lists), so the recorded base options round-trip."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class FlowTransform(LatentTransform[Any]):
    """A base latent transform with a normalising flow on its posterior samples (subclasses give the steps)."""

    layout: LatentLayout

    def __init__(self, options: FlowOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        try:
            base_cls = get_registry().component("transform", options.base)
        except GenvaeError as exc:
            raise self.fail(f"option base: {exc}") from None
        known = [a.name for a in attrs.fields(base_cls.Options) if a.init]
        unknown = sorted(k for k in options.base_options if k not in known)
        if unknown:
            raise self.fail(
                f"base_options: '{unknown[0]}' is no option of latent transform '{options.base}'; "
                f"its options: {', '.join(known) or 'none'}"
            )
        try:
            base_options = base_cls.Options(**options.base_options)
        except (TypeError, ValueError) as exc:
            raise self.fail(f"base_options for '{options.base}': {str(exc).splitlines()[0]}") from None
        if not base_cls.stochastic:
            raise self.fail(f"base '{options.base}' is deterministic (a point posterior): there is no density to flow")
        if base_cls.provides or base_cls.requires:
            caps = ", ".join(sorted(str(c) for c in base_cls.provides | base_cls.requires))
            raise self.fail(
                f"base '{options.base}' provides or requires capabilities ({caps}) that a flow does not pass on; "
                "wrap a plain transform (fc, conv)"
            )
        base = base_cls(base_options, ctx)
        base.name = options.base  # type: ignore[misc]  # the registered name, as the engine sets it
        self.base = base
        # the spec records every base option, so the model folder rebuilds the same base whatever the defaults
        self.options = attrs.evolve(options, base_options=_plain(attrs.asdict(base.options, recurse=False)))
        self.layout = base.layout
        self.output_shape = base.output_shape
        self.dim = self.layout.numel
        self._base_flows = base.has_flow
        self.steps = nn.ModuleList(self.make_step(i) for i in range(options.length))

    @abc.abstractmethod
    def make_step(self, index: int) -> nn.Module:
        """Flow step ``index``: a module mapping (N, D) to ((N, D), log|det| (N,)); each flow defines its own."""

    # -- the base does everything but the flow ----------------------------------------------------------------------
    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        return self.base.posterior(features, fwd)

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.base.generate(z, fwd)

    def generation_modules(self) -> list[nn.Module]:
        return self.base.generation_modules()

    def lr_multipliers(self) -> dict[str, float]:
        return {f"base.{k}": v for k, v in self.base.lr_multipliers().items()}

    def grad_clamps(self) -> dict[str, float]:
        return {f"base.{k}": v for k, v in self.base.grad_clamps().items()}

    def attach(self, model: Any) -> None:
        self.base.attach(model)

    def flow(self, z0: Tensor, fwd: ForwardPass | None = None) -> tuple[Tensor, Tensor]:
        """z = f_L(...f_1(z0)) on the flattened latent, and the summed log|det| per row of z0 (logged as
        ``<name>.log_det`` when there is a pass)."""
        log_det = torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)
        if self._base_flows:
            z0, base_log_det = self.base.flow(z0, fwd)
            if base_log_det is not None:
                log_det = log_det + base_log_det
        flat = z0.flatten(1)
        for step in self.steps:
            flat, step_log_det = step(flat)
            log_det = log_det + step_log_det
        if fwd is not None:
            fwd.log(f"{self.name}.log_det", log_det)
        return flat.view(z0.shape), log_det


# -- planar -----------------------------------------------------------------------------------------------------------
class PlanarStep(nn.Module):
    """f(z) = z + u_hat tanh(w^T z + b), with u_hat making w^T u_hat >= -1 (invertible)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.u = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> Tensor:
        """u moved along w until w^T u_hat = -1 + softplus(w^T u) > -1 (Rezende & Mohamed, appendix A.1)."""
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1.0 - wu) * self.w / (self.w @ self.w)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u_hat = self.u_hat()
        t = torch.tanh(z @ self.w + self.b)  # (N,)
        # det(I + u_hat psi^T) = 1 + psi^T u_hat with psi = (1 - t^2) w
        log_det = torch.log1p((1.0 - t * t) * (self.w @ u_hat))
        return z + t.unsqueeze(1) * u_hat, log_det


class PlanarFlow(FlowTransform):
    """Planar normalising flow on a base transform's posterior (Rezende & Mohamed 2015)."""

    name = "planar"
    Options = FlowOptions
    test_options = {"length": 2, "base_options": {"latent_dim": 4}}

    def make_step(self, index: int) -> nn.Module:
        return PlanarStep(self.dim)


# -- radial -----------------------------------------------------------------------------------------------------------
class RadialStep(nn.Module):
    """f(z) = z + beta (z - z_ref) / (alpha + ||z - z_ref||), alpha > 0, beta > -alpha (invertible)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.z_ref = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        # alpha' = beta' would start at beta = 0, the identity: both drawn like z_ref instead
        self.alpha_raw = nn.Parameter(torch.empty(()).uniform_(-bound, bound))
        self.beta_raw = nn.Parameter(torch.empty(()).uniform_(-bound, bound))
        self.dim = dim

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """alpha = softplus(alpha') > 0, beta = -alpha + softplus(beta') > -alpha."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta = self.alpha_beta()
        diff = z - self.z_ref
        r = diff.norm(dim=1)  # (N,)
        beta_h = beta / (alpha + r)
        # (D - 1) log(1 + beta h) + log(1 + beta h + beta h'(r) r), h' = -1 / (alpha + r)^2
        log_det = (self.dim - 1) * torch.log1p(beta_h) + torch.log1p(beta * alpha / (alpha + r).pow(2))
        return z + beta_h.unsqueeze(1) * diff, log_det


class RadialFlow(FlowTransform):
    """Radial normalising flow on a base transform's posterior (Rezende & Mohamed 2015)."""

    name = "radial"
    Options = FlowOptions
    test_options = {"length": 2, "base_options": {"latent_dim": 4}}

    def make_step(self, index: int) -> nn.Module:
        return RadialStep(self.dim)


# -- IAF --------------------------------------------------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE's autoregressive connections)."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """z = sigma * z + (1 - sigma) * m, [m, s] = MADE(z) autoregressive in ``order``, sigma = sigmoid(s)."""

    def __init__(self, dim: int, hidden: int, reverse: bool) -> None:
        super().__init__()
        # degree of input j: its 1-based position in this step's order (natural, or reversed)
        d_in = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)
        d_hidden = torch.arange(hidden) % max(1, dim - 1) + 1
        # a hidden unit of degree k sees inputs of degree <= k; an output of degree d sees hidden units of degree < d
        self.net = nn.Sequential(
            MaskedLinear(d_hidden[:, None] >= d_in[None, :]),
            nn.ELU(),
            MaskedLinear(d_hidden[:, None] >= d_hidden[None, :]),
            nn.ELU(),
            MaskedLinear(torch.cat([d_in, d_in])[:, None] > d_hidden[None, :]),
        )
        out = self.net[-1]
        assert isinstance(out, MaskedLinear)
        with torch.no_grad():
            out.bias[dim:].fill_(FORGET_BIAS)
        self.dim = dim

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.net(z).split(self.dim, dim=1)
        sigma = torch.sigmoid(s)
        return sigma * z + (1.0 - sigma) * m, F.logsigmoid(s).sum(1)


class IAFlow(FlowTransform):
    """Inverse autoregressive flow (MADE steps, gated update) on a base transform's posterior (Kingma et al. 2016)."""

    name = "iaf"
    Options = IAFOptions
    test_options = {"length": 2, "hidden": 8, "base_options": {"latent_dim": 4}}

    def make_step(self, index: int) -> nn.Module:
        return IAFStep(self.dim, self.options.hidden, reverse=index % 2 == 1)


ZOO_NETWORK: dict[str, Any] = {
    "image_size": 32,
    "channels": 1,
    "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
    "prior": {"name": "normal"},
    "losses": [{"name": "bce"}, {"name": "kl"}],
    "train": {"lr": 1e-3, "batch_size": 64},
}


def _flow_preset(name: str, **options: Any) -> dict[str, Any]:
    transform = {"name": name, "options": {"length": 4, "base": "fc", "base_options": {"latent_dim": 16}, **options}}
    return {**ZOO_NETWORK, "transform": transform}


@hookimpl
def genvae_register_transforms(register: Any) -> None:
    register(PlanarFlow)
    register(RadialFlow)
    register(IAFlow)


@hookimpl
def genvae_register_presets(register: Any) -> None:
    register(
        "vae-planar",
        _flow_preset("planar"),
        help="the zoo's conv VAE (16-value fc latent, BCE + KL) with 4 planar flow steps on the posterior",
    )
    register(
        "vae-radial",
        _flow_preset("radial"),
        help="the zoo's conv VAE (16-value fc latent, BCE + KL) with 4 radial flow steps on the posterior",
    )
    register(
        "vae-iaf",
        _flow_preset("iaf", hidden=64),
        help="the zoo's conv VAE (16-value fc latent, BCE + KL) with 4 IAF steps (MADE, 64 wide) on the posterior",
    )

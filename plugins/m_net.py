"""``m-net``: LapCVAE's M-network prior (Dorta et al. 2017, section 4.3).

For every pyramid level k but the coarsest, two shallow MLPs map the coarser level's posterior
to the prior of z_k:

    p(z_k) = N(R_k(mu_{k+1}), S_k(sigma_{k+1})),        p(z_K) = N(0, I)

where (mu_{k+1}, sigma_{k+1}) come from encoding the *reconstructed* coarser level with
q_{k+1}: the decoder's h_hat_{k+1} with the rebuilt coarser image u(x_hat_{k+2}) as condition,
exactly what the encoder would see at sampling time, when no real image exists. The KL term of
``kl`` is then between two diagonal Gaussians, per level weighted by ``kl.group_weights``.

Choices (docs/lapcvae.md): S_k works on the log scale (log sigma_{k+1}^2 in, log sigma_k^2 out);
the re-encoding runs the level encoders in eval mode (running batch-norm statistics, as at
sampling time) and, with ``detach`` (default), without gradient, so the KL term trains the
level-k posterior and M_k only. Module ``prior.levels.k`` is M_k (greedy training trains it
with level k; ``train_only=['prior']`` retrains all of them).
"""

from __future__ import annotations

import typing
from contextlib import nullcontext

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    ACTIVATIONS,
    PYRAMID,
    BuildContext,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    Prior,
    PyramidDecoder,
    PyramidEncoder,
    PyramidLatent,
    RegisterComponent,
    eval_mode,
    hookimpl,
    int_tuple,
    mlp,
    one_of,
    option,
    pyramid_parts,
    shorten,
    to_bool,
    to_float32,
)


@attrs.frozen
class MNetOptions:
    hidden: tuple[int, ...] = option(
        (128,), "hidden widths of each R_k and S_k MLP (empty: a linear map)", converter=int_tuple
    )
    activation: str = option("lrelu", "activation between the MLP layers", one_of(*ACTIVATIONS))
    detach: bool = option(
        True,
        "stop the KL gradient at the re-encoded coarser posterior (it trains the level's "
        "posterior and M_k only); false lets it reach the coarser encoder and decoder",
        converter=to_bool,
    )

    def __attrs_post_init__(self) -> None:
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden must list positive widths, got {shorten(list(self.hidden))}")


class MNetwork(nn.Module):
    """M_k: R_k maps mu_{k+1} to the prior mean of z_k, S_k maps log sigma_{k+1}^2 to its log-variance."""

    def __init__(self, coarser: int, latent: int, hidden: tuple[int, ...], act: str) -> None:
        super().__init__()
        self.R = mlp([coarser, *hidden, latent], act, last_activation=False)
        self.S = mlp([coarser, *hidden, latent], act, last_activation=False)

    def forward(self, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        return self.R(mean), self.S(logvar)


class MNetPrior(Prior[MNetOptions]):
    """LapCVAE M-network prior: level k's N(R_k(mu_{k+1}), S_k(sigma_{k+1})) from the re-encoded coarser level."""

    name = "m-net"
    Options = MNetOptions
    requires = frozenset({PYRAMID})
    _parts: tuple[PyramidEncoder, PyramidLatent, PyramidDecoder] | None  # kept with refer(), set in attach

    def __init__(self, options: MNetOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        tr = ctx.transform
        self.levels = nn.ModuleList()
        # without pyramid levels nothing is built here: the engine's capability check refuses the model
        if tr is not None and PYRAMID in tr.provides:
            pyramid = typing.cast(PyramidLatent, tr)  # its protocol's members are checked at build
            self.levels.extend(
                MNetwork(pyramid.sizes[k + 1], pyramid.sizes[k], options.hidden, options.activation)
                for k in range(pyramid.num_levels - 1)
            )
        self.refer("_parts", None)  # (encoder, transform, decoder), set in attach

    def attach(self, model: GenerativeModel) -> None:
        try:
            self.refer("_parts", pyramid_parts(model))
        except Exception as exc:
            raise self.fail(str(exc)) from None

    def _pyramid(self) -> tuple[PyramidEncoder, PyramidLatent, PyramidDecoder]:
        assert self._parts is not None, "attach() sets the parts"
        return self._parts

    def reencode(self, j: int, h_hat: Tensor, coarser: Tensor | None) -> tuple[Tensor, Tensor]:
        """(mu_j, log sigma_j^2) of the reconstructed level j (band h_hat_j, rebuilt coarser image x_hat_{j+1})."""
        enc, tr, _ = self._pyramid()
        grad = nullcontext() if not self.options.detach else torch.no_grad()
        with grad, eval_mode(enc.levels[j], tr.levels[j]), self.precision.autocast():
            mean, logvar = tr.level_posterior(j, enc.encode_level(j, h_hat, coarser))
        return to_float32(mean), to_float32(logvar)  # the M network and the KL in float32

    def level_prior(self, k: int, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        """Prior (mean, log-variance) of z_k from the coarser level's (mu_{k+1}, log sigma_{k+1}^2)."""
        return self.levels[k](mean, logvar)

    def forward(self, fwd: ForwardPass) -> Gaussian:
        assert fwd.pyramid is not None and fwd.posterior is not None  # the model's forward sets them
        _, tr, _ = self._pyramid()
        levels = tr.num_levels
        preds, recon = fwd.pyramid.predictions, fwd.pyramid.reconstructions
        zs = tr.split_levels(fwd.posterior.mean)
        means: list[Tensor] = [torch.zeros_like(z) for z in zs]
        logvars: list[Tensor] = [torch.zeros_like(z) for z in zs]
        for k in range(levels - 1):
            j = k + 1
            mu, lv = self.reencode(j, preds[j], recon[j + 1] if j + 1 < levels else None)
            means[k], logvars[k] = self.level_prior(k, mu, lv)
        return Gaussian(tr.join_levels(means), tr.join_levels(logvars))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        """Coarse to fine (paper Figure 2): draw z_K ~ N(0, I), decode level K, re-encode it, M_{K-1} gives
        the prior of z_{K-1}, and so on. The first ``fixed_groups`` levels (coarsest first) come from ``fixed``."""
        enc, tr, dec = self._pyramid()
        levels = tr.num_levels
        kept = tr.split_levels(fixed.to(device)) if fixed is not None and fixed_groups > 0 else None
        zs: list[Tensor | None] = [None] * levels
        rebuilt: list[Tensor | None] = [None] * levels
        mean: Tensor | None = None
        logvar: Tensor | None = None
        for k in range(levels - 1, -1, -1):
            if kept is not None and levels - 1 - k < fixed_groups:
                zs[k] = kept[k].expand(n, -1)
            elif k == levels - 1:
                zs[k] = torch.randn(n, tr.sizes[k], device=device)
            else:
                assert mean is not None and logvar is not None  # re-encoded from level k + 1
                prior_mean, prior_logvar = self.level_prior(k, mean, logvar)
                zs[k] = prior_mean + torch.exp(0.5 * prior_logvar) * torch.randn_like(prior_mean)
            if k == 0:
                break
            drawn = typing.cast("list[Tensor]", zs)  # levels k..K are drawn, and level_u reads only zs[k:]
            h = dec.decode_level(k, tr.level_u(k, drawn))
            coarser = rebuilt[k + 1] if k + 1 < levels else None
            rebuilt[k] = h if coarser is None else h + enc.upsample(coarser)
            mean, logvar = self.reencode(k, h, coarser)
        return tr.join_levels(typing.cast("list[Tensor]", zs))  # every level is drawn now


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(MNetPrior)

"""``vq``: the VQ-VAE (van den Oord, Vinyals and Kavukcuoglu, *Neural Discrete Representation Learning*,
NeurIPS 2017): a deterministic, quantising latent transform, its loss and a categorical prior over its codes.

**Transform** ``vq`` (``stochastic = False``). The encoder's features go through a 1x1 convolution to
z_e(x) in R^{D x H x W}; the posterior is the point z_e (a Gaussian with mean z_e and log-variance 0, never
sampled: the engine takes its mean). The flow quantises every position to its nearest code of the code-book
e in R^{K x D},

    k(h, w) = argmin_j || z_e(h, w) - e_j ||^2,        z_q(h, w) = e_{k(h, w)},

and passes z_q on with the straight-through gradient, z = z_e + sg(z_q - z_e) (its value is z_q, its gradient
dL/dz goes to z_e unchanged). The decoder side is a convolution z -> u as in the ``conv`` transform. What the
loss needs (the indices and z_e, and the z_q that carries the code-book's gradient) goes into the pass under the
typed field ``VQ``; each training pass logs ``vq.perplexity`` = exp(-sum_j p_j log p_j) of the batch's code
frequencies p and ``vq.usage``, the fraction of the K codes used in the batch.

**Code-book updates**, option ``update``:

* ``ema`` (the paper's appendix A.1): with n_j the number of positions assigned to code j in the batch and
  s_j the sum of their z_e, in training mode only, inside the flow and without gradient,

      N_j <- gamma N_j + (1 - gamma) n_j,      m_j <- gamma m_j + (1 - gamma) s_j,
      N~_j = (N_j + eps) / (sum_i N_i + K eps) * sum_i N_i      (Laplace smoothing: no division by 0)
      e_j = m_j / N~_j

  (gamma = ``decay``, eps = ``epsilon``; N starts at 1 and m at the initial code-book, as if each code had been
  assigned itself once, so a code no batch uses stays where it is instead of being divided by eps). The code-book
  is then a buffer, not a parameter.

**Start** (option ``init``): ``data`` (the default) sets the codes to the encoder's z_e at K random positions of the
first training batch, so none starts dead far from the encoder's outputs; ``normal`` keeps N(0, init_std^2) draws.
* ``gradient``: the code-book is a parameter trained by the code-book term || sg(z_e) - z_q ||^2 of the loss.

**Loss** ``vq`` (role "divergence"): per image, summed over the latent's elements and averaged over the batch
(the scale of the ``kl`` term it replaces),

    beta || z_e - sg(z_q) ||^2    (commitment: the encoder only)
    + || sg(z_e) - z_q ||^2       (code-book: only with update = gradient; the code-book only)
    + (- sum_{h,w} log p(k(h, w)))   (only with the categorical prior: its NLL of the detached codes)

**Prior** ``categorical``: an independent categorical over the K codes at each latent position, with learned
logits (start uniform): log p(z) = sum_{h,w} log softmax(logits_{h,w})[k(z, h, w)], where k(z, h, w) is the code
z holds there (its nearest code). Sampling draws a code per position and returns its vector. It is the simplest
learned prior over the codes (the paper fits a PixelCNN after training); the ``vq`` loss's NLL term fits it to
the codes' frequencies during training. It needs the ``vq`` transform.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from genvae.api import (
    ACTIVATIONS,
    BuildContext,
    ForwardPass,
    Gaussian,
    GenerativeModel,
    LatentLayout,
    LatentTransform,
    Loss,
    NoOptions,
    PassField,
    PresetSpec,
    Prior,
    RegisterComponent,
    RegisterNamed,
    activation,
    hookimpl,
    non_negative,
    one_of,
    option,
    positive,
    positive_int,
    to_float,
    to_int,
    unit_interval,
)

UPDATES = ("ema", "gradient")
INITS = ("data", "normal")


@attrs.frozen
class VQData:
    """What a pass's quantisation hands to the ``vq`` loss: the code index per position (rows, H, W), z_e
    (rows, D, H, W) and z_q = e[indices] (rows, D, H, W), whose gradient (update = gradient) reaches the code-book."""

    indices: Tensor
    z_e: Tensor
    z_q: Tensor


#: the quantisation of this pass (set by the ``vq`` transform's flow, read by the ``vq`` loss)
VQ: PassField[VQData] = PassField("vq", "the vq transform's code indices, z_e and z_q of this pass")


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """The index of the nearest code (squared Euclidean distance) at every position of z (rows, D, H, W):
    (rows, H, W). codebook: (K, D)."""
    flat = z.movedim(1, -1).reshape(-1, z.shape[1])  # (rows*H*W, D)
    distances = (
        flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1).unsqueeze(0)
    )  # (rows*H*W, K)
    return distances.argmin(1).view(z.shape[0], *z.shape[2:])


def codes_to_vectors(indices: Tensor, codebook: Tensor) -> Tensor:
    """The code vectors of indices (rows, H, W): (rows, D, H, W)."""
    return codebook[indices].movedim(-1, 1)


@attrs.frozen
class VQOptions:
    codes: int = option(64, "size K of the code-book", positive_int, to_int)
    code_dim: int = option(16, "dimension D of each code (the latent's channels)", positive_int, to_int)
    update: str = option(
        "ema",
        "how the code-book learns: ema (moving averages of the assigned encoder outputs) or gradient "
        "(the loss's code-book term)",
        one_of(*UPDATES),
    )
    decay: float = option(0.99, "ema: decay gamma of the moving averages, in [0, 1]", unit_interval, to_float)
    epsilon: float = option(1e-5, "ema: Laplace smoothing of the cluster sizes, > 0", positive, to_float)
    init: str = option(
        "data",
        "how the codes start: data (the first training batch's z_e at random positions) or normal "
        "(N(0, init_std^2) draws)",
        one_of(*INITS),
    )
    init_std: float = option(1.0, "the codes' N(0, init_std^2) start (before a data start)", positive, to_float)
    kernel: int = option(3, "kernel size of the z -> u convolution (odd)", positive_int, to_int)
    output_activation: str = option("lrelu", "activation after the z -> u convolution", one_of(*ACTIVATIONS))

    def __attrs_post_init__(self) -> None:
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel}")


class VQLatent(LatentTransform[VQOptions]):
    """Vector quantiser (VQ-VAE): conv 1x1 -> z_e, nearest of K codes per position (straight-through); conv z -> u."""

    name = "vq"
    Options = VQOptions
    stochastic = False
    test_options = {"codes": 8, "code_dim": 2}
    codebook: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    started: Tensor

    def __init__(self, options: VQOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        assert ctx.encoder is not None, "the encoder is built before the latent transform"
        in_shape = ctx.encoder.output_shape
        c, h, w = self.require_spatial(
            in_shape, f"encoder '{ctx.encoder.name}'", "vq quantises each position of spatial features"
        )
        k, d = options.codes, options.code_dim
        self.layout = LatentLayout((d, h, w))
        self.output_shape = tuple(in_shape)
        self.to_z = nn.Conv2d(c, d, 1)
        self.from_z = nn.Sequential(
            nn.Conv2d(d, c, options.kernel, 1, options.kernel // 2), activation(options.output_activation)
        )
        codebook = torch.randn(k, d) * options.init_std
        if options.update == "ema":
            self.register_buffer("codebook", codebook)
            # each code counts as assigned itself once: an unused code keeps its place (N_j = m_j / e_j = gamma^t)
            self.register_buffer("cluster_size", torch.ones(k))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # a data start waits for the first training pass; saved, so a resumed or loaded model never restarts
        self.register_buffer("started", torch.tensor(options.init != "data"))
        self._started = options.init != "data"  # the buffer, read once (a host sync on the first training pass only)

    def generation_modules(self) -> list[nn.Module]:
        return [self.from_z]

    def posterior(self, features: Tensor, fwd: ForwardPass | None = None) -> Gaussian:
        """The point z_e(x), as a Gaussian of log-variance 0 (the engine takes its mean: ``stochastic = False``)."""
        z_e = self.to_z(features)
        return Gaussian(z_e, torch.zeros_like(z_e))

    def flow(self, z0: Tensor, fwd: ForwardPass | None = None) -> tuple[Tensor, Tensor | None]:
        """z = the nearest codes of z0 = z_e, straight-through; in a training pass, the EMA update and the logs."""
        if self.training and fwd is not None and not self._started and not z0.is_meta:  # meta: sizing, nothing to start
            if not bool(self.started):
                self.data_start(z0.detach())
            self._started = True
        indices = nearest_codes(z0.detach(), self.codebook.detach())
        z_q = codes_to_vectors(indices, self.codebook)  # a copy: the codes this pass assigned, before the update
        if self.training and fwd is not None and self.options.update == "ema":
            self.ema_update(z0.detach(), indices)
        if fwd is not None:
            fwd[VQ] = VQData(indices, z0, z_q)
            index = indices.flatten()
            counts = z0.new_zeros(self.options.codes).float().index_add_(0, index, z0.new_ones(index.shape[0]).float())
            p = counts / counts.sum()
            fwd.log("vq.perplexity", torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
            fwd.log("vq.usage", (counts > 0).float().mean())
        return z0 + (z_q - z0).detach(), None

    @torch.no_grad()
    def data_start(self, z_e: Tensor) -> None:
        """Codes = z_e at K random positions of the first training batch (with replacement when it has fewer), so
        every code starts where the encoder's outputs are and none is dead from the start."""
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
        k = self.options.codes
        pick = torch.randperm(flat.shape[0], device=flat.device)[:k]
        if pick.numel() < k:
            pick = torch.cat([pick, torch.randint(flat.shape[0], (k - pick.numel(),), device=flat.device)])
        self.codebook.copy_(flat[pick])
        if self.options.update == "ema":
            self.embed_sum.copy_(self.codebook * self.cluster_size.unsqueeze(1))
        self.started.fill_(True)

    @torch.no_grad()
    def ema_update(self, z_e: Tensor, indices: Tensor) -> None:
        """One step of the code-book's moving averages (see the module docstring) from this batch's assignment."""
        k, gamma = self.options.codes, self.options.decay
        flat = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])  # (positions, D)
        index = indices.flatten()
        # per code: how many positions chose it and the sum of their z_e (index_add, which also sizes on meta)
        counts = flat.new_zeros(k).index_add_(0, index, flat.new_ones(index.shape[0]))
        sums = flat.new_zeros(k, flat.shape[1]).index_add_(0, index, flat)
        self.cluster_size.mul_(gamma).add_(counts, alpha=1 - gamma)
        self.embed_sum.mul_(gamma).add_(sums, alpha=1 - gamma)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.options.epsilon) / (n + k * self.options.epsilon) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))

    def generate(self, z: Tensor, fwd: ForwardPass | None = None) -> Tensor:
        return self.from_z(z)


class CategoricalCodes:
    """Independent categoricals over the K codes at each of P positions: logits (P, K); codes read from z by the
    code-book (K, D)."""

    def __init__(self, logits: Tensor, codebook: Tensor) -> None:
        self.logits, self.codebook = logits, codebook

    def log_prob_indices(self, indices: Tensor) -> Tensor:
        """sum over positions of log softmax(logits)[position, index]: (*lead,) for indices (*lead, H, W)."""
        log_p = torch.log_softmax(self.logits, 1)  # (P, K)
        flat = indices.flatten(-2)  # (*lead, P)
        picked = log_p.gather(1, flat.reshape(-1, flat.shape[-1]).t()).t()  # (rows, P)
        return picked.sum(1).view(flat.shape[:-1])

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) per image: (batch,) for z (batch, D, H, W), (k, batch) for (k, batch, D, H, W); z's code at each
        position is its nearest code."""
        lead = z.shape[:-3]
        indices = nearest_codes(z.detach().reshape(-1, *z.shape[-3:]), self.codebook.detach())
        return self.log_prob_indices(indices.view(*lead, *indices.shape[1:]))

    def sample_indices(self, n: int) -> Tensor:
        """n draws of a code index per position: (n, P)."""
        return torch.distributions.Categorical(logits=self.logits).sample((n,))  # (n, P)


class CategoricalPrior(Prior[NoOptions]):
    """Independent categorical over the vq code-book at each latent position, learned logits (start uniform)."""

    name = "categorical"
    gaussian = False

    def __init__(self, options: NoOptions, ctx: BuildContext) -> None:
        super().__init__(options, ctx)
        if not isinstance(ctx.transform, VQLatent):
            name = ctx.transform.name if ctx.transform is not None else "none"
            raise self.fail(
                f"is a distribution over the codes of the 'vq' transform; latent transform '{name}' has none"
            )
        self.quantiser: VQLatent
        self.refer("quantiser", ctx.transform)
        _, h, w = self.layout.shape
        self.grid = (h, w)
        self.logits = nn.Parameter(torch.zeros(h * w, ctx.transform.options.codes))

    def distribution(self) -> CategoricalCodes:
        return CategoricalCodes(self.logits, self.quantiser.codebook)

    def forward(self, fwd: ForwardPass) -> CategoricalCodes:
        return self.distribution()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        model: GenerativeModel,
        device: torch.device | str,
        fixed: Tensor | None = None,
        fixed_groups: int = 0,
    ) -> Tensor:
        indices = self.distribution().sample_indices(n).view(n, *self.grid)
        z = codes_to_vectors(indices, self.quantiser.codebook).to(device)
        if fixed is not None and fixed_groups > 0:
            mask = self.layout.group_mask(range(fixed_groups), device=device)
            z = torch.where(mask, fixed.to(device).expand_as(z), z)
        return z


@attrs.frozen
class VQLossOptions:
    beta: float = option(0.25, "weight of the commitment term ||z_e - sg(z_q)||^2", non_negative, to_float)


class VQLoss(Loss[VQLossOptions]):
    """VQ-VAE's commitment (and code-book) terms, and the categorical prior's NLL of the codes."""

    name = "vq"
    Options = VQLossOptions
    role = "divergence"

    def __init__(self, options: VQLossOptions, ctx: BuildContext, weight: float = 1.0) -> None:
        super().__init__(options, ctx, weight)
        if not isinstance(ctx.transform, VQLatent):
            name = ctx.transform.name if ctx.transform is not None else "none"
            raise self.fail(f"needs the 'vq' latent transform (a code-book to commit to); latent transform '{name}'")
        self.gradient_codebook = ctx.transform.options.update == "gradient"
        self.categorical = isinstance(ctx.prior, CategoricalPrior)

    def forward(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        data = fwd[VQ]
        rows = data.z_e.shape[0]
        terms = {
            "commitment": self.weight
            * self.options.beta
            * (data.z_e - data.z_q.detach()).pow(2).flatten(1).sum(1).mean()
        }
        if self.gradient_codebook:
            terms["codebook"] = self.weight * (data.z_e.detach() - data.z_q).pow(2).flatten(1).sum(1).mean()
        if self.categorical:
            prior = fwd.prior
            assert isinstance(prior, CategoricalCodes)
            terms["prior_nll"] = -self.weight * prior.log_prob_indices(data.indices.detach()).sum() / rows
        return terms


@hookimpl
def genvae_register_transforms(register: RegisterComponent[LatentTransform]) -> None:
    register(VQLatent)


@hookimpl
def genvae_register_priors(register: RegisterComponent[Prior]) -> None:
    register(CategoricalPrior)


@hookimpl
def genvae_register_losses(register: RegisterComponent[Loss]) -> None:
    register(VQLoss)


@hookimpl
def genvae_register_presets(register: RegisterNamed[PresetSpec]) -> None:
    # 32 px through the conv encoder's 3 halvings: a 4x4 grid of 16-d codes from a book of 64, i.e. 16 positions
    # of log2(64) = 6 bits: at most 96 bits per image
    register(
        "vq-vae",
        {
            "image_size": 32,
            "channels": 1,
            "encoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "transform": {"name": "vq", "options": {"codes": 64, "code_dim": 16}},
            "decoder": {"name": "conv", "options": {"width": 32, "depth": 3}},
            "prior": {"name": "categorical"},
            "losses": [{"name": "bce"}, {"name": "vq"}],
            "train": {"lr": 1e-3, "batch_size": 64},
        },
        help="VQ-VAE: conv encoder/decoder, a 4x4 grid of codes from a 64 x 16 code-book (EMA updates), "
        "a learned categorical prior per position, BCE + commitment",
    )

"""Hand-written PyTorch training steps for ``cvae``, ``crvae-gan-small`` and ``lapcvae-small``, the baseline
of the engine-overhead benchmark.

Plain torch, no genvae: the caller passes the already-built networks (encoder, latent transform, decoder,
prior, discriminator trunk and heads) and plain numbers; the wiring between the networks, every loss
formula, the random draws, the update order and the optimisers are written out here, as a researcher
would write them for these two models. The steps compute the same values as genvae's
``Trainer.train_step`` on the same weights and seed, drawing their random numbers in the same order
(``benchmarks/handwritten_parity.py`` checks this); they return their loss values under the names genvae
logs them by, detached, with no host sync of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Step = Callable[[Tensor], dict[str, Tensor]]


def _device(*modules: nn.Module) -> torch.device:
    return next(p for m in modules for p in m.parameters()).device


def _adam(
    groups: Sequence[tuple[Iterable[nn.Parameter], float]], betas, weight_decay: float, device: torch.device
) -> torch.optim.Adam:
    """Adam over ``(params, lr)`` groups; fused on CUDA, as genvae's optimisers are."""
    kwargs: dict = {"betas": tuple(betas), "weight_decay": weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.Adam([{"params": list(ps), "lr": lr} for ps, lr in groups], **kwargs)


def vae_step_factory(encoder: nn.Module, transform: nn.Module, decoder: nn.Module, lr: float) -> Step:
    """The plain VAE step (``cvae``): reparameterise, tanh decoder, MSE summed per image + KL, one Adam."""
    params = [p for m in (encoder, transform, decoder) for p in m.parameters()]
    opt = _adam([(params, lr)], (0.9, 0.999), 0.0, _device(encoder))

    def step(x: Tensor) -> dict[str, Tensor]:
        post = transform.posterior(encoder(x))
        z = post.mean + torch.exp(0.5 * post.logvar) * torch.randn(post.mean.shape, device=x.device)
        x_hat = torch.tanh(decoder(transform.generate(z)))
        mse = (x_hat - x).pow(2).flatten(1).sum(1).mean()
        kl = (0.5 * (torch.exp(post.logvar) + post.mean.pow(2) - 1.0 - post.logvar)).flatten(1).sum(1).mean()
        loss = mse + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"mse": mse.detach(), "kl": kl.detach(), "model/total": loss.detach()}

    return step


def _minimise(optimizer: torch.optim.Optimizer, loss: Tensor, clamp: tuple[list[nn.Parameter], float] | None = None):
    """One optimiser update on ``loss``; the gradients of ``clamp``'s parameters are clamped to +-value first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clamp is not None:
        nn.utils.clip_grad_value_(*clamp)
    optimizer.step()


def _group_weights(weights: Sequence[float], shape: Sequence[int], device: torch.device) -> Tensor:
    """Per-element weights of a latent of ``shape`` cut into len(weights) equal contiguous groups (time steps)."""
    numel = 1
    for s in shape:
        numel *= s
    per_group = torch.tensor(list(weights), dtype=torch.float32)
    return torch.repeat_interleave(per_group, numel // len(weights)).view(*shape).to(device)


# -- crVAE-GAN ----------------------------------------------------------------------------------------------


def crvae_gan_step_factory(
    encoder: nn.Module,
    transform: nn.Module,
    decoder: nn.Module,
    trunk: nn.Module,
    gan_head: nn.Module,
    mi_head: nn.Module,
    hyper: dict,
) -> Step:
    """One crVAE-GAN training step in the authors' update order.

    Networks: ``encoder`` (image -> features), ``transform`` (the channel-recurrent latent: ``posterior``,
    ``generate`` and its recurrent submodules ``var``, ``gen.lstm``, ``gen.linear`` and bias ``gen.bias``),
    ``decoder`` (u -> tanh logits), the discriminator's ``trunk`` and ``gan_head`` (trunk features -> logit),
    and the MI head ``mi_head`` (trunk features -> u). The prior is N(0, I).

    ``hyper`` (plain numbers): ``lr``, ``betas``, ``weight_decay``, ``discriminator_lr``, ``mi_lr``,
    ``recurrent_lr_mult`` and ``recurrent_grad_clamp`` (the latent's recurrent paths), ``trunk_lr_mult``,
    ``latent_shape`` (c, h, w), ``mse_weight``, ``kl_weight``, ``kl_group_weights`` (per time step),
    ``adv_weight``, ``beta``, ``mix`` (fractions of real images, reconstructions and prior samples in the
    discriminator's batch), ``skip_below``, ``mi_weight``, ``kappa``, ``mi_group_weights`` (per time step),
    ``mi_weight_prior`` (whether the group weights also weight the prior branch's MI error).

    Per step: the forward pass x -> z ~ q(z|x) -> u -> x_hat, then five updates: the MI head and trunk on the
    reconstructions; encoder, latent and decoder on pixel MSE + KL + adversarial + MI terms of the
    reconstructions; new prior samples, the MI head and trunk on them; the generator on the adversarial and
    MI terms of those samples; the discriminator on real images, reconstructions and prior samples (skipped
    when its error rate is under ``skip_below``: the step's one host sync, part of the algorithm).
    """
    h = hyper
    device = _device(encoder)
    latent_shape = tuple(h["latent_shape"])
    kl_weights = _group_weights(h["kl_group_weights"], latent_shape, device).flatten()
    mi_weights = _group_weights(h["mi_group_weights"], latent_shape, device)
    adv_scale = h["adv_weight"] * h["beta"]
    mi_scale = h["mi_weight"] * h["kappa"]
    _, f_recon, f_prior = h["mix"]
    betas, decay = h["betas"], h.get("weight_decay", 0.0)

    # the recurrent paths (the authors' var_encoder / var_decoder) train at a lower rate with clamped gradients
    recurrent = [p for m in (transform.var, transform.gen.lstm, transform.gen.linear) for p in m.parameters()]
    recurrent_ids = {id(p) for p in recurrent}
    direct = [p for m in (encoder, transform, decoder) for p in m.parameters() if id(p) not in recurrent_ids]
    lr = h["lr"]
    model_opt = _adam([(direct, lr), (recurrent, lr * h["recurrent_lr_mult"])], betas, decay, device)
    clamp = (recurrent, h["recurrent_grad_clamp"]) if h["recurrent_grad_clamp"] > 0 else None
    trunk_mult = h["trunk_lr_mult"]
    mi_opt = _adam(
        [(mi_head.parameters(), h["mi_lr"]), (trunk.parameters(), h["mi_lr"] * trunk_mult)], betas, decay, device
    )
    d_opt = _adam(
        [(trunk.parameters(), h["discriminator_lr"] * trunk_mult), (gan_head.parameters(), h["discriminator_lr"])],
        betas,
        decay,
        device,
    )

    def mi_error(features: Tensor, target: Tensor, weighted: bool) -> Tensor:
        """Mean squared error of the MI head's prediction of u, each element weighted by its time step."""
        squared = (mi_head(features) - target).pow(2)
        return (mi_weights * squared).mean() if weighted else squared.mean()

    def fool(features: Tensor) -> Tensor:
        """The generator's non-saturating GAN loss, -log D(x~)."""
        logits = gan_head(features)
        return adv_scale * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def step(x: Tensor) -> dict[str, Tensor]:
        n = x.shape[0]
        # forward pass: x -> q(z|x) -> z (reparameterised) -> u -> x_hat
        post = transform.posterior(encoder(x))
        mean, logvar = post.mean, post.logvar
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
        u = transform.generate(z)
        x_hat = torch.tanh(decoder(u))
        target = (u - transform.gen.bias).detach()  # what MI recovers: the generation LSTM's output

        # 1. MI head and trunk on the reconstructions
        q_post = mi_error(trunk(x_hat.detach()), target, True)
        _minimise(mi_opt, q_post)

        # 2. encoder, latent and decoder on the reconstruction branch
        mse = h["mse_weight"] * (x_hat - x).pow(2).mean()
        kl_elements = 0.5 * (torch.exp(logvar) + mean.pow(2) - 1.0 - logvar)
        kl = h["kl_weight"] * (kl_elements.flatten(1) * kl_weights).sum(1).mean()
        fake = trunk(x_hat)
        g_recon = fool(fake)
        mi_post = mi_scale * mi_error(fake, target, True)
        model_post = mse + kl + g_recon + mi_post
        _minimise(model_opt, model_post, clamp)

        # 3. new prior samples through the updated generator; MI head and trunk on them
        z_prior = torch.randn(n, *latent_shape, device=x.device)
        u_prior = transform.generate(z_prior)
        x_prior = torch.tanh(decoder(u_prior))
        target_prior = (u_prior - transform.gen.bias).detach()
        q_prior = mi_error(trunk(x_prior.detach()), target_prior, h["mi_weight_prior"])
        _minimise(mi_opt, q_prior)

        # 4. the generator on the prior branch
        fake_prior = trunk(x_prior)
        g_prior = fool(fake_prior)
        mi_prior = mi_scale * mi_error(fake_prior, target_prior, h["mi_weight_prior"])
        model_prior = g_prior + mi_prior
        _minimise(model_opt, model_prior, clamp)

        # 5. the discriminator on real images, reconstructions and prior samples, all detached
        recon, prior = int(n * f_recon), int(n * f_prior)
        real = n - recon - prior
        batch = torch.cat([x[:real], x_hat[real : real + recon].detach(), x_prior[real + recon :].detach()])
        labels = torch.cat([torch.ones(real, device=x.device), torch.zeros(n - real, device=x.device)])
        logits = gan_head(trunk(batch))
        d = F.binary_cross_entropy_with_logits(logits, labels)
        out = {}
        if h["skip_below"] > 0:  # an already strong discriminator sits this step out
            with torch.no_grad():
                error_rate = ((logits > 0).float() != labels).float().mean()
            skipped = bool(error_rate < h["skip_below"])
            out["discriminator/skipped"] = torch.tensor(float(skipped), device=x.device)
        else:
            skipped = False
        if not skipped:
            _minimise(d_opt, d)

        values = {
            "mi.q@posterior": q_post,
            "mi@posterior/total": q_post,
            "mse": mse,
            "kl": kl,
            "adv.g_recon": g_recon,
            "mi@posterior": mi_post,
            "model@posterior/total": model_post,
            "mi.q@prior": q_prior,
            "mi@prior/total": q_prior,
            "adv.g_prior": g_prior,
            "mi@prior": mi_prior,
            "model@prior/total": model_prior,
            "adv.d": d,
            "discriminator/total": d,
        }
        out.update({k: v.detach() for k, v in values.items()})
        return out

    return step


# -- LapCVAE ------------------------------------------------------------------------------------------------

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # / 16: Burt & Adelson's 5-tap kernel


def blur_down(x: Tensor, kernel: str) -> Tensor:
    """d(x): blur and halve; ``binomial``: separable [1, 4, 6, 4, 1]/16, borders replicated (REDUCE)."""
    if kernel == "bilinear":
        return F.avg_pool2d(x, 2)
    b, c, h, w = x.shape
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    y = F.pad(x.reshape(b * c, 1, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, 5), stride=(1, 2))
    y = F.conv2d(y, k.view(1, 1, 5, 1), stride=(2, 1))
    return y.view(b, c, h // 2, w // 2)


def _expand_last(x: Tensor) -> Tensor:
    """Binomial EXPAND of the last axis, n -> 2n, borders replicated."""
    left = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
    right = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    even = (left + 6.0 * x + right) / 8.0
    odd = (x + right) / 2.0
    return torch.stack([even, odd], dim=-1).flatten(-2)


def upsample(x: Tensor, kernel: str) -> Tensor:
    """u(x): double the size with the binomial EXPAND (or bilinear interpolation)."""
    if kernel == "bilinear":
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return _expand_last(_expand_last(x).transpose(-1, -2)).transpose(-1, -2)


class _EvalMode:
    """Modules in eval mode inside the block (batch norms read their running statistics), flags restored after."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.flags = [(m, m.training) for module in self.modules for m in module.modules()]
        for module in self.modules:
            module.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


def lapcvae_step_factory(
    encoder: nn.Module, transform: nn.Module, decoder: nn.Module, prior: nn.Module, hyper: dict
) -> Step:
    """One LapCVAE training step: a Laplacian pyramid of conditional VAEs with the M-network prior.

    Networks, one per pyramid level k (0 = finest): ``encoder.levels[k]`` (concat[h_k, u(b_{k+1})] -> features;
    h_K alone at the coarsest), ``transform.levels[k]`` (``to_params``: features -> (mu_k, log sigma_k^2);
    ``from_z``: concat[z_k..z_K] -> u_k), ``decoder.levels[k]`` (u_k -> h_hat_k) and ``prior.levels[k]`` for
    k < K (M_k: (mu_{k+1}, log sigma_{k+1}^2) of the re-encoded coarser level -> prior of z_k).

    ``hyper`` (plain numbers; per-level lists by level k, finest first): ``lr``, ``betas``, ``weight_decay``,
    ``kernel`` (the pyramid's: binomial or bilinear), ``latent_sizes``, ``u_shapes`` (decoder input (c, h, w)
    per level), ``recon_weight`` and ``level_weights`` (per-level squared error, each level's per-image sum
    scaled by its area ratio to the image), ``kl_weight`` and ``kl_level_weights`` (lambda_k).

    The latent is one flat vector, coarsest level first; z is drawn for all of it at once.
    """
    h = hyper
    device = _device(encoder)
    kernel = h["kernel"]
    levels = len(h["latent_sizes"])
    sizes = list(h["latent_sizes"])
    u_shapes = [tuple(s) for s in h["u_shapes"]]
    coarsest_first = sizes[::-1]
    kl_weights = torch.repeat_interleave(
        torch.tensor(list(h["kl_level_weights"])[::-1], dtype=torch.float32), torch.tensor(coarsest_first)
    ).to(device)
    enc, lat, dec, mnet = encoder.levels, transform.levels, decoder.levels, prior.levels
    params = [p for m in (encoder, transform, decoder, prior) for p in m.parameters()]
    optimizer = _adam([(params, h["lr"])], h["betas"], h.get("weight_decay", 0.0), device)

    def level_input(k: int, band: Tensor, coarser: Tensor | None) -> Tensor:
        return band if k == levels - 1 else torch.cat([band, upsample(coarser, kernel)], dim=1)

    def join(parts: list[Tensor]) -> Tensor:
        """Per-level tensors (finest first) -> one flat latent, coarsest first."""
        return torch.cat(parts[::-1], dim=1)

    def step(x: Tensor) -> dict[str, Tensor]:
        # the Laplacian pyramid: b_0 = x, b_{k+1} = d(b_k); h_k = b_k - u(b_{k+1}), h_K = b_K
        blurred = [x]
        for _ in range(levels - 1):
            blurred.append(blur_down(blurred[-1], kernel))
        bands = [blurred[k] - upsample(blurred[k + 1], kernel) for k in range(levels - 1)] + [blurred[-1]]
        coarser = [*blurred[1:], None]

        # q(z_k | h_k, b_{k+1}) per level, then one reparameterised draw over the whole latent
        params_k = [
            lat[k].to_params(enc[k](level_input(k, bands[k], coarser[k])).flatten(1)).chunk(2, dim=1)
            for k in range(levels)
        ]
        mean, logvar = join([m for m, _ in params_k]), join([lv for _, lv in params_k])
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
        zs = list(z.split(coarsest_first, dim=1))[::-1]

        # decode every level from concat[z_k..z_K]; rebuild x_k = h_hat_k + u(x_{k+1})
        preds = [dec[k](lat[k].from_z(torch.cat(zs[k:], dim=1)).view(-1, *u_shapes[k])) for k in range(levels)]
        rebuilt = [preds[-1]]
        for band in reversed(preds[:-1]):
            rebuilt.append(band + upsample(rebuilt[-1], kernel))
        rebuilt = rebuilt[::-1]

        # M-network prior: level k's prior from the coarser level's reconstruction, re-encoded as at sampling
        # time (eval mode, no gradient); the coarsest level's prior is N(0, I)
        prior_means = [torch.zeros_like(zk) for zk in zs]
        prior_logvars = [torch.zeros_like(zk) for zk in zs]
        for k in range(levels - 1):
            j = k + 1
            with torch.no_grad(), _EvalMode(enc[j], lat[j]):
                inp = level_input(j, preds[j], rebuilt[j + 1] if j + 1 < levels else None)
                mu, lv = lat[j].to_params(enc[j](inp).flatten(1)).chunk(2, dim=1)
            prior_means[k], prior_logvars[k] = mnet[k](mu, lv)
        p_mean, p_logvar = join(prior_means), join(prior_logvars)

        # per-level squared error on the bands, each level's sum scaled to the full image's pixel count
        full = bands[0].shape[-2] * bands[0].shape[-1]
        recon = x.new_zeros(())
        for k, (pred, band) in enumerate(zip(preds, bands, strict=True)):
            weight = h["level_weights"][k]
            if weight:
                weight *= full / (band.shape[-2] * band.shape[-1])
                recon = recon + weight * (pred - band).pow(2).flatten(1).sum(1).mean()
        recon = h["recon_weight"] * recon

        # KL between two diagonal Gaussians, weighted per level (lambda_k), summed over the latent, batch mean
        kl_elements = 0.5 * (
            p_logvar - logvar + (torch.exp(logvar) + (mean - p_mean).pow(2)) * torch.exp(-p_logvar) - 1.0
        )
        kl = h["kl_weight"] * (kl_elements.flatten(1) * kl_weights).sum(1).mean()

        total = recon + kl
        _minimise(optimizer, total)
        return {"pyramid-mse": recon.detach(), "kl": kl.detach(), "model/total": total.detach()}

    return step

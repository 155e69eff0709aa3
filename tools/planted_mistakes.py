"""Plant single-line mistakes in the paper plugins and the engine, one at a time, and check that a test fails for
each.

Each entry replaces one exact line (or expression) of the source; the script applies it in this checkout,
runs the tests, and restores the file whatever happens (it refuses to start when a file it would touch has
uncommitted changes). A mistake no test catches is printed as MISSED and makes the exit status 1.

    python tools/planted_mistakes.py                     # all of them (about 40 s each on 2 CPU cores)
    python tools/planted_mistakes.py --only CReLU        # those whose label contains the text
    python tools/planted_mistakes.py --list
"""

# ruff: noqa: E501  (the table holds whole source lines)
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/plugins", "tests/test_schedule.py", "tests/test_train.py"]
DDP_TESTS = ["tests/test_distributed.py"]
CACHE_TESTS = ["tests/test_cache.py"]
FAST_TESTS = ["tests/test_fast_path.py"]
SHAPES_TESTS = ["tests/plugins/test_shapes.py"]
REPORT_TESTS = ["tests/test_report.py", "tests/test_compose.py"]
PYTHON_API_TESTS = ["tests/test_python_api.py"]

#: (what the mistake is, file, the exact original text, the mistaken text[, the tests to run instead of TESTS])
MISTAKES = [
    (
        "discriminator labels swapped (real 0, fake 1)",
        "plugins/adv.py",
        "labels = torch.cat([torch.ones(real, device=batch.device), torch.zeros(n - real, device=batch.device)])",
        "labels = torch.cat([torch.zeros(real, device=batch.device), torch.ones(n - real, device=batch.device)])",
    ),
    (
        "generator GAN loss with label 0 (log(1 - D) ascent lost)",
        "plugins/adv.py",
        'terms["g_recon"] = scale * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))',
        'terms["g_recon"] = scale * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))',
    ),
    (
        "discriminator batch: reconstructions not detached",
        "plugins/adv.py",
        "fwd.x_hat[real : real + recon].detach()",
        "fwd.x_hat[real : real + recon]",
    ),
    (
        "minibatch discrimination summed, not averaged",
        "plugins/adv.py",
        "torch.exp(-dist).mean(1)",
        "torch.exp(-dist).sum(1)",
    ),
    (
        "gan_to_encoder ignored (baseline encoder gets GAN gradient)",
        "plugins/adv.py",
        "        if self.options.gan_to_encoder:\n            assert fwd.x_hat is not None",
        "        if True:\n            assert fwd.x_hat is not None",
    ),
    ("Torch7 dropout: eval output not scaled by 1 - p", "plugins/adv.py", "return x * (1.0 - self.p)", "return x"),
    ("beta missing from the generator terms", "plugins/adv.py", "scale = self.weight * o.beta", "scale = self.weight"),
    (
        "prior-branch generator term computed on the posterior branch",
        "plugins/adv.py",
        '        if fwd.wants("prior"):\n            names.append("prior")',
        '        if fwd.wants("posterior"):\n            names.append("prior")',
    ),
    (
        "MI target not detached",
        "plugins/mi.py",
        "return typing.cast(MITarget, self._transform).mi_target(z, u).detach()",
        "return typing.cast(MITarget, self._transform).mi_target(z, u)",
    ),
    (
        "MI per-step weights not applied",
        "plugins/mi.py",
        "return (self.element_weights * squared).mean() if weighted else squared.mean()",
        "return squared.mean()",
    ),
    (
        "kappa missing from the MI term",
        "plugins/mi.py",
        'return {"mi": self.weight * self.options.kappa * typing.cast(Tensor, total)}',
        'return {"mi": self.weight * typing.cast(Tensor, total)}',
    ),
    (
        "MI phase: generated images not detached",
        "plugins/mi.py",
        "images = torch.cat([x.detach() for _, x, _ in pairs])",
        "images = torch.cat([x for _, x, _ in pairs])",
    ),
    (
        "MI target is u with its bias",
        "plugins/cr_lstm/components.py",
        "        return u - self.gen.bias",
        "        return u",
    ),
    (
        "KL: -logvar sign flipped",
        "core/components.py",
        "return 0.5 * (torch.exp(self.logvar) + self.mean.pow(2) - 1.0 - self.logvar)",
        "return 0.5 * (torch.exp(self.logvar) + self.mean.pow(2) - 1.0 + self.logvar)",
    ),
    (
        "KL per-step weights not applied",
        "plugins/kl.py",
        "            kl = kl * self.element_weights",
        "            kl = kl",
    ),
    (
        "KL averaged over elements instead of summed",
        "plugins/kl.py",
        'return {"kl": scale * kl.sum(1).mean()}',
        'return {"kl": scale * kl.mean()}',
    ),
    (
        "MSE sum reduction averages instead",
        "core/layers.py",
        "    return values.flatten(1).sum(1).mean()",
        "    return values.flatten(1).mean(1).mean()",
    ),
    (
        "CReLU without the negation",
        "plugins/cr_lstm/components.py",
        "return F.relu(torch.cat([x, -x], dim=1))",
        "return F.relu(torch.cat([x, x], dim=1))",
    ),
    (
        "forget-gate bias on the input gate",
        "plugins/cr_lstm/components.py",
        'getattr(lstm, f"bias_ih_l{layer}")[h : 2 * h].fill_(value)',
        'getattr(lstm, f"bias_ih_l{layer}")[0:h].fill_(value)',
    ),
    (
        "paper presets' BatchNorm eps 1e-5",
        "plugins/cr_lstm/presets.py",
        'PAPER_BN = {"bn_eps": 1e-6, "bn_momentum": 0.9}',
        'PAPER_BN = {"bn_eps": 1e-5, "bn_momentum": 0.9}',
    ),
    (
        "schedule: every update sees all branches",
        "core/training/step.py",
        "            fwd.branch, fwd.update = update.branch, i",
        '            fwd.branch, fwd.update = "all", i',
    ),
    (
        "schedule: fresh ignored",
        "core/training/step.py",
        "            if update.fresh:  # recompute",
        "            if False:  # recompute",
    ),
    (
        "authors' order: discriminator first",
        "plugins/cr_lstm/presets.py",
        'AUTHORS_SCHEDULE = ["mi@posterior", "model@posterior", "mi@prior:fresh", "model@prior", "discriminator"]',
        'AUTHORS_SCHEDULE = ["discriminator", "mi@posterior", "model@posterior", "mi@prior:fresh", "model@prior"]',
    ),
    (
        "baseline discriminator at full lr",
        "plugins/cr_lstm/presets.py",
        '    "phase_lr": {"discriminator": PAPER_TRAIN["lr"] / 2},\n    "schedule": BASELINE_SCHEDULE,',
        '    "phase_lr": {"discriminator": PAPER_TRAIN["lr"]},\n    "schedule": BASELINE_SCHEDULE,',
    ),
    (
        "REDUCE kernel [1,2,1]/4",
        "plugins/laplacian/pyramid.py",
        "_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # / 16",
        "_BINOMIAL = (0.0, 4.0, 8.0, 4.0, 0.0)  # / 16  ([1, 2, 1]/4)",
    ),
    (
        "REDUCE zero padding instead of a replicated border",
        "plugins/laplacian/pyramid.py",
        'mode="replicate")',
        'mode="constant")',
    ),
    (
        "EXPAND by nearest neighbour",
        "plugins/laplacian/pyramid.py",
        "    return _expand_last(_expand_last(x).transpose(-1, -2)).transpose(-1, -2)",
        '    return F.interpolate(x, scale_factor=2.0, mode="nearest")',
    ),
    (
        "h_k = b_k - b_{k+1} (no EXPAND)",
        "plugins/laplacian/pyramid.py",
        "return [bs[k] - upsample(bs[k + 1], kernel) for k in range(levels - 1)] + [bs[-1]]",
        "return [bs[k] - bs[k + 1] for k in range(levels - 1)] + [bs[-1]]",
    ),
    (
        "h_k = b_k - nearest-EXPAND(b_{k+1})",
        "plugins/laplacian/pyramid.py",
        "return [bs[k] - upsample(bs[k + 1], kernel) for k in range(levels - 1)] + [bs[-1]]",
        "return [bs[k] - F.interpolate(bs[k + 1], scale_factor=2.0) for k in range(levels - 1)] + [bs[-1]]",
    ),
    (
        "level k's decoder reads z_{k-1} instead of z_k",
        "plugins/laplacian/components.py",
        "return self.level(k).from_z(torch.cat(zs[k:], dim=1))",
        "return self.level(k).from_z(torch.cat([zs[k - 1] if k else zs[k], *zs[k + 1:]], dim=1))",
    ),
    (
        "level k's decoder reads z_k only",
        "plugins/laplacian/components.py",
        "return self.level(k).from_z(torch.cat(zs[k:], dim=1))",
        "return self.level(k).from_z(torch.cat([zs[k]] * (len(zs) - k), dim=1))",
    ),
    (
        "per-level lists not reversed",
        "plugins/laplacian/pyramid.py",
        "    return list(reversed(values))",
        "    return list(values)",
    ),
    (
        "pyramid-mse level weights reversed",
        "plugins/laplacian/loss.py",
        'self.weights = levels_option(self, options.level_weights or (1.0,), levels, "level_weights")',
        'self.weights = levels_option(self, options.level_weights or (1.0,), levels, "level_weights")[::-1]',
    ),
    (
        "latent groups finest first",
        "plugins/laplacian/components.py",
        'self.layout = LatentLayout((sum(sizes),), group_sizes=tuple(reversed(sizes)), group_label="level")',
        'self.layout = LatentLayout((sum(sizes),), group_sizes=tuple(sizes), group_label="level")',
    ),
    (
        "no 4^k area scale in pyramid-mse",
        "plugins/laplacian/loss.py",
        "weight *= full / (target.shape[-2] * target.shape[-1])",
        "weight *= 1",
    ),
    (
        "M reads the real image's posterior",
        "plugins/m_net.py",
        "mu, lv = self.reencode(j, preds[j], recon[j + 1] if j + 1 < levels else None)",
        "mu, lv = zs[j], tr.split_levels(state.posterior.logvar)[j]",
    ),
    (
        "M re-encodes conditioned on the real coarser image",
        "plugins/m_net.py",
        "mu, lv = self.reencode(j, preds[j], recon[j + 1] if j + 1 < levels else None)",
        'mu, lv = self.reencode(j, preds[j], state.extras["laplacian.b"][j + 1] if j + 1 < levels else None)',
    ),
    (
        "S_k reads the mean",
        "plugins/m_net.py",
        "return self.R(mean), self.S(logvar)",
        "return self.R(mean), self.S(mean)",
    ),
    (
        "m-net detach ignored",
        "plugins/m_net.py",
        "grad = nullcontext() if not self.options.detach else torch.no_grad()",
        "grad = nullcontext()",
    ),
    (
        "sampler draws free levels from N(0, I)",
        "plugins/m_net.py",
        "zs[k] = prior_mean + torch.exp(0.5 * prior_logvar) * torch.randn_like(prior_mean)",
        "zs[k] = torch.randn_like(prior_mean)",
    ),
    (
        "sampler ignores S_k",
        "plugins/m_net.py",
        "zs[k] = prior_mean + torch.exp(0.5 * prior_logvar) * torch.randn_like(prior_mean)",
        "zs[k] = prior_mean + torch.randn_like(prior_mean)",
    ),
    (
        "sampler keeps the finest groups",
        "plugins/m_net.py",
        "if kept is not None and levels - 1 - k < fixed_groups:",
        "if kept is not None and k < fixed_groups:",
    ),
    (
        "edit keeps the input's levels, not the painted ones",
        "plugins/laplacian/editing.py",
        "painted = tr.split_levels(model.encode(coarse).mean)",
        "painted = tr.split_levels(model.encode(x).mean)",
    ),
    (
        "edit keeps one level too few",
        "plugins/laplacian/editing.py",
        "fixed=fixed, fixed_groups=keep_levels)",
        "fixed=fixed, fixed_groups=keep_levels - 1)",
    ),
    (
        "RMSE without the 127.5 scale",
        "plugins/metrics.py",
        "((x_hat.double() - x.double()) * 127.5)",
        "((x_hat.double() - x.double()))",
    ),
    (
        "RMSE pooled over all images",
        "plugins/metrics.py",
        "* 127.5).pow(2).flatten(1).mean(1).sqrt()",
        "* 127.5).pow(2).mean().sqrt().expand(len(x))",
    ),
    (
        "condition=reconstruction reads the real b_{k+1}",
        "plugins/laplacian/components.py",
        "            feats.append(self.encode_level(k, hs[k], coarser[k]))",
        "            feats.append(self.encode_level(k, hs[k], bs[k + 1] if k + 1 < levels else None))",
    ),
    (
        "Poisson stencil of 4 neighbours at the border",
        "plugins/laplacian/editing.py",
        "count = _neighbour_sum(torch.ones_like(s))",
        "count = torch.full_like(s, 4.0)",
    ),
    (
        "Poisson without the source's guidance",
        "plugins/laplacian/editing.py",
        "b = m * (count * s - _neighbour_sum(s) + _neighbour_sum((1.0 - m) * t))",
        "b = m * _neighbour_sum((1.0 - m) * t)",
    ),
    (
        "--blend poisson does an alpha blend",
        "plugins/laplacian/editing.py",
        "        return poisson_blend(samples, recon, mask)",
        "        return mask * samples + (1.0 - mask) * recon",
    ),
    # evaluation, completion, perceptual loss, Stage2
    (
        "PR radius: k-th neighbour counting the point itself",
        "plugins/metrics.py",
        "d.kthvalue(k + 1, dim=1)",
        "d.kthvalue(k, dim=1)",
    ),
    (
        "precision and recall swapped",
        "plugins/metrics.py",
        "precision = _inside(fake, real, _kth_radius(real, k))",
        "precision = _inside(real, fake, _kth_radius(fake, k))",
    ),
    (
        "KID subsets as large as the sets",
        "plugins/metrics.py",
        "size = max(2, min(subset_size, min(len(real), len(fake)) // 2))",
        "size = min(subset_size, len(real), len(fake))",
    ),
    (
        "completion: log(1 - D) with the wrong sign",
        "plugins/completion.py",
        "value = value - tau * F.softplus(logits)",
        "value = value + tau * F.softplus(logits)",
    ),
    (
        "completion: error over the whole image, not the visible part",
        "plugins/completion.py",
        "value = ((x_hat - x) * m).pow(2)",
        "value = (x_hat - x).pow(2)",
    ),
    (
        "completion keeps the worst start",
        "plugins/completion.py",
        "pick = value.view(starts, b).argmin(0) * b",
        "pick = value.view(starts, b).argmax(0) * b",
    ),
    ("completion: prior term without gamma", "plugins/completion.py", "+ gamma * 0.5 * z.pow(2)", "+ 0.5 * z.pow(2)"),
    (
        "perceptual: layer weights ignored",
        "plugins/perceptual.py",
        "total = sum(w * (f - r).pow(2).mean()",
        "total = sum((f - r).pow(2).mean()",
    ),
    (
        "Stage2 encoder does not shrink the image to Stage1 size",
        "plugins/stage2.py",
        "low = F.adaptive_avg_pool2d(x, self.low_size)",
        'low = F.interpolate(x, size=self.low_size, mode="nearest")',
    ),
    # data-parallel training, the image cache, the fast path (each with the tests that cover it)
    (
        "DDP: gradients summed over processes, not averaged",
        "core/distributed.py",
        "        flat.div_(self.world_size)",
        "        flat.div_(1)",
        DDP_TESTS,
    ),
    (
        "DDP: gradients not exchanged",
        "core/training/step.py",
        "            if self.dist is not None:  # the gradient of the mean over the global batch, on every replica",
        "            if False:  # the gradient of the mean over the global batch, on every replica",
        DDP_TESTS,
    ),
    (
        "DDP: every process reads the same images",
        "core/training/feeder.py",
        "        start = b * self.batch_size + (self.dist.rank * self.local_batch if self.dist is not None else 0)",
        "        start = b * self.batch_size",
        DDP_TESTS,
    ),
    (
        "DDP: every process draws rank 0's noise",
        "core/training/trainer.py",
        "            if dist.rank:\n                from genvae.core.training.run import seed_everything",
        "            if False:\n                from genvae.core.training.run import seed_everything",
        DDP_TESTS,
    ),
    (
        "DDP: logged losses are rank 0's, not the mean",
        "core/training/metrics.py",
        "            self.dist.average_(list(self.running.values()))\n            self.dist.max_(self.first_nonfinite)",
        "            self.dist.max_(self.first_nonfinite)",
        DDP_TESTS,
    ),
    (
        "cache: failed images left in place",
        "core/cache.py",
        "        array[j : j + len(idx)] = array[idx]",
        "        array[j : j + len(idx)] = array[j : j + len(idx)]",
        CACHE_TESTS,
    ),
    (
        "cache key ignores the folder signature",
        "core/data.py",
        'cache.cache_key("folder", folder, signature, image_size, channels)',
        'cache.cache_key("folder", folder, image_size, channels)',
        CACHE_TESTS,
    ),
    (
        "cache key ignores the image size",
        "core/data.py",
        'cache.cache_key("folder", folder, signature, image_size, channels)',
        'cache.cache_key("folder", folder, signature, channels)',
        CACHE_TESTS,
    ),
    (
        "tar member read from its header",
        "core/decode.py",
        "member = TarMember(path, m.offset_data, m.size, m.name)",
        "member = TarMember(path, m.offset, m.size, m.name)",
        CACHE_TESTS,
    ),
    (
        "noise drawn in memory order (channels-last changes the draws)",
        "core/components.py",
        "torch.randn(shape, dtype=self.mean.dtype, device=self.mean.device)",
        "torch.randn_like(self.mean)",
        FAST_TESTS,
    ),
    (
        "prefetch thread fetches the current batch again",
        "core/training/feeder.py",
        "ahead = loader.submit(self.host_batch, perm, b + 1)",
        "ahead = loader.submit(self.host_batch, perm, b)",
        FAST_TESTS,
    ),
    (
        "shapes: triangles point down",
        "plugins/shapes.py",
        "angles = -np.pi / 2 + np.array",
        "angles = np.pi / 2 + np.array",
        SHAPES_TESTS,
    ),
    (
        "shapes: circles drawn as squares",
        "plugins/shapes.py",
        "draw.ellipse((cx - size, cy - size, cx + size, cy + size), fill=fill)",
        "draw.rectangle((cx - size, cy - size, cx + size, cy + size), fill=fill)",
        SHAPES_TESTS,
    ),
    (
        "shapes: squares smaller than the other kinds",
        "plugins/shapes.py",
        "half = 0.85 * size",
        "half = 0.7 * size",
        SHAPES_TESTS,
    ),
    (
        "shapes: the last palette colour never drawn",
        "plugins/shapes.py",
        "fill = PALETTE[int(rng.integers(0, len(PALETTE)))]",
        "fill = PALETTE[int(rng.integers(0, len(PALETTE) - 1))]",
        SHAPES_TESTS,
    ),
    (
        "report: wall-clock curves not shifted to each run's start",
        "core/report.py",
        'points = [((r["wall_time"] - start) / 60, r[term]) for r in clocked',
        'points = [(r["wall_time"] / 60, r[term]) for r in clocked',
        REPORT_TESTS,
    ),
    (
        "report: a preset's changed prior not named",
        "core/compose.py",
        "if (base := preset.component(kind)) is None or base.name != part.name\n",
        "if (base := preset.component(kind)) is None\n",
        REPORT_TESTS,
    ),
    (
        "build not recorded in commands.jsonl",
        "cli/models.py",
        "create_model_folder(model, out, force=force, command=command_record())",
        "create_model_folder(model, out, force=force, command=None)",
        REPORT_TESTS,
    ),
    (
        "train bar without its ETA",
        "display.py",
        '        MofNCompleteColumn(),\n        TimeRemainingColumn(),\n        TextColumn("{task.fields[terms]}"),',
        '        MofNCompleteColumn(),\n        TextColumn("{task.fields[terms]}"),',
        REPORT_TESTS,
    ),
    (
        "beta-tc MWS weight log(N) instead of log(N M)",
        "plugins/beta_tc.py",
        "-math.log(dataset_size * batch)",
        "-math.log(dataset_size)",
        ["tests/plugins/test_beta_tc.py"],
    ),
    (
        "beta-tc q(z) logsumexp over the sample instead of the images",
        "plugins/beta_tc.py",
        "log_q_z = torch.logsumexp(log_w + m.sum(2), dim=1)",
        "log_q_z = torch.logsumexp(log_w + m.sum(2), dim=0)",
        ["tests/plugins/test_beta_tc.py"],
    ),
    (
        "beta-tc alpha and beta swapped",
        "plugins/beta_tc.py",
        "o.alpha * mi + o.beta * tc",
        "o.beta * mi + o.alpha * tc",
        ["tests/plugins/test_beta_tc.py"],
    ),
    (
        "beta-tc MSS own-image weight 1 instead of 1/N",
        "plugins/beta_tc.py",
        "w.fill_diagonal_(-math.log(n))",
        "w.fill_diagonal_(math.log(1.0))",
        ["tests/plugins/test_beta_tc.py"],
    ),
    (
        "beta-tc log p(z) at the posterior mean instead of z",
        "plugins/beta_tc.py",
        "fwd.prior.log_prob(fwd.z)",
        "fwd.prior.log_prob(fwd.posterior.mean)",
        ["tests/plugins/test_beta_tc.py"],
    ),
    (
        "factor TC term reaches the discriminator in the model phase",
        "plugins/factor_vae.py",
        "tc = self.logits(fwd.z, detach_params=True).mean()",
        "tc = self.logits(fwd.z).mean()",
        ["tests/plugins/test_factor_vae.py"],
    ),
    (
        "factor discriminator phase not detached from the encoder",
        "plugins/factor_vae.py",
        "self.discriminator_loss(fwd.z.detach())",
        "self.discriminator_loss(fwd.z)",
        ["tests/plugins/test_factor_vae.py"],
    ),
    (
        "factor discriminator labels swapped (joint 0, permuted 1)",
        "plugins/factor_vae.py",
        "torch.cat([torch.ones(n, device=z.device), torch.zeros(n, device=z.device)])",
        "torch.cat([torch.zeros(n, device=z.device), torch.ones(n, device=z.device)])",
        ["tests/plugins/test_factor_vae.py"],
    ),
    (
        "factor one permutation for every latent dimension",
        "plugins/factor_vae.py",
        "rows.to(z.device).argsort(dim=0)",
        "rows[:, :1].expand_as(rows).to(z.device).argsort(dim=0)",
        ["tests/plugins/test_factor_vae.py"],
    ),
    (
        "factor model term without gamma",
        "plugins/factor_vae.py",
        "self.weight * self.options.gamma * tc",
        "self.weight * tc",
        ["tests/plugins/test_factor_vae.py"],
    ),
    (
        "mmd biased estimate (diagonal kept)",
        "plugins/mmd.py",
        "(kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))",
        "kxx.sum() / (n * n)",
        ["tests/plugins/test_mmd.py"],
    ),
    (
        "mmd kernel C = d s instead of 2 d s",
        "plugins/mmd.py",
        "c = 2.0 * d * s",
        "c = d * s",
        ["tests/plugins/test_mmd.py"],
    ),
    (
        "mmd cross term not doubled",
        "plugins/mmd.py",
        "off_x + off_y - 2.0 * kxy.mean()",
        "off_x + off_y - kxy.mean()",
        ["tests/plugins/test_mmd.py"],
    ),
    (
        "mmd rbf kernel exp(+d^2/C)",
        "plugins/mmd.py",
        "torch.exp(-sq / c)",
        "torch.exp(sq / c)",
        ["tests/plugins/test_mmd.py"],
    ),
    (
        "mmd prior samples replaced by the posterior's",
        "plugins/mmd.py",
        "y = model.prior.sample(",
        "y = fwd.z.detach() + 0 * model.prior.sample(",
        ["tests/plugins/test_mmd.py"],
    ),
    # -- the 0.3 contracts and the VAE-family plugins (issue 20) --
    (
        "log q(z|x) adds the flow's log-determinant instead of taking it off",
        "core/components.py",
        "return log_q if self.log_det is None else log_q - self.log_det",
        "return log_q if self.log_det is None else log_q + self.log_det",
        ["tests/test_family_contracts.py", "tests/plugins/test_flows.py"],
    ),
    (
        "k draws: the flow's log-determinant added to log q",
        "core/model.py",
        "log_q = log_q - log_det.view(k, b)",
        "log_q = log_q + log_det.view(k, b)",
        ["tests/test_family_contracts.py", "tests/plugins/test_flows.py", "tests/plugins/test_iwae.py"],
    ),
    (
        "kl takes the closed form under a flow",
        "plugins/kl.py",
        "and not transform.has_flow",
        "",
        ["tests/test_family_contracts.py", "tests/plugins/test_flows.py"],
    ),
    (
        "planar flow: log|det| without the 1 + (log1p -> log)",
        "plugins/flows.py",
        "log_det = torch.log1p((1.0 - t * t) * (self.w @ u_hat))",
        "log_det = torch.log((1.0 - t * t) * (self.w @ u_hat))",
        ["tests/plugins/test_flows.py"],
    ),
    (
        "IWAE bound without - log k",
        "plugins/iwae.py",
        "return (torch.logsumexp(groups, dim=1) - math.log(k)).mean(0)",
        "return torch.logsumexp(groups, dim=1).mean(0)",
        ["tests/plugins/test_iwae.py"],
    ),
    (
        "VQ without the straight-through estimator",
        "plugins/vq.py",
        "return z0 + (z_q - z0).detach(), None",
        "return z_q, None",
        ["tests/plugins/test_vq.py"],
    ),
    (
        "VQ commitment without stop-gradient on the codes",
        "plugins/vq.py",
        "* (data.z_e - data.z_q.detach()).pow(2).flatten(1).sum(1).mean()",
        "* (data.z_e - data.z_q).pow(2).flatten(1).sum(1).mean()",
        ["tests/plugins/test_vq.py"],
    ),
    (
        "mixture prior: weights not normalised (log_softmax dropped)",
        "plugins/mog.py",
        "return (torch.log_softmax(self.logits, 0) + density).view(*lead, -1)",
        "return (self.logits + density).view(*lead, -1)",
        ["tests/plugins/test_mog.py"],
    ),
    (
        "python API: reconstructions left in [-1, 1]",
        "python_api.py",
        "return reconstruct_images(self.module, x, self.device) * 0.5 + 0.5",
        "return reconstruct_images(self.module, x, self.device)",
        PYTHON_API_TESTS,
    ),
    (
        "python API: uint8 images mapped to [-1, 0]",
        "python_api.py",
        "return x.to(self.device).float() / 127.5 - 1.0",
        "return x.to(self.device).float() / 255.0 - 1.0",
        PYTHON_API_TESTS,
    ),
    (
        "python API: sample's seed ignored",
        "python_api.py",
        "            seed_everything(seed)\n",
        "            seed_everything(0)\n",
        PYTHON_API_TESTS,
    ),
    (
        "discriminator accuracy counts the wrong side of zero",
        "plugins/adv.py",
        "correct = ((logits > 0).float() == labels).float()",
        "correct = ((logits < 0).float() == labels).float()",
        ["tests/test_training_health.py"],
    ),
    (
        "learning-rate warm-up stage ends one step late",
        "core/training/step.py",
        "        if step < until:",
        "        if step <= until:",
        ["tests/test_training_health.py"],
    ),
    (
        "spectrum band from a quarter of the Nyquist frequency, not half",
        "plugins/metrics.py",
        "high = torch.arange(len(r)) > (len(r) - 1) / 2",
        "high = torch.arange(len(r)) > (len(r) - 1) / 4",
        ["tests/test_training_health.py"],
    ),
    (
        "completion's discriminator compares an image with the rest of the batch",
        "plugins/adv.py",
        "return self.head(self.trunk_features(images), alone=True)",
        "return self.head(self.trunk_features(images), alone=False)",
        ["tests/plugins/test_completion.py"],
    ),
    (
        "bf16: the decoder's output handed on in bf16",
        "core/model.py",
        "                fwd.decoder_output = to_float32(self.decoder(u, fwd))",
        "                fwd.decoder_output = self.decoder(u, fwd)",
        ["tests/test_precision.py"],
    ),
    (
        "bf16: the posterior's mean kept in bf16 (the KL in bf16)",
        "core/components.py",
        "self.mean = to_float32(mean)",
        "self.mean = mean",
        ["tests/test_precision.py"],
    ),
    (
        "bf16: the encoder left out of autocast",
        "core/model.py",
        "with self.precision.autocast():  # the Gaussian's parameters come out float32",
        "with torch.autocast('cpu', enabled=False):  # the Gaussian's parameters come out float32",
        ["tests/test_precision.py"],
    ),
    (
        "bf16: the discriminator's head (its logits) under bf16 features",
        "plugins/adv.py",
        "            return to_float32(self.trunk(images))",
        "            return self.trunk(images)",
        ["tests/test_precision.py"],
    ),
    (
        "bf16: the Laplacian pyramid's bands computed under autocast",
        "plugins/laplacian/components.py",
        "with self.precision.full():  # the bands and blurred images",
        "with self.precision.autocast():  # the bands and blurred images",
        ["tests/test_precision.py"],
    ),
    (
        "bf16: --amp auto picks fp16 on the CPU",
        "core/precision.py",
        'return Precision(kind, torch.bfloat16, f"bf16 autocast (--amp auto: {have})")',
        'return Precision(kind, torch.float16, f"bf16 autocast (--amp auto: {have})")',
        ["tests/test_precision.py"],
    ),
    (
        "bf16: to_float32 leaves bf16 as it is",
        "core/precision.py",
        "return t.float() if t.dtype in _LOW else t",
        "return t",
        ["tests/test_precision.py"],
    ),
    (
        "minibatch discrimination with L2, not L1, distances",
        "plugins/adv.py",
        "dist = torch.cdist(m, m, p=1).permute(1, 2, 0)",
        "dist = torch.cdist(m, m, p=2).permute(1, 2, 0)",
        ["tests/plugins/test_adv.py", "tests/plugins/test_adv_math.py"],
    ),
]


def run_tests(tests: list[str]) -> tuple[bool, str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not long and not cuda", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return result.returncode != 0, failed[0] if failed else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mistakes whose label contains this text")
    parser.add_argument("--list", action="store_true", help="list the mistakes and stop")
    parser.add_argument(
        "--tests",
        nargs="*",
        default=TESTS,
        help="test paths to run for each mistake (those that name their own tests run those)",
    )
    args = parser.parse_args()
    chosen = [m for m in MISTAKES if not args.only or args.only.lower() in m[0].lower()]
    if args.list:
        for label, path, *_ in chosen:
            print(f"{path}: {label}")
        return 0
    paths = sorted({m[1] for m in chosen})
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if dirty:
        print(f"refusing to run: uncommitted changes in {dirty.splitlines()[0][3:]}; commit or stash them first")
        return 2
    missed = 0
    for label, path, old, new, *only in chosen:
        file = ROOT / path
        text = file.read_text()
        if text.count(old) != 1:
            print(f"STALE   {label}: the original text occurs {text.count(old)} times in {path}")
            missed += 1
            continue
        began = time.time()
        try:
            file.write_text(text.replace(old, new))
            caught, first = run_tests(only[0] if only else args.tests)
        finally:
            file.write_text(text)
        missed += not caught
        print(f"{'CAUGHT' if caught else 'MISSED'} {time.time() - began:5.0f}s  {label}: {first}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

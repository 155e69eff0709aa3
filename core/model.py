"""Composition: a spec becomes a :class:`GenerativeModel`, checked at build time.

The checks run here, before any training: every name resolves, options validate, each component
accepts the shape its neighbour produces, every capability a component requires is provided, and a
dry forward pass on two images produces the declared shapes. A failure is one line naming the
components involved.
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from genvae.core.capabilities import Capability
from genvae.core.components import (
    COMPONENT_KINDS,
    OUTPUT_SPACES,
    BuildContext,
    Component,
    Decoder,
    Encoder,
    FlowPosterior,
    ForwardPass,
    Gaussian,
    LatentTransform,
    Loss,
    MultiSample,
    Prior,
)
from genvae.core.errors import BuildError, GenvaeError, did_you_mean
from genvae.core.options import options_from_dict, options_to_dict
from genvae.core.precision import FLOAT32, Precision, to_float32
from genvae.core.registry import KIND_NAMES, Registry, get_registry
from genvae.core.spec import BRANCHES, ComponentSpec, LossSpec, ModelSpec, TrainConfig

MODEL_PHASE = "model"


class GenerativeModel(nn.Module):
    """An encoder, a latent transform, a decoder, a prior and losses, composed from a spec."""

    def __init__(self, spec: ModelSpec, encoder, transform, decoder, prior, losses: Iterable[Loss]):
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.transform = transform
        self.decoder = decoder
        self.prior = prior
        losses = list(losses)
        self.losses = nn.ModuleDict({loss.name: loss for loss in losses})
        self._loss_list: list[Loss] = losses  # the same losses, typed, in spec order
        self.layout = transform.layout
        self._registry: Callable[[], Registry | None] = lambda: None  # a weak reference to what built it
        self._has_flow = transform.has_flow or not transform.stochastic  # read once: no dispatch a pass need not
        #: posterior draws per image in a training pass (a run sets it from its settings: ``samples_needed``)
        self.posterior_samples = self.samples_needed(spec.train)
        self._precision: Precision = FLOAT32
        self._to_image = OUTPUT_SPACES[decoder.output]  # the decoder's output space -> x_hat in [-1, 1]
        self.phases = _phase_order(losses)
        # Fixed at build time so a training step does no per-plugin dispatch: the losses of each
        # (phase, branch) an update of train.schedule can ask for.
        self._phase_losses = {p: [loss for loss in losses if p in loss.phases] for p in self.phases}
        self._update_losses = {
            (p, branch): [loss for loss in phase_losses if branch == "all" or branch in loss.branches]
            for p, phase_losses in self._phase_losses.items()
            for branch in BRANCHES
        }

    @property
    def precision(self) -> Precision:
        """The type the networks compute in (``train.amp`` resolved on a device: training and loading set it);
        the posterior, the decoder's output and the losses are float32 whatever it is."""
        return self._precision

    @precision.setter
    def precision(self, value: Precision) -> None:
        self._precision = value
        for module in self.modules():  # every component runs its own networks in it too
            if isinstance(module, Component):
                module.precision = value

    # -- the forward contract ------------------------------------------------------------------
    def forward(self, x: Tensor, sample: bool = True) -> ForwardPass:
        """One pass: q(z|x), z (sampled, or the posterior mean; through the transform's flow), u, x_hat and the
        prior; with ``posterior_samples`` k > 1 (training), k draws per image as one batch (``fwd.multi``)."""
        fwd = ForwardPass(self, x)
        posterior = self.encode_pass(x, fwd)
        self.latent_pass(fwd, posterior, self.posterior_samples if sample else 1, noise=sample)
        fwd.prior = self.prior(fwd)
        return fwd

    def latent_pass(
        self,
        fwd: ForwardPass,
        posterior: Gaussian,
        k: int = 1,
        noise: bool = True,
        check_u: Callable[[Tensor], None] | None = None,
    ) -> None:
        """z0 ~ q0 (or its mean without ``noise``), z = flow(z0), u and the decoder's output into ``fwd``; k draws
        per image go through the transform and the decoder as one (k*B) batch, so batch norms see one batch."""
        transform = self.transform
        noise = noise and transform.stochastic
        autocast = self.precision.autocast  # the flow (its log-determinant) stays float32
        if k == 1:
            z0 = posterior.rsample() if noise else posterior.mean
            z, log_det = transform.flow(z0, fwd) if self._has_flow else (z0, None)
            fwd.z0, fwd.z, fwd.log_det = z0, z, log_det
            with autocast():
                u = transform.generate(z, fwd)
                if check_u is not None:  # the dry run's check of u, before the decoder sees it
                    check_u(u)
                fwd.decoder_output = to_float32(self.decoder(u, fwd))
            fwd.u = to_float32(u)
            fwd.x_hat = self._to_image(fwd.decoder_output)
            return
        b = posterior.mean.shape[0]
        z0 = posterior.rsample(k) if noise else posterior.mean.expand(k, *posterior.mean.shape)
        flat, log_det = transform.flow(z0.flatten(0, 1), fwd) if self._has_flow else (z0.flatten(0, 1), None)
        with autocast():
            u = transform.generate(flat, fwd)
            if check_u is not None:
                check_u(u)
            out = to_float32(self.decoder(u, fwd))
        u = to_float32(u)
        x_hat = self._to_image(out)
        log_q = posterior.log_prob(z0)
        if log_det is not None:
            log_q = log_q - log_det.view(k, b)
        fwd.multi = MultiSample(
            k,
            z0,
            flat.view(k, b, *flat.shape[1:]),
            log_q,
            out.view(k, b, *out.shape[1:]),
            x_hat.view(k, b, *x_hat.shape[1:]),
        )
        fwd.z0, fwd.z, fwd.log_det = z0[0], flat[:b], None if log_det is None else log_det[:b]
        fwd.u, fwd.decoder_output, fwd.x_hat = u[:b], out[:b], x_hat[:b]

    @property
    def registry(self) -> Registry | None:
        """The registry this model was built from (its components' plugins), while it lives."""
        return self._registry()

    def samples_needed(self, train: TrainConfig) -> int:
        """Posterior draws per image a training pass takes: ``train.posterior_samples`` or what a loss needs."""
        return max([train.posterior_samples, *(loss.posterior_samples() for loss in self._loss_list)])

    def encode_pass(self, x: Tensor, fwd: ForwardPass, check_features=None) -> Gaussian:
        """Encoder and posterior for x into ``fwd``; with the prior's extra inputs in the same batch
        (``fwd.extra_posterior``). ``check_features(features)`` runs between encoder and transform (the dry
        run compares declared shapes there). Returns x's posterior (``fwd.posterior``)."""
        extra = self.prior.extra_inputs()
        with self.precision.autocast():  # the Gaussian's parameters come out float32 (Gaussian casts them)
            features = self.encoder(x if extra is None else torch.cat([x, extra.to(x.dtype)]), fwd)
            if check_features is not None:
                check_features(features)
            posterior = self.transform.posterior(features, fwd)
        features = to_float32(features)  # what a pass holds is float32: losses and priors read it outside autocast
        if extra is None:
            fwd.features, fwd.posterior = features, posterior
            return posterior
        n = x.shape[0]
        fwd.features = features[:n]
        fwd.posterior, fwd.extra_posterior = posterior[:n], posterior[n:]
        return fwd.posterior

    def generate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z -> (u, x_hat): the generation side alone."""
        with self.precision.autocast():
            u = self.transform.generate(z)
            out = to_float32(self.decoder(u))
        return to_float32(u), self._to_image(out)

    @torch.no_grad()
    def sample(self, n: int, device: torch.device | str | None = None) -> Tensor:
        device = device or self.device
        z = self.prior.sample(n, self, device)
        return self.generate(z)[1]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        x_hat = self.forward(x, sample=False).x_hat
        assert x_hat is not None  # forward sets it
        return x_hat

    def encode(self, x: Tensor) -> Gaussian | FlowPosterior:
        """q(z|x): the transform's Gaussian, or with a flow the flowed posterior (whose ``mean`` is the flow of the
        base mean), so ``sample --from``, completion and traversals never skip the flow."""
        with self.precision.autocast():
            posterior = self.transform.posterior(self.encoder(x))
        return FlowPosterior(posterior, self.transform) if self._has_flow else posterior

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- losses and phases ---------------------------------------------------------------------
    def phase_terms(self, fwd: ForwardPass, phase: str) -> dict[str, Tensor]:
        """The named loss terms of one phase on the update's branch (``fwd.branch``); their sum is what
        that update minimises."""
        return self.update_terms(fwd, phase)[0]

    def update_terms(self, fwd: ForwardPass, phase: str) -> tuple[dict[str, Tensor], list[Tensor]]:
        """:meth:`phase_terms` and the skip flags of the losses that declare ``may_skip`` (empty otherwise)."""
        terms: dict[str, Tensor] = {}
        skips: list[Tensor] = []
        for loss in self._update_losses[phase, fwd.branch]:
            out = loss(fwd, phase)
            if loss.may_skip and Loss.SKIP in out:
                out = dict(out)
                skips.append(out.pop(Loss.SKIP))
            for key, value in out.items():
                terms[loss.name if key == loss.name else f"{loss.name}.{key}"] = value
        return terms, skips

    def updates(self, schedule: tuple[dict, ...] = (), registry: Registry | None = None) -> list[dict]:
        """The updates of one training step from ``schedule``, or (empty, ``one-pass``) one update per phase
        on the ``all`` branch, in phase order.

        One schedule serves a family of models: an update of a phase this model does not have, or of a branch
        on which none of its losses has terms, is left out (the crVAE schedule also fits crVAE without adv or
        mi). A phase no registered loss knows is refused (a typo), and so is a schedule that never updates
        one of the model's phases."""
        if not schedule:
            return [{"phase": p, "branch": "all", "fresh": False} for p in self.phases]
        registry = registry or get_registry()
        known = {MODEL_PHASE, *self.phases}
        for entry in registry.entries["loss"].values():
            known.update(getattr(entry.obj, "phases", ()))
        plan = []
        for i, update in enumerate(schedule, 1):
            phase, branch = update["phase"], update["branch"]
            if phase not in known:
                raise BuildError(
                    f"train.schedule: update {i} ({phase}@{branch}) names an unknown phase; "
                    f"{did_you_mean(phase, sorted(known))}phases of the installed losses: "
                    f"{', '.join(sorted(known))}"
                )
            if phase in self.phases and self._update_losses[phase, branch]:
                plan.append(dict(update))
        _check_stale_branches(plan)
        missing = [p for p in self.phases if not any(u["phase"] == p for u in plan)]
        if missing:
            raise BuildError(
                f"train.schedule never updates phase '{missing[0]}' of this model (on a branch where "
                f"its losses have terms), so it would not train; this model's phases: "
                f"{', '.join(self.phases)} (or set train.schedule=one-pass)"
            )
        return plan

    def phase_modules(self) -> dict[str, list[nn.Module]]:
        """Modules trained by each extra phase (the model phase trains everything else)."""
        owned: dict[str, list[nn.Module]] = {}
        for loss in self._loss_list:
            for phase, module in loss.owned_modules().items():
                if phase == MODEL_PHASE:
                    raise BuildError(f"loss '{loss.name}' cannot own modules in the '{MODEL_PHASE}' phase")
                owned.setdefault(phase, []).append(module)
        return owned

    def components(self) -> dict[str, Component]:
        out = {"encoder": self.encoder, "transform": self.transform, "decoder": self.decoder, "prior": self.prior}
        out.update({f"loss.{k}": v for k, v in self.losses.items()})
        return out

    def resolved_spec(self, train: TrainConfig | None = None) -> ModelSpec:
        """The spec with every option filled in (defaults made explicit), as written to config.json; ``train``
        replaces its training settings (a run's own)."""
        import attrs

        def full(c: Component) -> dict:
            return options_to_dict(c.options)

        return attrs.evolve(
            self.spec,
            train=self.spec.train if train is None else train,
            encoder=ComponentSpec(self.encoder.name, full(self.encoder)),
            transform=ComponentSpec(self.transform.name, full(self.transform)),
            decoder=ComponentSpec(self.decoder.name, full(self.decoder)),
            prior=ComponentSpec(self.prior.name, full(self.prior)),
            losses=tuple(LossSpec(loss.name, loss.weight, full(loss)) for loss in self._loss_list),
        )


def _check_stale_branches(plan: list[dict]) -> None:
    """Refuse a schedule whose model-phase update would backpropagate through a branch computed before an
    earlier model-phase update changed the weights it ran on (autograd would fail mid-training)."""
    computed: dict[str, int] = {"posterior": -1}  # update index at which each branch was last computed
    model_steps: list[int] = []
    for i, update in enumerate(plan):
        wanted = ("posterior", "prior") if update["branch"] == "all" else (update["branch"],)
        for branch in wanted:
            if update["fresh"] and update["branch"] in (branch, "all"):
                computed[branch] = i
            elif branch not in computed:
                computed[branch] = i  # the prior samples are drawn when first wanted
            if update["phase"] == MODEL_PHASE and any(computed[branch] < m for m in model_steps):
                raise BuildError(
                    f"train.schedule: update {i + 1} ({update['phase']}@{update['branch']}) would "
                    f"train on the {branch} branch computed before an earlier model update changed "
                    f"its weights; add ':fresh' to recompute it first"
                )
        if update["phase"] == MODEL_PHASE:
            model_steps.append(i)


def _phase_order(losses: Iterable[Loss]) -> list[str]:
    """Merge every loss's ``phase_order`` into one order, whatever order the losses are listed in.

    Each ``phase_order`` is a chain of constraints; a phase a loss does not place runs after the
    model phase. Ties keep the order of first appearance.
    """
    nodes: list[str] = [MODEL_PHASE]
    edges: set[tuple[str, str]] = set()
    used = {MODEL_PHASE}
    for loss in losses:
        order = tuple(loss.phase_order)
        used.update(loss.phases)
        for phase in (*order, *loss.phases):
            if phase not in nodes:
                nodes.append(phase)
        edges.update(zip(order, order[1:], strict=False))
        edges.update((MODEL_PHASE, p) for p in loss.phases if p not in order and p != MODEL_PHASE)
    result: list[str] = []
    pending = list(nodes)
    while pending:
        ready = next((p for p in pending if not any(b == p and a in pending for a, b in edges)), None)
        if ready is None:
            raise BuildError(f"the losses' phase orders contradict each other among phases {', '.join(pending)}")
        pending.remove(ready)
        result.append(ready)
    return [p for p in result if p in used]


# -- building ------------------------------------------------------------------------------------


def _make(kind: str, cspec: ComponentSpec | LossSpec, ctx: BuildContext, registry: Registry, **extra) -> Component:
    cls = registry.component(kind, cspec.name)
    where = f"{KIND_NAMES[kind]} '{cspec.name}'"
    options = options_from_dict(cls.Options, cspec.options, where)
    try:
        component = cls(options, ctx, **extra)
    except GenvaeError:
        raise
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise BuildError(f"{where} cannot be built for image {list(ctx.image_shape)}: {_line(exc)}") from exc
    # the registered name, also for classes registered under aliases: the instance's shadows the class's
    component.name = cspec.name  # type: ignore[misc]
    return component


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_capabilities(components: list[Component], registry: Registry) -> None:
    """Every required capability is provided, and every provider has its capability's protocol members."""
    for comp in components:
        for cap in sorted(comp.provides):
            if not isinstance(cap, Capability):
                continue
            missing = cap.missing_members(comp)
            if missing:
                raise BuildError(
                    f"{KIND_NAMES[comp.kind]} '{comp.name}' provides '{cap}' but lacks "
                    f"{', '.join(missing)} of its protocol ({cap.protocols[comp.kind].__name__})"
                )
    provided = {cap for c in components for cap in c.provides}
    for comp in components:
        for need in sorted(comp.requires - provided):
            providers = sorted(
                f"{KIND_NAMES[kind]} '{name}'"
                for kind in COMPONENT_KINDS
                for name, entry in registry.entries[kind].items()
                if need in getattr(entry.obj, "provides", ())
            )
            hint = f"; add {' or '.join(providers)}" if providers else ""
            raise BuildError(
                f"{KIND_NAMES[comp.kind]} '{comp.name}' requires '{need}', which no other component "
                f"of this model provides{hint}"
            )


def build_model(spec: ModelSpec, registry: Registry | None = None, check: bool | str = True) -> GenerativeModel:
    """Compose and check a model. Raises a one-line :class:`GenvaeError` for any bad input.

    The spec is first sized on the meta device, before anything real is allocated, and refused if it needs
    more than the memory limit: with ``check`` ``True`` or ``"train"`` (``genvae build``), to train it at its
    batch size (:func:`genvae.core.budget.check_budget`); with ``"load"`` (a model folder loaded to run it), its
    weights and the build's dry run (:func:`genvae.core.budget.check_load`); ``False`` skips the check.
    """
    registry = registry or get_registry()
    if check in (True, "train"):
        from genvae.core.budget import check_budget

        check_budget(spec, registry)
    elif check == "load":
        from genvae.core.budget import check_load

        check_load(spec, registry)
    elif check is not False:
        raise ValueError(f"build_model(check={check!r}): expected True, 'train', 'load' or False")
    ctx = BuildContext(image_shape=spec.image_shape, spec=spec)
    # typing.cast: the registry holds only classes of each kind (register() checks)
    ctx.encoder = typing.cast(Encoder, _make("encoder", spec.encoder, ctx, registry))
    ctx.transform = typing.cast(LatentTransform, _make("transform", spec.transform, ctx, registry))
    ctx.decoder = typing.cast(Decoder, _make("decoder", spec.decoder, ctx, registry))
    if ctx.decoder.output not in OUTPUT_SPACES:
        raise BuildError(
            f"decoder '{ctx.decoder.name}' declares output space '{ctx.decoder.output}'; known: "
            f"{', '.join(OUTPUT_SPACES)}"
        )
    ctx.prior = typing.cast(Prior, _make("prior", spec.prior, ctx, registry))
    names = [s.name for s in spec.losses]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BuildError(f"loss '{dupes[0]}' is listed twice; give each loss once, with one weight")
    if not spec.losses:
        raise BuildError("a model needs at least one loss (e.g. mse,kl)")
    losses = [typing.cast(Loss, _make("loss", s, ctx, registry, weight=s.weight)) for s in spec.losses]
    parts = [ctx.encoder, ctx.transform, ctx.decoder, ctx.prior, *losses]
    _check_capabilities(parts, registry)
    model = GenerativeModel(spec, ctx.encoder, ctx.transform, ctx.decoder, ctx.prior, losses)
    model._registry = weakref.ref(registry)  # what later sizing (meta builds of the same spec) builds from
    for part in parts:
        part.attach(model)
    model.phase_modules()  # validates ownership (after attach: a loss may build its modules there)
    model.updates(spec.train.schedule, registry)  # a schedule that cannot train this model fails here
    if check:
        dry_run(model)
    return model


def new_model(spec: ModelSpec, registry: Registry | None = None) -> GenerativeModel:
    """A freshly initialised model of ``spec``: every random stream seeded with ``spec.train.seed``, then
    :func:`build_model`. ``genvae build`` and ``genvae.build`` both start here, so the same spec gives the same
    initial weights, bit for bit, whoever builds it."""
    from genvae.core.training.run import seed_everything

    seed_everything(spec.train.seed)
    return build_model(spec, registry)


def _check_terms(loss: Loss, phase: str, terms) -> None:
    """A loss returns named terms the trainer can sum and backpropagate: 0-dim floating tensors (a skip flag:
    a one-element bool tensor)."""
    if not isinstance(terms, dict):
        raise BuildError(
            f"loss '{loss.name}' ({phase} phase) returned {type(terms).__name__}, not a dict of named terms"
        )
    for key, value in terms.items():
        if key == Loss.SKIP and not loss.may_skip:
            raise BuildError(
                f"loss '{loss.name}' ({phase} phase) returns a skip flag '{key}' but does not declare may_skip = True"
            )
        if key == Loss.SKIP:
            ok = torch.is_tensor(value) and value.numel() == 1 and value.dtype == torch.bool
            want = "a one-element bool tensor"
        else:
            ok = torch.is_tensor(value) and value.dim() == 0 and value.is_floating_point()
            want = "a 0-dim floating tensor (a scalar to minimise)"
        if not ok:
            got = f"shape {list(value.shape)}, {value.dtype}" if torch.is_tensor(value) else type(value).__name__
            raise BuildError(f"loss '{loss.name}' ({phase} phase): term '{key}' must be {want}, got {got}")


def dry_run(model: GenerativeModel, batch: int = 2) -> None:
    """Push a small batch through the model (eval mode, no grad) and compare every declared shape."""
    spec = model.spec
    enc, tr, dec = model.encoder, model.transform, model.decoder
    x = torch.zeros(batch, *spec.image_shape, device=model.device)
    was_training = model.training
    model.eval()
    stage = f"encoder '{enc.name}'"
    try:
        with torch.no_grad():
            fwd = ForwardPass(model, x)

            def check_features(features) -> None:
                nonlocal stage
                declared = tuple(getattr(enc, "output_shape", None) or ())
                if declared and torch.is_tensor(features) and tuple(features.shape[1:]) != declared:
                    raise BuildError(
                        f"encoder '{enc.name}' declares features {list(declared)} but produces "
                        f"{list(features.shape[1:])}"
                    )
                stage = f"encoder '{enc.name}' -> latent transform '{tr.name}'"

            posterior = model.encode_pass(x, fwd, check_features)
            expect = (batch, *tr.layout.shape)
            if tuple(posterior.mean.shape) != expect:
                raise BuildError(
                    f"latent transform '{tr.name}' declares latent {list(tr.layout.shape)} but its posterior "
                    f"has shape {list(posterior.mean.shape[1:])}"
                )
            stage = f"latent transform '{tr.name}' -> decoder '{dec.name}'"

            def check_u(u: Tensor) -> None:
                declared = tuple(getattr(tr, "output_shape", None) or ())
                if declared and torch.is_tensor(u) and tuple(u.shape[1:]) != declared:
                    raise BuildError(
                        f"latent transform '{tr.name}' declares output {list(declared)} but generates "
                        f"{list(u.shape[1:])}"
                    )

            model.latent_pass(fwd, posterior, model.posterior_samples, noise=False, check_u=check_u)
            assert fwd.decoder_output is not None and fwd.z is not None  # latent_pass sets them
            if fwd.z.shape != posterior.mean.shape:
                raise BuildError(
                    f"latent transform '{tr.name}' flows the latent {list(posterior.mean.shape[1:])} to "
                    f"{list(fwd.z.shape[1:])}; a flow keeps the latent's shape"
                )
            if fwd.log_det is not None and tuple(fwd.log_det.shape) != (batch,):
                raise BuildError(
                    f"latent transform '{tr.name}' gives a log-determinant of shape {list(fwd.log_det.shape)}, "
                    f"expected one per image [{batch}]"
                )
            if tuple(fwd.decoder_output.shape) != (batch, *spec.image_shape):
                raise BuildError(
                    f"decoder '{dec.name}' produces images of shape {list(fwd.decoder_output.shape[1:])}, "
                    f"the model's images are {list(spec.image_shape)}"
                )
            stage = f"prior '{model.prior.name}'"
            fwd.prior = model.prior(fwd)
            for phase in model.phases:
                for loss in model._phase_losses[phase]:
                    stage = f"loss '{loss.name}' ({phase} phase)"
                    _check_terms(loss, phase, loss(fwd, phase))
    except GenvaeError:
        raise
    except (RuntimeError, ValueError, IndexError, KeyError, AssertionError) as exc:
        raise BuildError(f"incompatible composition at {stage}: {_line(exc)}") from exc
    finally:
        model.train(was_training)

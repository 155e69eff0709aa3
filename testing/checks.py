"""The conformance checks. Each is written as a function of a :class:`~genvae.testing.subject.Subject` and made
public by :func:`~genvae.testing.subject.check`, so all share one signature (``kind, name, options=None,
spec=None, registry=None, seed=0``) and one opening; :func:`check_component` runs them by name (``CHECKS``)."""

from __future__ import annotations

import json
import tempfile
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import torch

from genvae.core.components import Gaussian
from genvae.core.errors import GenvaeError, OptionsError
from genvae.core.options import options_from_dict, options_to_dict
from genvae.core.spec import ModelSpec
from genvae.testing._util import (
    BASES,
    LOSS_ROLES,
    all_terms,
    fail,
    label_of,
    lookup,
    rng,
    state_dicts_equal,
    summed,
    tensors_equal,
    terms_equal,
)
from genvae.testing.subject import Check, Subject, check


@check(needs_spec=False)
def check_registered(subject: Subject) -> type:
    """The name resolves (no conflict) to a loaded plugin's class of the right kind; returns the class."""
    kind, label = subject.kind, subject.label
    entry = lookup(kind, subject.name, subject.registry)
    cls = entry.obj
    if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
        raise fail(f"{label} is registered as {cls!r}, not a subclass of {BASES[kind].__name__}")
    cls = typing.cast(Any, cls)  # a component class of its kind, with that kind's class attributes
    if cls.kind != kind:
        raise fail(f"{label}: class {cls.__name__} declares kind '{cls.kind}'")
    if not entry.help:
        raise fail(f"{label}: class {cls.__name__} has no docstring; its first line is the summary list-plugins shows")
    record = subject.registry.plugins.get(entry.plugin)
    if record is not None and record.status != "loaded":
        raise fail(f"{label}: its plugin '{entry.plugin}' is {record.status}: {record.error}")
    if not attrs.has(cls.Options):
        raise fail(f"{label}: Options ({cls.Options!r}) must be an attrs class (genvae.core.options.option fields)")
    for attr in ("provides", "requires"):
        value = getattr(cls, attr)
        if not isinstance(value, frozenset) or not all(isinstance(x, str) for x in value):
            raise fail(f"{label}: {attr} must be a frozenset of capability names, got {value!r}")
    if kind == "encoder":
        counterparts = dict(getattr(cls, "counterparts", {}) or {})
        for key, other in counterparts.items():
            if key not in ("transform", "decoder", "preset"):
                raise fail(f"{label}: counterparts key '{key}' is not one of transform, decoder, preset")
            try:
                subject.registry.get(key, other)
            except GenvaeError as exc:
                raise fail(f"{label}: its counterpart {key} '{other}' is not available: {exc}") from exc
    if kind == "loss":
        if cls.role not in LOSS_ROLES:
            raise fail(f"{label}: role '{cls.role}' is not one of {', '.join(LOSS_ROLES)}")
        if not cls.phases or not all(isinstance(p, str) and p for p in cls.phases):
            raise fail(f"{label}: phases must be a non-empty tuple of phase names, got {cls.phases!r}")
    return cls


@check(needs_spec=False)
def check_options_roundtrip(subject: Subject) -> Any:
    """Options -> ``options_to_dict`` -> JSON -> ``options_from_dict`` is the same instance.

    Also: every field has a help text, the class is frozen, unknown options are refused with a
    one-line :class:`OptionsError`. Returns the options instance.
    """
    label = subject.label
    opt_cls = lookup(subject.kind, subject.name, subject.registry).obj.Options
    if not attrs.has(opt_cls):
        raise fail(f"{label}: Options must be an attrs class")
    fields = attrs.fields(opt_cls)
    no_help = [a.name for a in fields if not str(a.metadata.get("help", "")).strip()]
    if no_help:
        raise fail(f"{label}: options without a help text: {', '.join(no_help)} (use genvae.core.options.option)")
    try:
        instance = options_from_dict(opt_cls, subject.options, label)
    except OptionsError as exc:
        raise fail(f"{label}: the options under test are refused: {exc}") from exc
    data = options_to_dict(instance)
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise fail(f"{label}: options_to_dict gives a dict that is not JSON-ready ({exc}): {data!r}") from exc
    again = options_from_dict(opt_cls, json.loads(text), label)
    if again != instance:
        raise fail(f"{label}: options do not survive a JSON round trip: {instance!r} became {again!r}")
    if options_to_dict(again) != data:
        raise fail(f"{label}: options_to_dict is not stable: {data!r} vs {options_to_dict(again)!r}")
    if fields:
        try:
            setattr(instance, fields[0].name, getattr(instance, fields[0].name))
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            raise fail(f"{label}: Options must be frozen (@attrs.frozen); components share them")
    bogus = "no_such_option_xyz"
    try:
        options_from_dict(opt_cls, {**data, bogus: 1}, label)
    except OptionsError as exc:
        if "\n" in str(exc) or bogus not in str(exc):
            raise fail(f"{label}: the error for an unknown option is not one line naming it: {exc!r}") from exc
    else:
        raise fail(f"{label}: an unknown option was accepted")
    return instance


@check()
def check_shapes(subject: Subject) -> None:
    """The model builds and every tensor of a pass has its declared shape; x_hat lies in [-1, 1]."""
    label, spec = subject.label, subject.model_spec
    try:
        model = subject.build()
    except GenvaeError as exc:
        raise fail(f"{label}: the conformance model does not build: {exc}") from exc
    subject.component_in(model)
    x = subject.images()
    b = x.shape[0]
    layout = model.transform.layout
    enc, tr, dec = model.encoder, model.transform, model.decoder
    if model.layout is not layout:
        raise fail(f"{label}: the model's layout is not the latent transform's")
    for attr, owner in (("output_shape", enc), ("output_shape", tr)):
        shape = getattr(owner, attr, None)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise fail(f"{label_of(owner.kind, owner.name)}: {attr} must be a tuple of positive ints, got {shape!r}")

    def expect(what: str, tensor: Any, shape: tuple[int, ...]) -> None:
        if not torch.is_tensor(tensor):
            raise fail(f"{label}: {what} is {type(tensor).__name__}, expected a tensor of shape {list(shape)}")
        if tuple(tensor.shape) != shape:
            raise fail(f"{label}: {what} has shape {list(tensor.shape)}, expected {list(shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise fail(f"{label}: {what} has non-finite values")

    latent = (b, *layout.shape)
    with rng(subject.seed), torch.no_grad():
        for mode, sample in (("train", True), ("eval", False)):
            model.train(mode == "train")
            fwd = model(x, sample=sample)
            where = f"{mode} mode"
            if torch.is_tensor(fwd.features):
                expect(f"encoder '{enc.name}' features ({where})", fwd.features, (b, *enc.output_shape))
            if not isinstance(fwd.posterior, Gaussian):
                raise fail(f"{label}: the posterior is {type(fwd.posterior).__name__}, not a Gaussian")
            expect(f"posterior mean ({where})", fwd.posterior.mean, latent)
            expect(f"posterior logvar ({where})", fwd.posterior.logvar, latent)
            expect(f"z ({where})", fwd.z, latent)
            expect(f"u ({where})", fwd.u, (b, *tr.output_shape))
            expect(f"decoder '{dec.name}' output ({where})", fwd.decoder_output, (b, *spec.image_shape))
            expect(f"x_hat ({where})", fwd.x_hat, (b, *spec.image_shape))
            if fwd.x_hat.min() < -1 or fwd.x_hat.max() > 1:
                raise fail(f"{label}: x_hat leaves [-1, 1] ({where})")
            prior = fwd.prior
            if not model.prior.gaussian:
                log_prob = getattr(prior, "log_prob", None)
                if log_prob is None:
                    raise fail(
                        f"{label}: prior '{model.prior.name}' (gaussian = False) returned "
                        f"{type(prior).__name__}, which has no log_prob(z)"
                    )
                expect(f"prior '{model.prior.name}' log_prob(z) ({where})", log_prob(fwd.z), (b,))
                parts: tuple[str, ...] = ()
            elif not isinstance(prior, Gaussian):
                raise fail(
                    f"{label}: prior '{model.prior.name}' returned {type(prior).__name__}, not a Gaussian "
                    "(set gaussian = False on a prior that returns another distribution)"
                )
            else:
                parts = ("mean", "logvar")
            for part in parts:
                value = getattr(prior, part)
                try:
                    ok = torch.broadcast_shapes(value.shape, latent) == latent
                except RuntimeError:
                    ok = False
                if not ok:
                    raise fail(
                        f"{label}: prior '{model.prior.name}' {part} has shape {list(value.shape)}, which does "
                        f"not broadcast to the posterior's {list(latent)} ({where})"
                    )
            for phase in model.phases:
                terms, flags = model.update_terms(fwd, phase)
                for value in flags:
                    if not torch.is_tensor(value) or value.numel() != 1 or value.dtype != torch.bool:
                        raise fail(
                            f"{label}: a skip flag ({phase} phase) must be a one-element bool tensor, got {value!r}"
                        )
                for key, value in terms.items():
                    if not torch.is_tensor(value) or value.dim() != 0 or not value.is_floating_point():
                        raise fail(
                            f"{label}: loss term '{key}' ({phase} phase) must be a float scalar tensor, got {value!r}"
                        )
                    if not torch.isfinite(value):
                        raise fail(f"{label}: loss term '{key}' ({phase} phase) is {value.item()} ({where})")
            if subject.kind == "loss":
                loss = model.losses[subject.name]
                for phase in loss.phases:
                    if not loss(fwd, phase):
                        raise fail(f"{label}: returns no terms in its '{phase}' phase")
        model.eval()
        z = model.prior.sample(3, model, "cpu")
        expect(f"prior '{model.prior.name}' sample", z, (3, *layout.shape))
        for groups in sorted({1, layout.num_groups}):
            kept = model.prior.sample(3, model, "cpu", fixed=z[:1], fixed_groups=groups)
            expect(f"prior '{model.prior.name}' sample with {groups} fixed group(s)", kept, (3, *layout.shape))
            mask = layout.group_mask(range(groups)).expand_as(kept)
            if not torch.equal(kept[mask], z[:1].expand_as(kept)[mask]):
                raise fail(
                    f"{label}: prior '{model.prior.name}' does not keep the first {groups} "
                    f"{layout.group_label}(s) of `fixed` when sampling"
                )
        u, images = model.generate(z)
        expect("u from generate()", u, (3, *tr.output_shape))
        expect("x_hat from generate()", images, (3, *spec.image_shape))
        samples = model.sample(2)
        expect("model.sample()", samples, (2, *spec.image_shape))
        if samples.min() < -1 or samples.max() > 1:
            raise fail(f"{label}: samples leave [-1, 1]")
        encoded = model.encode(x)
        expect("encode() mean", encoded.mean, latent)


@check()
def check_serialisation(subject: Subject, folder: str | Path | None = None) -> None:
    """``save_model`` then ``load_model``: same state_dict, resolved spec and eval outputs; no temp files.

    ``folder`` is a new or empty folder to save into (default: a temporary one, removed after).
    """
    from genvae.core.checkpoint import CONFIG, WEIGHTS, load_model, load_spec, save_model
    from genvae.core.folder import MANIFEST

    label, seed = subject.label, subject.seed
    model = subject.build()
    x = subject.images()
    with rng(seed), torch.no_grad():
        model.train()
        model(x)  # moves batch-norm statistics away from their initial values
    model.eval()

    def run(folder: Path) -> None:
        save_model(model, folder)
        extra = sorted(p.name for p in folder.iterdir() if p.name not in (CONFIG, WEIGHTS, MANIFEST))
        if extra:
            raise fail(f"{label}: save_model left extra files in the model folder: {extra}")
        try:
            # a different seed than the build's: state kept outside the state_dict cannot match by luck,
            # and the caller's RNG stream is left as it was
            with rng(seed + 7919):
                loaded = load_model(folder, registry=subject.registry)
        except GenvaeError as exc:
            raise fail(f"{label}: load_model fails on a folder save_model wrote: {exc}") from exc
        if load_spec(folder) != model.resolved_spec():
            raise fail(f"{label}: config.json does not hold the resolved spec")
        if loaded.resolved_spec() != model.resolved_spec():
            raise fail(f"{label}: the loaded model resolves to a different spec: {loaded.resolved_spec()!r}")
        state_dicts_equal(f"{label}: after save/load", model.state_dict(), loaded.state_dict())
        loaded.eval()
        with torch.no_grad():
            with rng(seed):
                a = model(x, sample=False)
                terms_a = all_terms(model, a)
            with rng(seed):
                b = loaded(x, sample=False)
                terms_b = all_terms(loaded, b)
        what = f"{label}: after save/load (eval mode, posterior mean)"
        tensors_equal(f"{what}, posterior mean", a.posterior.mean, b.posterior.mean)
        tensors_equal(f"{what}, posterior logvar", a.posterior.logvar, b.posterior.logvar)
        tensors_equal(f"{what}, x_hat", a.x_hat, b.x_hat)
        terms_equal(what, terms_a, terms_b)

    if folder is not None:
        run(Path(folder))
    else:
        with tempfile.TemporaryDirectory(prefix="genvae-check-") as tmp:
            run(Path(tmp) / "model")


@check()
def check_gradients(subject: Subject) -> None:
    """One forward, then a backward of every phase's summed terms (as the trainer does).

    Every trainable parameter of the component under test must get a finite gradient, at least
    one of them non-zero; no parameter of the model may get a non-finite gradient. A loss must
    also move some parameter through its own terms alone.
    """
    label = subject.label
    model = subject.build()
    comp = subject.component_in(model)
    x = subject.images()
    model.train()
    with rng(subject.seed):
        fwd = model(x)
        phases = model.phases
        for i, phase in enumerate(phases):
            terms = summed(model.phase_terms(fwd, phase))
            total = sum(terms.values()) if terms else None
            if torch.is_tensor(total) and total.requires_grad:
                total.backward(retain_graph=i < len(phases) - 1)
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise fail(f"{label}: non-finite gradients in {', '.join(bad)}")
    params = [(n, p) for n, p in comp.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    if missing:
        raise fail(
            f"{label}: parameters without a gradient after every phase's backward: {', '.join(missing)}; "
            "each trainable parameter must take part in some loss (or set requires_grad=False)"
        )
    if params and all(p.grad is None or not p.grad.any() for _, p in params):
        raise fail(f"{label}: every parameter's gradient is zero: {', '.join(n for n, _ in params)}")

    if subject.kind == "loss":
        model.zero_grad(set_to_none=True)
        loss = model.losses[subject.name]
        with rng(subject.seed):
            fwd = model(x)
            totals = []
            for phase in loss.phases:
                values = list(summed(loss(fwd, phase)).values())
                if values:
                    totals.append(sum(values))
        trainable = [t for t in totals if torch.is_tensor(t) and t.requires_grad]
        if not trainable:
            raise fail(f"{label}: its terms carry no gradient (are they computed from detached tensors?)")
        torch.stack(trainable).sum().backward()
        moved = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
        if not moved:
            raise fail(f"{label}: its terms give a zero gradient to every parameter of the model")


@check()
def check_determinism(subject: Subject) -> None:
    """Two builds under one seed: identical weights, and identical terms and gradients for one input."""
    label = subject.label
    first, second = subject.build(), subject.build()
    state_dicts_equal(f"{label}: two builds under seed {subject.seed}", first.state_dict(), second.state_dict())
    x = subject.images()
    results = []
    for model in (first, second):
        model.train()
        with rng(subject.seed + 1):
            fwd = model(x)
            terms = all_terms(model, fwd)
        trainable = [t for t in terms.values() if t.requires_grad]
        if trainable:
            torch.stack(trainable).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((fwd.x_hat.detach(), terms, grads))
    (xa, ta, ga), (xb, tb, gb) = results
    what = f"{label}: two builds, same input and torch seed"
    tensors_equal(f"{what}, x_hat", xa, xb)
    terms_equal(what, ta, tb)
    state_dicts_equal(f"{what}, gradients", ga, gb)


@check()
def check_spec_roundtrip(subject: Subject) -> None:
    """The spec and the resolved spec survive ``to_dict`` -> JSON -> ``from_dict``; resolving is idempotent."""
    label, spec = subject.label, subject.model_spec
    data = spec.to_dict()
    if ModelSpec.from_dict(data) != spec:
        raise fail(f"{label}: ModelSpec.from_dict(spec.to_dict()) differs from the spec")
    try:
        text = json.dumps(data, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise fail(f"{label}: spec.to_dict() is not JSON-ready ({exc})") from exc
    if json.dumps(ModelSpec.from_dict(json.loads(text)).to_dict(), sort_keys=True) != text:
        raise fail(f"{label}: the spec changes through a JSON round trip")
    resolved = subject.build().resolved_spec()
    try:
        text = json.dumps(resolved.to_dict(), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise fail(f"{label}: the resolved spec is not JSON-ready ({exc}); options must be plain data") from exc
    back = ModelSpec.from_dict(json.loads(text))
    if back != resolved:
        raise fail(f"{label}: the resolved spec changes through JSON: {resolved!r} became {back!r}")
    again = subject.build(back).resolved_spec()
    if again != resolved:
        raise fail(f"{label}: rebuilding from the resolved spec resolves differently: {again!r}")


@check()
def check_sensitivity(subject: Subject) -> None:
    """A loss's terms read their inputs: every term of every phase changes when the images and the random
    draws (z, prior samples, dropout) change. A term computed from constants, or from one tensor compared
    with itself, fails. Other kinds: x_hat changes with the images."""
    model = subject.build()
    model.train()
    runs = []
    for offset in (0, 1):
        x = subject.images(offset)
        with rng(subject.seed + offset), torch.no_grad():
            fwd = model(x)
            if subject.kind != "loss":
                runs.append({"x_hat": fwd.x_hat})
                continue
            loss = model.losses[subject.name]
            runs.append({f"{phase}: {k}": v for phase in loss.phases for k, v in summed(loss(fwd, phase)).items()})
    first, second = runs
    same = [k for k in first if k in second and torch.equal(first[k], second[k])]
    if same:
        raise fail(
            f"{subject.label}: {same[0]} is the same for two different batches (other images, other random "
            "draws); a term must depend on what it measures"
        )


@check(needs_spec=False)
def check_branches(subject: Subject) -> None:
    """A loss keeps to the branches of ``train.schedule``: on an update of the posterior branch its terms take
    no gradient from the prior samples, on a prior update none from the posterior pass (z, x_hat), and its
    terms on the ``all`` branch are those of its declared branches together (``Loss.branches``)."""
    if subject.kind != "loss":
        return
    subject = subject.with_spec()
    label = subject.label
    model = subject.build()
    model.train()
    loss = model.losses[subject.name]
    for phase in loss.phases:
        with rng(subject.seed):
            fwd = model(subject.images())
            terms: dict[str, dict[str, torch.Tensor]] = {}
            for i, branch in enumerate(("all", "posterior", "prior")):
                if branch == "all" or branch in loss.branches:
                    fwd.branch, fwd.update = branch, i
                    terms[branch] = summed(loss(fwd, phase))
        union = {k for b, t in terms.items() if b != "all" for k in t}
        if set(terms["all"]) != union:
            raise fail(
                f"{label}, phase '{phase}': terms on the all branch {sorted(terms['all'])} differ from those "
                f"of its branches {', '.join(loss.branches)} together {sorted(union)}"
            )
        drawn = fwd._prior_sample
        sources = {
            "posterior": [t for t in (drawn.u, drawn.x) if t.requires_grad] if drawn is not None else [],
            "prior": [t for t in (fwd.z, fwd.u, fwd.x_hat) if torch.is_tensor(t) and t.requires_grad],
        }
        for branch, other in (("posterior", "prior samples"), ("prior", "posterior pass")):
            values = [v for v in terms.get(branch, {}).values() if v.requires_grad]
            if not values or not sources[branch]:
                continue
            grads = torch.autograd.grad(
                torch.stack(values).sum(), sources[branch], retain_graph=True, allow_unused=True
            )
            if any(g is not None and g.abs().sum() > 0 for g in grads):
                hint = (
                    "compute them only when fwd.wants(...) says"
                    if branch in loss.branches and "prior" in loss.branches
                    else 'declare branches = ("posterior", "prior")'
                )
                raise fail(
                    f"{label}, phase '{phase}': its terms on a {branch} update take gradient from the {other}; {hint}"
                )


#: The checks check_component runs, by name and in order (pass names in ``skip`` to leave some out).
BY_NAME: dict[str, Check[Any]] = {
    "registered": check_registered,
    "options": check_options_roundtrip,
    "shapes": check_shapes,
    "serialisation": check_serialisation,
    "gradients": check_gradients,
    "determinism": check_determinism,
    "spec": check_spec_roundtrip,
    "sensitivity": check_sensitivity,
    "branches": check_branches,
}
CHECKS = tuple(BY_NAME)


@check(needs_spec=False)
def check_component(subject: Subject, skip: Iterable[str] = ()) -> ModelSpec:
    """Run every conformance check on component ``kind``/``name``; returns the spec checked.

    ``spec`` (which must contain the component) replaces :func:`tiny_spec`'s; ``options`` are
    then read from it. ``skip`` names checks from ``CHECKS`` to leave out.
    """
    skip = set(skip)
    unknown = skip - set(CHECKS)
    if unknown:
        raise fail(f"unknown checks to skip: {sorted(unknown)}; checks: {', '.join(CHECKS)}")
    if "registered" not in skip:
        check_registered(subject.kind, subject.name, registry=subject.registry)
    subject = subject.with_spec()  # after registration: a class that is not a component gets no spec built
    for key, run in BY_NAME.items():
        if key != "registered" and key not in skip:
            run(subject.kind, subject.name, spec=subject.spec, registry=subject.registry, seed=subject.seed)
    return subject.model_spec

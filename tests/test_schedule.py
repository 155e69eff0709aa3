"""``train.schedule``: the updates of a step, in order, on the posterior or prior branch, with fresh forwards.

The crVAE authors' order (``train_test_lstm.lua``) is checked on a tiny crVAE-GAN by what really happens inside
one step: which parameters each optimiser step moves (Adam's per-parameter step counts, and torch's optimiser
step hooks), and when the prior samples are generated (a forward hook on the decoder)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from genvae.cli.main import cli
from genvae.core import checkpoint as ckpt
from genvae.core.compose import preset_spec
from genvae.core.errors import BuildError, OptionsError
from genvae.core.model import build_model
from genvae.core.spec import ComponentSpec, LossSpec, ModelSpec, TrainConfig
from genvae.core.training import Trainer, seed_everything

AUTHORS = ["mi@posterior", "model@posterior", "mi@prior:fresh", "model@prior", "discriminator"]
ADV = {"widths": [8, 8], "head_hidden": 16, "minibatch_kernels": 4, "minibatch_dims": 3, "skip_below": 0}
STACK = {"width": 4, "max_width": 16}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster (tests/conftest.py)


def gan_spec(schedule=AUTHORS, mi=True, **train) -> ModelSpec:
    losses = [LossSpec("mse", options={"reduction": "mean"}), LossSpec("kl", 1e-3), LossSpec("adv", options=ADV)]
    if mi:
        losses.append(LossSpec("mi", options={"hidden": 8}))
    return ModelSpec(
        encoder=ComponentSpec("cr-lstm", STACK),
        transform=ComponentSpec("cr-lstm", {"latent_channels": 8, "steps": 4, "hidden": 16, "layers": 1}),
        decoder=ComponentSpec("cr-lstm", STACK),
        losses=losses,
        image_size=16,
        channels=3,
        train={"batch_size": 8, "lr": 1e-3, "log_every": 1, "checkpoint_every": 100, "schedule": schedule, **train},
    )


def trainer_for(spec, folder, data) -> Trainer:
    seed_everything(spec.train.seed)
    model = build_model(spec)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save_model(model, folder)
    return Trainer(model, folder, data, spec.train, torch.device("cpu"))


def adam_steps(trainer, prefix: str) -> set[tuple[str, int]]:
    """(phase, Adam's step count) of the parameters under ``prefix``, over every phase's optimiser."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    counts: set[tuple[str, int]] = set()
    for phase in trainer.phases:
        for p, s in phase.optimizer.state.items():
            if names[id(p)].startswith(prefix):
                counts.add((phase.name, int(s["step"])))
    return counts


# -- the option ---------------------------------------------------------------------------------------------------


def test_schedule_strings_and_dicts_normalise():
    # ignore[arg-type]: the converter takes strings, dicts and lists of them (mypy sees only the field's type)
    raw = ["mi@prior:fresh", {"phase": "model", "branch": "posterior"}, "discriminator"]
    config = TrainConfig(schedule=raw)  # type: ignore[arg-type]
    assert config.schedule == (
        {"phase": "mi", "branch": "prior", "fresh": True},
        {"phase": "model", "branch": "posterior", "fresh": False},
        {"phase": "discriminator", "branch": "all", "fresh": False},
    )
    assert TrainConfig(schedule="one-pass").schedule == () == TrainConfig().schedule  # type: ignore[arg-type]
    two = TrainConfig(schedule="model@posterior,discriminator")  # type: ignore[arg-type]
    assert two.schedule[1]["phase"] == "discriminator"


@pytest.mark.parametrize(
    "value",
    [
        ["model@sideways"],
        ["model@prior:later"],
        [{"phase": "model", "brnach": "prior"}],
        [{"branch": "prior"}],
        {"phase": "model"},
        [3],
    ],
)
def test_bad_schedules_are_one_line_errors(value):
    spec = gan_spec().to_dict()
    spec["train"]["schedule"] = value
    with pytest.raises(OptionsError) as info:
        ModelSpec.from_dict(spec)
    message = str(info.value)
    assert message.startswith(
        "train option 'schedule': expected 'one-pass' or a list of updates, each "
        "'PHASE[@BRANCH][:fresh]' or {'phase': ..., 'branch': all|posterior|prior, 'fresh': "
        "true|false}, got "
    )
    assert "\n" not in message


def test_unknown_phase_and_untrained_phase_are_refused_at_build_time():
    with pytest.raises(
        BuildError,
        match=r"update 5 \(discrimnator@all\) names an unknown phase; did you mean "
        r"'discriminator'\?",
    ):
        build_model(gan_spec(schedule=AUTHORS[:4] + ["discrimnator"]))
    with pytest.raises(BuildError, match="never updates phase 'discriminator'"):
        build_model(gan_spec(schedule=AUTHORS[:4]))
    # model@prior is left out when no loss has prior terms: mi then needs its own update on a branch it has
    with pytest.raises(BuildError, match="never updates phase 'model'"):
        build_model(gan_spec(schedule=["mi", "discriminator"]))


def test_one_schedule_serves_the_crvae_family():
    """Updates of phases a model lacks are left out: crvae trains model@posterior only, without mi the mi
    updates go, and a model without adv has no prior-branch model terms."""
    assert build_model(gan_spec()).updates(gan_spec().train.schedule) == [
        {"phase": "mi", "branch": "posterior", "fresh": False},
        {"phase": "model", "branch": "posterior", "fresh": False},
        {"phase": "mi", "branch": "prior", "fresh": True},
        {"phase": "model", "branch": "prior", "fresh": False},
        {"phase": "discriminator", "branch": "all", "fresh": False},
    ]
    no_mi = build_model(gan_spec(mi=False))
    assert [(u["phase"], u["branch"]) for u in no_mi.updates(no_mi.spec.train.schedule)] == [
        ("model", "posterior"),
        ("model", "prior"),
        ("discriminator", "all"),
    ]
    crvae = preset_spec("crvae")
    assert crvae.train.schedule == preset_spec("crvae-gan").train.schedule
    assert [(u["phase"], u["branch"]) for u in build_model(crvae, check=False).updates(crvae.train.schedule)] == [
        ("model", "posterior")
    ]
    assert [u["phase"] for u in preset_spec("vae-gan").train.schedule] == ["model", "discriminator"]
    assert [u["phase"] for u in preset_spec("vae-gan-small").train.schedule] == ["model", "discriminator"]
    assert preset_spec("crvae-gan-small").train.schedule == crvae.train.schedule


# -- what one step of the authors' schedule does -----------------------------------------------------------------


def test_authors_schedule_steps_each_part_as_train_test_lstm(tmp_path, tiny_data):
    trainer = trainer_for(gan_spec(), tmp_path / "m", tiny_data)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    moved = []  # (phase, the top-level parts that had a gradient) per optimiser step, in order
    for phase in trainer.phases:

        def record(optimizer, args, kwargs, name=phase.name):
            parts = {
                names[id(p)].split(".")[0] + "." + names[id(p)].split(".")[1]
                for g in optimizer.param_groups
                for p in g["params"]
                if p.grad is not None
            }
            moved.append((name, parts))

        phase.optimizer.register_step_post_hook(record)
    model_steps = {"n": 0}
    trainer.phases[[p.name for p in trainer.phases].index("model")].optimizer.register_step_post_hook(
        lambda *a: model_steps.__setitem__("n", model_steps["n"] + 1)
    )
    decoder_runs = []  # how many model-phase steps had been taken each time the decoder ran
    trainer.model.decoder.register_forward_hook(lambda *a: decoder_runs.append(model_steps["n"]))
    terms = trainer.train_step(trainer.to_model_range(tiny_data.images[:8]))

    posterior = {
        "encoder.net",
        "transform.mean_conv",
        "transform.mean_bias",
        "transform.var",
        "transform.gen",
        "decoder.net",
    }
    assert moved == [
        ("mi", {"losses.mi", "losses.adv"}),  # MI head and trunk, on reconstructions
        ("model", posterior),  # encoder, both LSTM paths, decoder
        ("mi", {"losses.mi", "losses.adv"}),  # MI head and trunk again, on new prior samples
        ("model", {"transform.gen", "decoder.net"}),  # the generation side only: z ~ p(z) reaches no encoder
        ("discriminator", {"losses.adv"}),  # last
    ]
    # the posterior forward ran before any model step; the prior samples through the just-updated decoder
    assert decoder_runs == [0, 1]
    # a name two updates produce is logged per branch; the others keep their plain names
    assert {
        "mse",
        "kl",
        "adv.g_recon",
        "mi@posterior",
        "mi.q@posterior",
        "mi.q@prior",
        "adv.g_prior",
        "mi@prior",
        "adv.d",
        "model@posterior/total",
        "model@prior/total",
        "mi@posterior/total",
        "mi@prior/total",
        "discriminator/total",
        # training health (logged, not summed): each update's gradient norm, the discriminator's accuracies
        "model@posterior/grad_norm",
        "model@prior/grad_norm",
        "mi@posterior/grad_norm",
        "mi@prior/grad_norm",
        "discriminator/grad_norm",
        "adv.acc_real",
        "adv.acc_recon",
        "adv.acc_prior",
    } == set(terms)
    # Adam's step counts: twice for what both branches train, once for the encoder side and the discriminator
    assert adam_steps(trainer, "encoder.") == {("model", 1)}
    assert adam_steps(trainer, "transform.var") == {("model", 1)}
    assert adam_steps(trainer, "transform.gen") == {("model", 2)}
    assert adam_steps(trainer, "decoder.") == {("model", 2)}
    assert adam_steps(trainer, "losses.mi.head") == {("mi", 2)}
    assert adam_steps(trainer, "losses.adv.head") == {("discriminator", 1)}
    assert adam_steps(trainer, "losses.adv.trunk") == {("mi", 2), ("discriminator", 1)}


def test_one_pass_schedule_is_one_step_per_phase_on_one_forward(tmp_path, tiny_data):
    trainer = trainer_for(gan_spec(schedule="one-pass"), tmp_path / "m", tiny_data)
    order = []
    for phase in trainer.phases:
        phase.optimizer.register_step_post_hook(lambda *a, name=phase.name: order.append(name))
    decoder_runs = []
    trainer.model.decoder.register_forward_hook(lambda *a: decoder_runs.append(len(order)))
    terms = trainer.train_step(trainer.to_model_range(tiny_data.images[:8]))
    assert order == ["discriminator", "mi", "model"]
    assert decoder_runs == [0, 0]  # the forward pass and the prior samples, both before any update
    assert {"mse", "kl", "adv.g_recon", "adv.g_prior", "mi", "mi.q", "adv.d"} <= set(terms)
    for prefix in ("encoder.", "decoder.", "transform.gen", "losses.mi.head", "losses.adv.head"):
        assert {s for _, s in adam_steps(trainer, prefix)} == {1}


def test_a_branch_made_before_a_model_update_must_be_fresh():
    """mi (all branches) draws the prior samples first; training the generator on them after the model@posterior
    update would backpropagate through weights that changed: refused at build time, fine with ':fresh'."""
    with pytest.raises(
        BuildError,
        match=r"update 3 \(model@prior\) would train on the prior branch computed before "
        r"an earlier model update changed its weights; add ':fresh'",
    ):
        build_model(gan_spec(schedule=["mi", "model@posterior", "model@prior", "discriminator"]))
    with pytest.raises(BuildError, match=r"update 2 \(model@posterior\) would train on the posterior branch"):
        build_model(gan_spec(schedule=["model", "model@posterior", "mi", "discriminator"]))
    build_model(gan_spec(schedule=["mi", "model@posterior", "model@prior:fresh", "discriminator"]))


def test_fresh_posterior_update_runs_a_new_forward_pass(tmp_path, tiny_data):
    spec = gan_spec(schedule=["mi", "model@posterior", "model@prior:fresh", "model@posterior:fresh", "discriminator"])
    trainer = trainer_for(spec, tmp_path / "m", tiny_data)
    runs = []
    trainer.model.encoder.register_forward_hook(lambda *a: runs.append("encoder"))
    trainer.train_step(trainer.to_model_range(tiny_data.images[:8]))
    assert runs == ["encoder", "encoder"]
    assert adam_steps(trainer, "encoder.") == {("model", 2)}


@pytest.mark.slow
def test_authors_schedule_resumes_exactly(tmp_path, tiny_data):
    straight = trainer_for(gan_spec(max_steps=6), tmp_path / "a", tiny_data)
    straight.fit()
    first = trainer_for(gan_spec(max_steps=3), tmp_path / "b", tiny_data)
    first.fit()
    second = trainer_for(gan_spec(max_steps=6), tmp_path / "b", tiny_data)
    assert second.resume() == 3
    second.fit()
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one_pass = trainer_for(gan_spec(schedule="one-pass", max_steps=6), tmp_path / "c", tiny_data)
    one_pass.fit()
    c = one_pass.model.state_dict()
    assert not torch.equal(a["decoder.net.0.weight"], c["decoder.net.0.weight"])  # the schedules differ


def test_cli_switches_to_one_pass_and_reports_bad_schedules(tmp_path):
    folder = tmp_path / "m"
    ckpt.save_model(build_model(gan_spec()), folder)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["train", str(folder), "--max-steps", "2", "--quiet", "--set", "train.schedule=one-pass"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "mi.q" in lines[-1] and "mi.q@prior" not in lines[-1]
    result = runner.invoke(
        cli,
        [
            "train",
            str(folder),
            "--restart",
            "--max-steps",
            "1",
            "--quiet",
            "--set",
            "train.schedule=model@posterior,mi",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: train.schedule never updates phase 'discriminator' of this model (on a branch where its losses "
        "have terms), so it would not train; this model's phases: discriminator, mi, model (or set "
        "train.schedule=one-pass)"
    ]

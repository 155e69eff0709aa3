"""The training loop: exact resume, phases, per-module learning rates, clamps, freezing, schedules."""

from __future__ import annotations

import json

import pytest
import torch

from genvae.core import checkpoint as ckpt
from genvae.core.errors import GenvaeError
from genvae.core.model import build_model
from genvae.core.training import Trainer, seed_everything
from genvae.core.training.step import build_phases, lr_factor


def make_trainer(spec, folder, data, **train):
    spec = spec.with_train(**{"batch_size": 8, "log_every": 3, "checkpoint_every": 4, "flip": True, **train})
    seed_everything(spec.train.seed)
    model = build_model(spec)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save_model(model, folder)
    return Trainer(model, folder, data, spec.train, torch.device("cpu"))


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(tmp_path, tiny_spec, tiny_data):
    # 40 images, batch 8: 5 steps per epoch, so 13 steps cross two epoch boundaries (and sample grids).
    straight = make_trainer(tiny_spec, tmp_path / "a", tiny_data, max_steps=13)
    straight.fit()
    first = make_trainer(tiny_spec, tmp_path / "b", tiny_data, max_steps=7)
    first.fit()
    latest = ckpt.latest_checkpoint(tmp_path / "b")
    assert latest is not None and latest.name == "step-00000007"
    second = make_trainer(tiny_spec, tmp_path / "b", tiny_data, max_steps=13)
    assert second.resume() == 7
    assert (second.epoch, second.batch_in_epoch) == (1, 2)
    second.fit()
    assert second.step == 13
    assert states_equal(straight.model.state_dict(), second.model.state_dict())
    for phase_a, phase_b in zip(straight.phases, second.phases, strict=True):
        sa, sb = phase_a.optimizer.state_dict()["state"], phase_b.optimizer.state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_resume_changes_something_real(tmp_path, tiny_spec, tiny_data):
    """The equality above is not vacuous: a different seed gives different weights."""
    a = make_trainer(tiny_spec, tmp_path / "a", tiny_data, max_steps=5)
    a.fit()
    b = make_trainer(tiny_spec, tmp_path / "b", tiny_data, max_steps=5, seed=1)
    b.fit()
    assert not states_equal(a.model.state_dict(), b.model.state_dict())


def test_metrics_samples_and_checkpoints(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=12, keep_checkpoints=2)
    t.fit()
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6, 9, 12]
    assert {"mse", "kl", "model/total", "images_per_s", "lr"} <= set(lines[-1])
    assert sorted(p.name for p in (tmp_path / "m" / "samples").iterdir()) == [
        "epoch-0001.png",
        "epoch-0002.png",
        "step-00000012.png",
    ]
    # keep_checkpoints=2: only the newest two survive; no temporary folders are left behind
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path / "m")] == ["step-00000008", "step-00000012"]
    hidden = sorted(p.name for p in (tmp_path / "m").rglob(".*"))
    assert hidden == [".genvae-manifest.json", ".genvae.lock"]  # genvae's own; no temporary files left


def test_loss_decreases(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=30, epochs=100, lr=3e-3, log_every=5)
    t.fit()
    lines = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["mse"] < 0.7 * lines[0]["mse"]


def test_lr_multipliers_and_phase_groups(tiny_spec):
    spec = tiny_spec.with_train(lr=1e-3, lr_multipliers={"decoder": 0.5, "decoder.net.0": 0.25})
    model = build_model(spec)
    (phase,) = build_phases(model, spec.train, torch.device("cpu"))
    lrs = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in phase.optimizer.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]] = group["lr"]
    assert lrs["encoder.net.0.weight"] == pytest.approx(1e-3)
    assert lrs["decoder.net.0.weight"] == pytest.approx(2.5e-4)  # the longest prefix wins
    assert lrs["decoder.net.3.weight"] == pytest.approx(5e-4)
    assert len(lrs) == sum(1 for _ in model.parameters())


def test_unknown_module_prefix_is_refused(tiny_spec):
    spec = tiny_spec.with_train(lr_multipliers={"decodr": 0.5})
    with pytest.raises(GenvaeError, match="no parameters under 'decodr'"):
        build_phases(build_model(spec), spec.train, torch.device("cpu"))


def test_grad_clamp_applies(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, grad_clamp={"decoder": 1e-4})
    x = t.feeder.batch(t.feeder.permutation(0), 0)
    t.train_step(x)
    dec = [p.grad.abs().max().item() for p in t.model.decoder.parameters()]
    enc = [p.grad.abs().max().item() for p in t.model.encoder.parameters()]
    assert max(dec) <= 1e-4 + 1e-12
    assert max(enc) > 1e-4


def test_freeze_keeps_weights_and_bn_statistics(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=6, train_only=["decoder"])
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    after = t.model.state_dict()
    enc_keys = [k for k in before if k.startswith(("encoder.", "transform."))]
    assert any("running_mean" in k for k in enc_keys)
    assert all(torch.equal(before[k], after[k]) for k in enc_keys)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=6, lr=1e9)
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    with pytest.raises(ckpt.DivergedError, match=r"diverged at step 2: non-finite kl, model/total, mse;"):
        t.fit()
    assert ckpt.latest_checkpoint(tmp_path / "m") is None  # nothing diverged was written
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_resume_refuses_another_batch_size(tmp_path, tiny_spec, tiny_data):
    make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=4).fit()
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=8, batch_size=4)
    with pytest.raises(GenvaeError, match="batch size"):
        t.resume()


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, tiny_spec, tiny_data):
    with pytest.raises(GenvaeError, match=r"^--amp fp16 runs on CUDA only; on the CPU use --amp bf16") as info:
        make_trainer(tiny_spec, tmp_path / "m", tiny_data, amp="fp16")
    assert "\n" not in str(info.value)


def test_lr_schedules():
    from genvae.core.spec import TrainConfig

    step = TrainConfig(lr_schedule="step", lr_step_epochs=60, lr_gamma=0.5, epochs=150)
    assert [lr_factor(step, e) for e in (0, 59, 60, 120)] == [1.0, 1.0, 0.5, 0.25]
    cos = TrainConfig(lr_schedule="cosine", epochs=10)
    assert lr_factor(cos, 0) == 1.0 and lr_factor(cos, 10) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_cuda_amp_training(tmp_path, tiny_spec, tiny_data):
    spec = tiny_spec.with_train(batch_size=8, amp=True, max_steps=6, log_every=3)
    seed_everything(0)
    model = build_model(spec)
    t = Trainer(model, tmp_path, tiny_data, spec.train, torch.device("cuda"))
    metrics = t.fit()
    assert metrics["step"] == 6 and next(model.parameters()).is_cuda


def test_freezing_is_undone_after_the_run(tmp_path, tiny_spec, tiny_data):
    t = make_trainer(tiny_spec, tmp_path / "m", tiny_data, max_steps=2, train_only=["decoder"])
    t.fit()
    assert all(p.requires_grad for p in t.model.parameters())
    # a second run on the same model, training the encoder only, really moves the encoder
    spec2 = t.model.spec.with_train(batch_size=8, max_steps=2, train_only=["encoder"])
    before = {k: v.clone() for k, v in t.model.state_dict().items() if k.startswith("encoder.")}
    Trainer(t.model, tmp_path / "m2", tiny_data, spec2.train, torch.device("cpu")).fit()
    after = t.model.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)

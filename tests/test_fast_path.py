"""The fast-path switches (channels-last, torch.compile, the batch prefetch thread) change speed, not results."""

from __future__ import annotations

import pytest
import torch

from genvae.core import build_model, prepare_training


@pytest.fixture
def run(tmp_path, tiny_spec):
    def train(name: str, **options) -> tuple[list[dict], dict[str, torch.Tensor]]:
        return losses(tmp_path, tiny_spec, name, **options)

    return train


def losses(tmp_path, spec, name: str, **train) -> tuple[list[dict], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(spec)
    records: list[dict] = []
    trainer = prepare_training(model, tmp_path / name, device="cpu",
                               overrides={"max_steps": 4, "batch_size": 8, "log_every": 1, **train})
    trainer.on_log = records.append
    trainer.fit()
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records], {
        k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_run(a, b, rtol: float) -> None:
    (la, wa), (lb, wb) = a, b
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [1, 2, 3, 4]
    for ra, rb in zip(la, lb, strict=True):
        for key in ra:
            assert rb[key] == pytest.approx(ra[key], rel=rtol), key
    assert wa.keys() == wb.keys()  # the same checkpoint names: nothing like _orig_mod. appears
    for key in wa:
        torch.testing.assert_close(wb[key].float(), wa[key].float(), rtol=1e-3, atol=1e-4)


def test_channels_last_trains_the_same(run, one_thread):
    plain = run("plain")
    fast = run("channels-last", channels_last=True)
    assert_same_run(plain, fast, rtol=1e-4)


def test_compile_trains_the_same(run, one_thread):
    plain = run("plain")
    compiled = run("compiled", compile=True)
    assert_same_run(plain, compiled, rtol=1e-4)


def test_batches_are_the_epoch_permutation_in_order(tmp_path, tiny_data, tiny_spec, one_thread):
    """The prefetch thread hands the model exactly the batches of the epoch's permutation, in order."""
    from genvae.core import Trainer

    model = build_model(tiny_spec)
    config = model.spec.with_train(batch_size=8, max_steps=5, log_every=10**6).train
    trainer = Trainer(model, tmp_path / "m", tiny_data, config, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer.fit()
    perm = trainer._permutation(0)
    expected = [trainer.to_model_range(tiny_data.images[perm[8 * b: 8 * b + 8]]) for b in range(5)]
    assert len(seen) >= 5
    assert all(torch.equal(a, b) for a, b in zip(seen[:5], expected, strict=True))

"""The fast-path switches (channels-last, torch.compile, the batch prefetch thread) change speed, not results."""

from __future__ import annotations

import pytest
import torch

from genvae.api import build_model, prepare_training


@pytest.fixture
def run(tmp_path, tiny_spec):
    def train(name: str, **options) -> tuple[list[dict], dict[str, torch.Tensor]]:
        return losses(tmp_path, tiny_spec, name, **options)

    return train


def losses(tmp_path, spec, name: str, **train) -> tuple[list[dict], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(spec)
    records: list[dict] = []
    trainer = prepare_training(
        model, tmp_path / name, device="cpu", overrides={"max_steps": 4, "batch_size": 8, "log_every": 1, **train}
    )
    trainer.on_log = records.append
    trainer.fit()
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "wall_time")} for r in records], {
        k: v.detach().clone() for k, v in trainer.model.state_dict().items()
    }


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
    plain = run("plain", amp="off", channels_last="off")
    fast = run("channels-last", amp="off", channels_last="on")
    assert_same_run(plain, fast, rtol=1e-4)


def test_compile_trains_the_same(run, one_thread):
    plain = run("plain", amp="off")
    compiled = run("compiled", amp="off", compile=True)
    assert_same_run(plain, compiled, rtol=1e-4)


def test_batches_are_the_epoch_permutation_in_order(tmp_path, tiny_data, tiny_spec, one_thread):
    """The prefetch thread hands the model exactly the batches of the epoch's permutation, in order."""
    from genvae.api import Trainer

    model = build_model(tiny_spec)
    config = model.spec.with_train(batch_size=8, max_steps=5, log_every=10**6).train
    trainer = Trainer(model, tmp_path / "m", tiny_data, config, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer.fit()
    perm = trainer.feeder.permutation(0)
    expected = [trainer.to_model_range(tiny_data.images[perm[8 * b : 8 * b + 8]]) for b in range(5)]
    assert len(seen) >= 5
    assert all(torch.equal(a, b) for a, b in zip(seen[:5], expected, strict=True))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.cuda
def test_cuda_fast_path_trains_like_the_plain_path(tmp_path, tiny_spec, tiny_data, monkeypatch):
    """On a GPU: channels-last and a host-resident data set (pinned, prefetched, non-blocking copies) give the
    plain path's losses; bf16 autocast with channels-last and torch.compile trains to finite losses."""
    from genvae.api import Trainer

    def run(name, **train):
        torch.manual_seed(0)
        model = build_model(tiny_spec)
        config = model.spec.with_train(batch_size=8, max_steps=6, log_every=1, **train).train
        records: list[dict] = []
        trainer = Trainer(model, tmp_path / name, tiny_data, config, torch.device("cuda"))
        trainer.on_log = records.append
        trainer.fit()
        return trainer, records

    plain, plain_log = run("plain")
    assert plain.images.is_cuda and not plain.pin  # a small data set lives on the GPU
    monkeypatch.setattr(Trainer, "DEVICE_DATA_LIMIT", 0)  # keep it on the host: pinned, prefetched batches
    hosted, hosted_log = run("hosted", channels_last=True)
    assert not hosted.images.is_cuda and hosted.pin
    for a, b in zip(plain_log, hosted_log, strict=True):
        assert b["model/total"] == pytest.approx(a["model/total"], rel=1e-3)
    fast, fast_log = run("fast", amp=True, channels_last=True, compile=True)
    assert fast_log[-1]["step"] == 6 and all(torch.isfinite(torch.tensor(r["model/total"])) for r in fast_log)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.cuda
def test_torchrun_on_two_gpus_with_nccl(tmp_path, genvae_exe):
    import subprocess
    import sys

    subprocess.run(
        [*genvae_exe, "build", "--preset", "cvae", "--set", "image_size=16", "-o", str(tmp_path / "m")],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "genvae.cli",
            "train",
            str(tmp_path / "m"),
            "--device",
            "cuda",
            "--max-steps",
            "4",
            "--batch-size",
            "16",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 processes (nccl)" in result.stdout


def test_graph_probe_keeps_a_graph_only_where_a_later_update_goes_back_through_it():
    from genvae.core.training.step import graph_nodes, shared_graphs

    w = torch.randn(4, requires_grad=True)
    v = torch.randn(4, requires_grad=True)
    hidden = (w * 3).sin()
    first = hidden.sum()  # update 1
    second = (hidden * 2).sum()  # update 2 goes back through update 1's sin and mul
    third = (v.exp() * w).sum()  # update 3 shares only the parameter w with the others
    graphs = [graph_nodes(t) for t in (first, second, third)]
    assert shared_graphs(graphs) == [True, False, False]
    assert {type(n).__name__ for n in graphs[0]} == {"SumBackward0", "SinBackward0", "MulBackward0"}
    # and what that means: without keeping update 1's graph, update 2 cannot backpropagate
    first.backward()
    with pytest.raises(RuntimeError, match="second time"):
        second.backward()


def test_retain_graph_auto_trains_exactly_like_always(tmp_path, one_thread):
    """crVAE-GAN's five updates: the probe finds no update that needs its graph kept, and the weights after three
    steps are those of keeping every graph."""
    from genvae.api import Trainer
    from genvae.core.compose import compose_spec
    from genvae.core.data import ImageData

    spec = compose_spec(
        preset="crvae-gan-small", sets=["image_size=16", "encoder.width=8", "decoder.width=8", "loss.adv.widths=[8,16]"]
    ).with_train(batch_size=8)
    images = torch.randint(0, 256, (24, *spec.image_shape), dtype=torch.uint8)
    weights = {}
    for mode in ("always", "auto"):
        torch.manual_seed(0)
        model = build_model(spec)
        trainer = Trainer(
            model,
            tmp_path / mode,
            ImageData(images, "random"),
            spec.with_train(retain_graph=mode).train,
            torch.device("cpu"),
        )
        perm = trainer.feeder.permutation(0)
        for b in range(3):
            trainer.train_step(trainer.feeder.batch(perm, b))
        weights[mode] = {k: v.clone() for k, v in model.state_dict().items()}
        if mode == "auto":
            assert trainer.retain == [False] * 5
        else:
            assert trainer.retain == [True, True, True, True, False]
    assert all(torch.equal(weights["auto"][k], weights["always"][k]) for k in weights["auto"])

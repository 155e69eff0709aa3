"""No deletion or write through a link inside a model folder, and no overwrite of a file genvae did not write.

Each scenario is one that lost a user's files before (issue 18): real folders, real links, real files; the
commands run in-process through click, and one scenario as a real ``genvae`` process. Every refusal must
come before anything in the folder (or behind the link) changed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import SETS, error_line, run, snapshot

from genvae.core import files as fs
from genvae.core.folder import LOCK, MANIFEST, ModelFolder

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks")

TRAIN = ["--batch-size", "8", "--log-every", "2", "--quiet", "--device", "cpu"]


def refused(result, *needles: str) -> str:
    """The run failed with exit 1 and one ``Error:`` line holding every needle."""
    assert result.exit_code == 1, result.output
    return error_line(result, *needles)


def tree(folder: Path) -> dict[str, bytes]:
    """Every entry under ``folder`` without following links (genvae's lock file, which holds the last holder's
    pid, left out)."""
    return snapshot(folder, skip={LOCK})


def claim(folder: Path, *rels: str) -> None:
    """Edit the manifest as a hostile folder would: genvae 'owns' these paths."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = sorted({*manifest["files"], *rels})
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def built(tmp_path) -> Path:
    run("build", "--preset", "cvae", *SETS, "-o", tmp_path / "m")
    return tmp_path / "m"


@pytest.fixture
def trained(built) -> Path:
    run("train", built, "--max-steps", "4", "--checkpoint-every", "2", *TRAIN)
    assert sorted(os.listdir(built / "checkpoints")) == ["step-00000002", "step-00000004"]
    return built


# -- 1. deletion never follows a link inside the folder ----------------------------------------------------


def test_force_never_deletes_through_a_symlinked_samples_folder(trained, tmp_path):
    """samples -> the user's photos, and the manifest lists samples/vacation.png: nothing of theirs is deleted."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "vacation.png").write_bytes(b"a photo")
    for f in (trained / "samples").iterdir():
        f.unlink()
    (trained / "samples").rmdir()
    os.symlink(photos, trained / "samples")
    claim(trained, "samples/vacation.png")
    before, theirs = tree(trained), tree(photos)
    refused(run("build", "--preset", "cvae", *SETS, "-o", trained, "--force", ok=False), "samples is a symlink")
    assert tree(photos) == theirs and tree(trained) == before


@pytest.mark.parametrize("command", ["build", "restart", "resume"])
def test_a_checkpoints_link_to_an_archive_loses_nothing(trained, tmp_path, command):
    """checkpoints -> /abs/archive: build --force and train --restart used to delete the archive's files and
    remove the folder; train --resume must neither read it as genvae's nor write into it."""
    archive = tmp_path / "archive"
    os.rename(trained / "checkpoints", archive)
    (archive / "notes.txt").write_text("mine")
    os.symlink(archive.resolve(), trained / "checkpoints")
    before, theirs = tree(trained), tree(archive)
    args = {
        "build": ["build", "--preset", "cvae", *SETS, "-o", trained, "--force"],
        "restart": ["train", trained, "--restart", "--max-steps", "6", "--checkpoint-every", "2", *TRAIN],
        "resume": ["train", trained, "--resume", "--max-steps", "6", "--checkpoint-every", "2", *TRAIN],
    }[command]
    refused(run(*args, ok=False), "checkpoints is a symlink")
    assert tree(archive) == theirs and tree(trained) == before


def test_a_linked_step_folder_survives_rotation_restart_and_force(trained, tmp_path):
    """checkpoints/step-00000002 replaced by a link to an archive copy: rotation leaves it (it is not genvae's
    checkpoint), and --restart / build --force refuse rather than delete through it."""
    archive = tmp_path / "archive-step-2"
    os.rename(trained / "checkpoints" / "step-00000002", archive)
    os.symlink(archive, trained / "checkpoints" / "step-00000002")
    theirs = tree(archive)
    # rotation (keep_checkpoints=2) over steps 6 and 8
    run("train", trained, "--resume", "--max-steps", "8", "--checkpoint-every", "2", *TRAIN)
    assert tree(archive) == theirs and os.path.islink(trained / "checkpoints" / "step-00000002")
    assert sorted(os.listdir(trained / "checkpoints")) == ["step-00000002", "step-00000006", "step-00000008"]
    before = tree(trained)
    refused(
        run("train", trained, "--restart", "--max-steps", "2", *TRAIN, ok=False),
        "checkpoints/step-00000002 is a symlink",
    )
    refused(
        run("build", "--preset", "cvae", *SETS, "-o", trained, "--force", ok=False),
        "checkpoints/step-00000002 is a symlink",
    )
    assert tree(archive) == theirs and tree(trained) == before


# -- 2. train never overwrites a file it did not write ---------------------------------------------------


def test_train_refuses_a_metrics_file_it_did_not_write(built):
    (built / "metrics.jsonl").write_text('{"step": 999, "my": "own experiment log"}\n')
    before = tree(built)
    refused(
        run("train", built, "--max-steps", "2", *TRAIN, ok=False), "metrics.jsonl exists and genvae did not write it"
    )
    assert tree(built) == before


def test_a_users_epoch_grid_is_refused_before_the_run_starts(built):
    """samples/epoch-0001.png of the user's: refused at once, not after a checkpoint and weights were written."""
    (built / "samples").mkdir()
    (built / "samples" / "epoch-0001.png").write_bytes(b"my figure")
    before = tree(built)
    refused(run("train", built, "--epochs", "1", *TRAIN, ok=False), "samples/epoch-0001.png exists and genvae")
    assert tree(built) == before  # no checkpoint, no model.safetensors, no metrics


def test_files_of_the_user_beyond_this_runs_steps_do_not_block_it(built):
    """Only the paths this run writes are checked: a user's epoch-0099.png is not in a 2-step run's way."""
    (built / "samples").mkdir()
    (built / "samples" / "epoch-0099.png").write_bytes(b"mine")
    run("train", built, "--max-steps", "2", *TRAIN)
    assert (built / "samples" / "epoch-0099.png").read_bytes() == b"mine"


def test_a_users_commands_history_or_report_is_refused(built):
    (built / "report.html").write_text("<p>my notes</p>")
    before = tree(built)
    refused(run("train", built, "--max-steps", "2", "--report", *TRAIN, ok=False), "report.html exists")
    assert tree(built) == before


# -- 3. a checkpoint folder with the user's files in it ---------------------------------------------------


def test_a_users_file_in_a_checkpoint_folder_is_never_overwritten(built):
    step = built / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"my weights, no trainer.json beside them")
    before = tree(built)
    refused(
        run("train", built, "--max-steps", "4", "--checkpoint-every", "2", *TRAIN, ok=False),
        "checkpoints/step-00000002/model.safetensors exists and genvae did not write it",
    )
    assert tree(built) == before


def test_restart_refuses_foreign_files_in_a_later_step_before_deleting_anything(trained):
    later = trained / "checkpoints" / "step-00000006"
    later.mkdir()
    (later / "optimizer.safetensors").write_bytes(b"mine")
    before = tree(trained)
    refused(
        run("train", trained, "--restart", "--max-steps", "8", "--checkpoint-every", "2", *TRAIN, ok=False),
        "step-00000006/optimizer.safetensors exists and genvae did not write it",
    )
    assert tree(trained) == before  # the old checkpoints are still there


# -- 6. loggers and stage folders --------------------------------------------------------------------------


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_loggers_never_write_through_a_linked_logs_folder(built, tmp_path, logger):
    pytest.importorskip({"tensorboard": "tensorboard", "mlflow": "mlflow"}[logger])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, built / "logs")
    before = tree(built)
    refused(run("train", built, "--max-steps", "2", "--logger", logger, *TRAIN, ok=False), "logs is a symlink")
    assert list(elsewhere.iterdir()) == [] and tree(built) == before


@pytest.mark.parametrize("link", ["stages", "stages/level-0"])
def test_train_levels_never_writes_stage_folders_through_a_link(tmp_path, link):
    folder = tmp_path / "lap"
    run("build", "--preset", "lapcvae-small", "--image-size", "16", "--channels", "1", "-o", folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    if link == "stages/level-0":
        (folder / "stages").mkdir()
    os.symlink(elsewhere, folder / link)
    before, theirs = tree(folder), tree(elsewhere)
    refused(
        run(
            "train-levels",
            folder,
            "--greedy",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--quiet",
            "--device",
            "cpu",
            ok=False,
        ),
        f"{link} is a symlink",
    )
    assert tree(elsewhere) == theirs and tree(folder) == before


# -- the same as a real process -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_genvae_process_refuses_and_deletes_nothing(trained, tmp_path, genvae_exe):
    archive = tmp_path / "archive"
    os.rename(trained / "checkpoints", archive)
    os.symlink(archive, trained / "checkpoints")
    before, theirs = tree(trained), tree(archive)
    done = subprocess.run(
        [*genvae_exe, "build", "--preset", "cvae", *SETS, "-o", str(trained), "--force"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "checkpoints is a symlink" in done.stderr
    assert tree(archive) == theirs and tree(trained) == before


# -- the file layer: walking by descriptor cannot be redirected --------------------------------------------------


@pytest.mark.skipif(not fs.USE_DIR_FD, reason="descriptor-relative operations (POSIX)")
def test_a_folder_swapped_for_a_link_after_it_was_opened_does_not_redirect_writes(tmp_path):
    """The race the component checks alone would lose: the folder is opened, then swapped for a link to the
    user's files; the write lands in the opened folder (now moved aside), never behind the link."""
    root = tmp_path / "m"
    (root / "samples").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    with fs.open_folder(root, "samples") as held:
        os.rename(root / "samples", tmp_path / "moved")
        os.symlink(victim, root / "samples")
        assert isinstance(held, int)  # a descriptor (POSIX)
        fd = os.open("grid.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=held)
        os.close(fd)
    assert list(victim.iterdir()) == [] and (tmp_path / "moved" / "grid.png").exists()
    with pytest.raises(fs.UnsafePathError, match="samples is a symlink"):
        fs.write_file_in(root, "samples/grid.png", lambda f: f.write(b"x"))
    with pytest.raises(fs.UnsafePathError, match="samples is a symlink"):
        fs.remove_file_in(root, "samples/anything.png")
    assert list(victim.iterdir()) == []


def test_removal_checks_every_path_before_deleting_any(tmp_path):
    """One linked path among many refuses the whole removal: not even the safe files go first."""
    root = tmp_path / "m"
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.bin").write_bytes(b"1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "two.bin").write_bytes(b"2")
    os.symlink(other, root / "b")
    mf = ModelFolder(root)
    mf.record("a/one.bin", "b/two.bin")
    with pytest.raises(fs.UnsafePathError, match="b is a symlink"):
        mf.remove(["a/one.bin", "b/two.bin"])
    assert (root / "a" / "one.bin").read_bytes() == b"1" and (other / "two.bin").read_bytes() == b"2"


def test_paths_that_leave_the_folder_are_refused(tmp_path):
    for rel in ("../x", "/etc/passwd", "a/../../x", "a\\..\\x"):
        with pytest.raises(fs.UnsafePathError):
            fs.write_file_in(tmp_path, rel, lambda f: f.write(b"x"))
    assert sorted(os.listdir(tmp_path)) == []

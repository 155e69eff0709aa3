"""genvae report and genvae plot: a self-contained page with every section, overlaid curves, safe overwrites."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import SETS

from genvae.cli.report import plot_term, read_metrics, terms_of
from genvae.testing import invoke_cli

TINY = ["--preset", "cvae", *SETS]


@pytest.fixture
def two_runs(tmp_path):
    for name, lr in (("fast", "1e-3"), ("slow", "1e-4")):
        assert invoke_cli(["build", *TINY, "-o", tmp_path / name]).exit_code == 0
        result = invoke_cli(
            [
                "train",
                tmp_path / name,
                "--max-steps",
                "12",
                "--batch-size",
                "8",
                "--log-every",
                "3",
                "--lr",
                lr,
                "--quiet",
                "--device",
                "cpu",
                *(["--report"] if name == "fast" else []),
            ]
        )
        assert result.exit_code == 0, result.output
    return tmp_path / "fast", tmp_path / "slow"


@pytest.mark.slow
def test_report_page_is_self_contained_with_every_section(two_runs, tmp_path):
    fast, slow = two_runs
    result = invoke_cli(["report", fast, slow, "-o", tmp_path / "report.html"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    for section in (
        "Loss curves",
        "Loss curves by wall-clock time",
        "Components",
        "Samples, every epoch",
        "Reconstructions",
        "Evaluation",
        "Commands",
        "Config",
        "Last logged values",
    ):
        assert section in page, section
    assert page.count("<div class=run>") == 2 and ">fast</h2>" in page and ">slow</h2>" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing to fetch
    assert not re.search(r'(href|src)="(https?:)?//', page)
    assert "genvae train " in page and "--lr 0.0001" in page  # the commands that trained each run
    # train --report wrote the first run's page into its folder, and genvae owns it
    assert (fast / "report.html").exists()
    assert "report.html" in (fast / ".genvae-manifest.json").read_text()
    alone = (fast / "report.html").read_text()  # one run: wall-clock is the top axis, no second set of curves
    assert "Loss curves" in alone and "Loss curves by wall-clock time" not in alone


def test_report_shows_the_scores_of_genvae_evaluate(tmp_path):
    fast = tmp_path / "m"  # untrained: the scores are what the page must show
    assert invoke_cli(["build", *TINY, "-o", fast]).exit_code == 0
    scores = fast / "evaluation.json"
    assert invoke_cli(["evaluate", fast, "--metrics", "rmse", "--limit", "8", "-o", scores]).exit_code == 0
    assert invoke_cli(["report", fast, "-o", tmp_path / "r.html"]).exit_code == 0
    page = (tmp_path / "r.html").read_text()
    rmse = json.loads(scores.read_text())["models"][0]["metrics"]["rmse"]["rmse"]
    assert "is not a genvae evaluate report" not in page and f"rmse {rmse:.4g}" in page


def test_report_refuses_to_overwrite_a_file_it_did_not_write(two_runs, tmp_path):
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    result = invoke_cli(["report", two_runs[0], "-o", mine])
    assert result.exit_code != 0 and "was not written by genvae report" in result.output
    assert mine.read_text() == "<html>my notes</html>"


def test_curves_overlay_the_same_term_of_every_run(two_runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {folder.name: read_metrics(folder) for folder in two_runs}
    assert terms_of(runs["fast"]) == ["mse", "kl", "model/total"]
    fig, ax = plt.subplots()
    assert plot_term(runs, "kl", ax)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["fast", "slow"]
    for line, folder in zip(lines, two_runs, strict=True):
        records = read_metrics(folder)
        assert np.asarray(line.get_xdata()).tolist() == [r["step"] for r in records]
        assert np.asarray(line.get_ydata()).tolist() == pytest.approx([r["kl"] for r in records])
    plt.close(fig)


def test_curves_by_wall_clock_start_at_each_runs_first_line(two_runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {folder.name: read_metrics(folder) for folder in two_runs}
    fig, ax = plt.subplots()
    assert plot_term(runs, "mse", ax, x="time")
    for line, records in zip(ax.get_lines(), runs.values(), strict=True):
        start = records[0]["wall_time"]
        assert np.asarray(line.get_xdata()).tolist() == pytest.approx([(r["wall_time"] - start) / 60 for r in records])
        assert np.asarray(line.get_ydata()).tolist() == pytest.approx([r["mse"] for r in records])
    assert "wall-clock minutes" in ax.get_xlabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="x must be 'step' or 'time'"):
        plot_term(runs, "mse", ax, x="epoch")


def test_plot_writes_one_png_and_names_the_logged_terms(two_runs, tmp_path):
    out = tmp_path / "kl.png"
    assert invoke_cli(["plot", *two_runs, "--term", "kl", "-o", out]).exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert invoke_cli(["plot", *two_runs, "--term", "kl", "-o", out]).exit_code == 0  # its own file: replaced
    assert invoke_cli(["plot", *two_runs, "--term", "kl", "--x", "time", "-o", out]).exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = invoke_cli(["plot", *two_runs, "--term", "kl", "--x", "epoch", "-o", out])
    assert wrong.exit_code != 0 and "'epoch' is not one of 'step', 'time'" in wrong.output
    bad = invoke_cli(["plot", *two_runs, "--term", "adv.d", "-o", out])
    assert bad.exit_code != 0 and "no run logged 'adv.d'; logged terms: kl, model/total, mse" in bad.output


def test_metrics_lines_carry_wall_clock_time(two_runs):
    records = read_metrics(two_runs[0])
    times = [r["wall_time"] for r in records]
    assert times == sorted(times) and times[-1] - times[0] < 3600
    commands = [json.loads(line)["command"] for line in (two_runs[0] / "commands.jsonl").read_text().splitlines()]
    assert len(commands) == 2  # the build, then the train, each as given
    assert commands[0].startswith("genvae build --preset cvae --set image_size=16 ")
    assert commands[0].endswith(f"-o {two_runs[0]}")
    assert commands[1].startswith(f"genvae train {two_runs[0]} --max-steps 12 ")


def test_train_ends_with_a_summary_table_of_the_run(tmp_path):
    assert invoke_cli(["build", *TINY, "-o", tmp_path / "m"]).exit_code == 0
    result = invoke_cli(
        [
            "train",
            tmp_path / "m",
            "--max-steps",
            "6",
            "--batch-size",
            "8",
            "--log-every",
            "2",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert result.exit_code == 0
    tail = result.output[result.output.index("done at step 6") :]
    first, last = (read_metrics(tmp_path / "m")[i] for i in (0, -1))
    assert "steps 0 -> 6" in tail and "step 2" in tail and "step 6" in tail
    row = next(line for line in tail.splitlines() if line.startswith("│ kl "))  # the table's kl row
    assert f"{first['kl']:.4g}" in row and f"{last['kl']:.4g}" in row


def test_evaluation_reports_progress_batch_by_batch(tiny_spec):
    import torch

    from genvae.api import build_model
    from genvae.core.evaluation import EvalData

    model = build_model(tiny_spec).eval()
    real = torch.randint(0, 256, (10, *tiny_spec.image_shape), dtype=torch.uint8)
    heard: list[tuple[str, int, int]] = []
    data = EvalData(model, real, torch.device("cpu"), n_samples=7, batch_size=4, progress=lambda *a: heard.append(a))
    data.reconstructions()
    data.samples()
    data.reconstructions()  # cached: no second pass
    assert heard == [
        ("reconstructions", 4, 10),
        ("reconstructions", 8, 10),
        ("reconstructions", 10, 10),
        ("samples", 4, 7),
        ("samples", 7, 7),
    ]


@pytest.mark.slow
def test_on_a_terminal_train_draws_a_bar_with_terms_speed_and_eta(tmp_path):
    """The rich bar path, in a real pseudo-terminal (what a person at a shell sees), not the log-line path."""
    import os
    import pty
    import subprocess
    import sys

    assert invoke_cli(["build", *TINY, "-o", tmp_path / "m"]).exit_code == 0
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "220", "GENVAE_CACHE": "off"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genvae.cli",
            "train",
            str(tmp_path / "m"),
            "--max-steps",
            "12",
            "--batch-size",
            "8",
            "--log-every",
            "3",
            "--device",
            "cpu",
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "step 3/12" not in screen  # not the log lines of a pipe
    assert re.search(r"train .*12/12 .*0:00:00 .*mse \S+ +kl \S+ +model/total \S+ +images_per_s \S+", screen), screen
    assert "done at step 12" in screen and "┃ term" in screen  # the summary table follows the bar

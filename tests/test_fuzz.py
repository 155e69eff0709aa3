"""Fuzzing the command line: hostile config.json files and bad argument lists never get past one line.

(One file over 500 lines on purpose: the fuzz runs as a child process of this very file, ``python
tests/test_fuzz.py --run``, so its generators, its runner and the tests that read its report stay together.)

The promise under test (see cli/main.py): every user-facing error is ONE line on stderr that starts
with ``Error: `` and has at most 400 characters; input errors exit 1, click usage errors exit 2; never
``internal error`` (an unexpected exception) and never a traceback; a hostile config.json never makes
genvae allocate much memory; a command given bad input changes nothing in the model folder.

A third fuzz breaks a trained model folder as a hostile or unlucky user would (a folder or file swapped for a
link to the user's files, the user's files at the names genvae writes, a manifest claiming paths behind
links) and runs the commands that write and delete on it: nothing behind a link and none of the user's
files may change, and a refused command changes nothing at all.

The fuzzes are deterministic (seeded ``random.Random``) and run in one child process, so that its
peak RSS growth measures what the hostile inputs made genvae allocate. Run them by hand with::

    python tests/test_fuzz.py --run WORKDIR             # prints a JSON summary as its last line
    python tests/test_fuzz.py --show-config-case 17     # the config.json of config case 17
    python tests/test_fuzz.py --show-args-case 17       # the argument list of argument case 17

``GENVAE_FUZZ_CONFIG_CASES`` / ``GENVAE_FUZZ_ARG_CASES`` / ``GENVAE_FUZZ_FOLDER_CASES`` change the number of
cases (1000, 1000 and 60 by default), ``GENVAE_FUZZ_SEED`` the seed, ``GENVAE_FUZZ_REPORT`` names a file for the
summary. The inputs of the bugs the fuzz once found are always added (see the regression tests at the end).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import click
import pytest
from helpers import SETS, TINY_CVAE, snapshot

SEED = 20240611
CONFIG_CASES = 1000
ARG_CASES = 1000
FOLDER_CASES = 60
MAX_LINE = 400
RSS_LIMIT_MB = 300
BUILD_ARGS = ["build", "--preset", "cvae", *SETS]
MAX_SEED = 2**64 - 1  # seeds are 64-bit (genvae.core.options.MAX_SEED); larger ones are usage errors


# -- checks shared by both fuzzes ------------------------------------------------------------------------------


def differences(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    return (
        [f"changed {k}" for k in changed]
        + [f"created {k}" for k in sorted(after.keys() - before.keys())]
        + [f"removed {k}" for k in sorted(before.keys() - after.keys())]
    )


def result_problems(result) -> list[str]:
    """What is wrong with a CliRunner result, whatever its exit code (an error must be one clean line)."""
    problems = []
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        problems.append(f"uncaught {type(exc).__name__}: {' '.join(str(exc).split())[:200]} | {tb[-600:]}")
    code = result.exit_code
    if code not in (0, 1, 2):
        problems.append(f"exit code {code}")
    if "Traceback" in result.output:
        problems.append("a traceback in the output")
    if code != 0:
        stderr = result.stderr
        lines = stderr.splitlines()
        if len(lines) != 1 or not lines[0].strip():
            problems.append(f"stderr is {len(lines)} line(s), not one: {stderr[:300]!r}")
        line = lines[0] if lines else ""
        if not line.startswith("Error: "):
            problems.append(f"stderr does not start with 'Error: ': {line[:200]!r}")
        if len(line) > MAX_LINE:
            problems.append(f"error line of {len(line)} characters (> {MAX_LINE}): {line[:120]!r}...")
        if "internal error" in stderr:
            problems.append(f"internal error: {line[:300]!r}")
    return problems


def describe(value, limit: int = 70) -> str:
    """A short, reproducible description of a (possibly huge) value."""
    if isinstance(value, Raw):
        text = value.text
        return f"raw({text[:30]!r}{'...' if len(text) > 30 else ''}, {len(text)} chars)"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:20]!r}... ({len(value)} chars)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        return f"{'-' if value < 0 else ''}10**{len(str(abs(value))) - 1}ish ({value.bit_length()} bits)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Stats:
    """Counters, the longest error line and the failures of one fuzz run."""

    def __init__(self) -> None:
        self.runs: Counter = Counter()
        self.codes: dict[str, Counter] = {}
        self.max_line = 0
        self.failures: list[dict] = []
        self.folder_changes = 0

    def record(self, command: str, result) -> None:
        self.runs[command] += 1
        self.codes.setdefault(command, Counter())[str(result.exit_code)] += 1
        if result.exit_code != 0:
            lines = result.stderr.splitlines()
            self.max_line = max(self.max_line, max((len(x) for x in lines), default=0))

    def fail(self, case: str, args: Sequence[object], problems: list[str], result=None) -> None:
        self.failures.append(
            {
                "case": case,
                "args": [describe(a, 120) for a in args],
                "problems": problems,
                "exit_code": getattr(result, "exit_code", None),
                "stderr": (getattr(result, "stderr", "") or "")[:500],
            }
        )


class Invoker:
    """Runs genvae in this process; each call starts from the same environment (``--max-memory`` sets one)."""

    def __init__(self) -> None:
        from click.testing import CliRunner

        from genvae.testing import genvae_cli

        self.cli = genvae_cli()  # with the plugins' commands, as `genvae` itself adds them
        self.runner = CliRunner()

    @property
    def commands(self) -> dict:
        return dict(self.cli.commands)

    def __call__(self, args: Sequence[object]):
        saved = os.environ.get("GENVAE_MAX_MEMORY")
        try:
            return self.runner.invoke(self.cli, [str(a) for a in args])
        finally:
            if saved is None:
                os.environ.pop("GENVAE_MAX_MEMORY", None)
            else:
                os.environ["GENVAE_MAX_MEMORY"] = saved


# -- config.json fuzz ------------------------------------------------------------------------------------------


class Raw:
    """Text put into the JSON as is (numbers JSON can hold but Python cannot write, nesting, ...)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return describe(self)


def dump(config, indent: int | None) -> str:
    raws: dict[str, str] = {}

    def sub(value):
        if isinstance(value, Raw):
            key = f"@@raw{len(raws)}@@"
            raws[key] = value.text
            return key
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    text = json.dumps(sub(config), indent=indent)  # NaN / Infinity / -Infinity tokens for non-finite floats
    for key, raw in raws.items():
        text = text.replace(json.dumps(key), raw)
    return text


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


HUGE_INTS = [10**6, 10**9, 10**12, 10**40, 2**31, 2**63, 2**64, -(10**12), -(10**40), Raw("9" * 4000), Raw("1" * 5000)]


def bad_value(rng: random.Random):
    """A value of a wrong type, range or size for any option."""
    group = rng.randrange(9)
    if group == 0:
        return rng.choice(
            [
                "",
                "x",
                "abc",
                "16",
                "1e3",
                "nan",
                "true",
                "null",
                "-1",
                " ",
                "é€😀",
                "\x00",
                "\ud800",
                "\n" * 50,
                "conv",
                "a,b,c",
                "[1, 2]",
            ]
        )
    if group == 1:
        return "x" * rng.choice([10_000, 1000, 401])
    if group == 2:
        return rng.choice([[], [1], [1, 2, 3], ["a"], [None], [[[]]], list(range(1000)), [0.5, 0.5], [True]])
    if group == 3:
        return rng.choice([{}, {"a": 1}, {"name": "conv"}, {"name": 5}, {"options": []}, {"": None}])
    if group == 4:
        return rng.choice([None, True, False])
    if group == 5:
        return rng.choice(HUGE_INTS)
    if group == 6:
        return rng.choice([0, -1, -7, -3.5, -(10**12), -0.0])
    if group == 7:
        return rng.choice(
            [0.5, 1e-300, 1e308, Raw("1e400"), Raw("-1e400"), float("nan"), float("inf"), float("-inf"), 2.5]
        )
    return rng.choice([nested(10), nested(500), nested(900), nested(5000), nested(100_000)])


def _paths(node, prefix=()):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


def _parent(config, path):
    node = config
    for key in path[:-1]:
        node = node[key]
    return node


def _path_text(path) -> str:
    return ".".join(str(p) for p in path) or "<top>"


def m_delete(rng, config) -> str:
    path = rng.choice(list(_paths(config)))
    parent = _parent(config, path)
    if isinstance(parent, list):
        parent.pop(path[-1])
    else:
        del parent[path[-1]]
    return f"delete {_path_text(path)}"


def m_type(rng, config) -> str:
    path = rng.choice(list(_paths(config)))
    value = bad_value(rng)
    _parent(config, path)[path[-1]] = value
    return f"set {_path_text(path)} = {describe(value)}"


COMPONENT_SLOTS = [("encoder",), ("transform",), ("decoder",), ("prior",), ("losses", 0), ("losses", 1)]
BAD_NAMES = [
    "nosuch",
    "CONV",
    " conv",
    "conv\n",
    "kl",
    "normal",
    "mse",
    "conv",
    "fc",
    "laplacian",
    "cr-lstm",
    "m-net",
    "adv",
    "shapes",
    "cvae",
    "",
    "\x00",
    "é",
    "../../etc/passwd",
    5,
    None,
    ["conv"],
    {"name": "conv"},
    True,
    10**40,
]


def m_component(rng, config) -> str:
    slot = rng.choice(COMPONENT_SLOTS)
    if slot[0] == "losses":
        container, key = config["losses"], slot[1]
        if not isinstance(container, list) or len(container) <= key:
            return f"{_path_text(slot)}: no such loss"
    else:
        container, key = config, slot[0]
    if rng.random() < 0.15:  # the whole component replaced by a bare name or another value
        value = rng.choice(["nosuch", "conv", "x" * 5000, 7, None, [], "kl", {}])
        container[key] = value
        return f"set {_path_text(slot)} = {describe(value)}"
    name = rng.choice(BAD_NAMES + ["x" * rng.choice([100, 10_000])])
    if isinstance(container[key], dict):
        container[key]["name"] = name
    else:
        container[key] = {"name": name, "options": {}}
    return f"set {_path_text(slot)}.name = {describe(name)}"


OPTION_HOMES = [
    ("encoder", "options"),
    ("transform", "options"),
    ("decoder", "options"),
    ("prior", "options"),
    ("losses", 0, "options"),
    ("losses", 1, "options"),
    ("train",),
    (),
    ("losses", 0),
    ("encoder",),
]
BAD_KEYS = [
    "nosuch",
    "widht",
    "Width",
    "width ",
    "",
    "__class__",
    "__init__",
    "1",
    "é",
    "x" * 10_000,
    "options2",
    "weigth",
    "lr_schedulee",
    "genvae_version2",
    "\x00",
    "format ",
]


def m_unknown_option(rng, config) -> str:
    home = rng.choice(OPTION_HOMES)
    try:
        node = config
        for key in home:
            node = node[key]
    except (KeyError, IndexError, TypeError):
        return "no-op"
    if not isinstance(node, dict):
        return "no-op"
    key = rng.choice(BAD_KEYS)
    value = rng.choice([1, "x", None, True, [1], {"a": 1}, 10**40])
    node[key] = value
    return f"add {_path_text(home)}.{describe(key)} = {describe(value)}"


def m_rename(rng, config) -> str:
    dict_paths = [p for p in _paths(config) if isinstance(_parent(config, p), dict)]
    path = rng.choice(dict_paths)
    parent = _parent(config, path)
    new = rng.choice([path[-1] + "s", path[-1][:-1], path[-1].upper(), "_" + path[-1], path[-1] + " "])
    parent[new] = parent.pop(path[-1])
    return f"rename {_path_text(path)} -> {describe(new)}"


HUGE_TARGETS = [
    (("image_size",),),
    (("encoder", "options", "width"), ("encoder", "options", "max_width")),
    (("decoder", "options", "width"), ("decoder", "options", "max_width")),
    (("encoder", "options", "depth"),),
    (("decoder", "options", "depth"),),
    (("transform", "options", "latent_channels"),),
    (("train", "batch_size"),),
    (("image_size",), ("train", "batch_size")),
    (("encoder", "options", "max_width"), ("encoder", "options", "width"), ("encoder", "options", "depth")),
]


def m_huge(rng, config) -> str:
    targets = rng.choice(HUGE_TARGETS)
    value = rng.choice(HUGE_INTS)
    for path in targets:
        _parent(config, path)[path[-1]] = value
    if rng.random() < 0.1:  # a huge odd kernel (kernels must be odd)
        config["transform"]["options"]["kernel"] = 10**12 + 1
        return f"set {', '.join(map(_path_text, targets))} = {describe(value)}; transform kernel 10**12+1"
    if rng.random() < 0.1:
        config["losses"][-1]["options"]["group_weights"] = [1.0] * 100_000
        return f"set {', '.join(map(_path_text, targets))} = {describe(value)}; 100000 kl group_weights"
    return f"set {', '.join(map(_path_text, targets))} = {describe(value)}"


def m_format(rng, config) -> str:
    value = rng.choice(
        [2, 0, -1, "1", None, 1.5, 10**40, [], {}, "one", Raw("1e400"), float("nan"), 1, 1.0, True, Raw("1" * 5000)]
    )
    config["format"] = value
    return f"set format = {describe(value)}"


STRUCTURAL = {
    "delete": m_delete,
    "type": m_type,
    "component": m_component,
    "unknown_option": m_unknown_option,
    "rename": m_rename,
    "huge": m_huge,
    "format": m_format,
}


def invalid_json(rng, config, variant: str | None = None) -> tuple[str, bytes]:
    text = dump(config, 2)
    variants = [
        "truncate",
        "garbage",
        "empty",
        "top",
        "token",
        "syntax",
        "encoding",
        "deep",
        "oversize",
        "bigint",
        "nul",
        "keys",
    ]
    variant = variant or rng.choice(variants)
    if variant == "truncate":
        cut = rng.randrange(1, len(text))
        return f"json: truncated at character {cut} of {len(text)}", text[:cut].encode()
    if variant == "garbage":
        size = rng.choice([1, 16, 1000, 100_000])
        return f"json: {size} random bytes", rng.randbytes(size)
    if variant == "empty":
        data = rng.choice([b"", b"  \n\t", b"\n"])
        return f"json: empty file {data!r}", data
    if variant == "top":
        data = rng.choice(
            [
                "null",
                "[]",
                "[1, 2]",
                "1",
                '"cvae"',
                "true",
                "{}",
                '{"format": 1}',
                "1e400",
                '{"encoder": "conv"}',
                '"' + "x" * 10_000 + '"',
            ]
        )
        return f"json: the whole file is {describe(data)}", data.encode()
    if variant == "token":
        token = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "undefined", "0x10", "+1", ".5", "01"])
        numbers = [i for i, line in enumerate(text.splitlines()) if line.rstrip(",").split(": ")[-1][:1].isdigit()]
        lines = text.splitlines()
        i = rng.choice(numbers)
        key, sep, value = lines[i].rpartition(": ")
        lines[i] = f"{key}{sep}{token}{',' if value.endswith(',') else ''}" if sep else token
        return f"json: line {i + 1} value -> {token}", "\n".join(lines).encode()
    if variant == "syntax":
        kind = rng.choice(["trailing comma", "single quotes", "comment", "two objects", "unclosed string"])
        if kind == "trailing comma":
            data = text.rstrip()[:-1].rstrip() + ",\n}"
        elif kind == "single quotes":
            data = text.replace('"', "'")
        elif kind == "comment":
            data = "// genvae config\n" + text
        elif kind == "two objects":
            data = text + text
        else:
            data = text.replace('"cvae"', '"cvae', 1)
        return f"json: {kind}", data.encode()
    if variant == "encoding":
        kind = rng.choice(["bom", "utf-16", "latin-1", "utf-32"])
        if kind == "bom":
            return "json: UTF-8 with a BOM", b"\xef\xbb\xbf" + text.encode()
        if kind == "latin-1":
            data = text.replace('"description": "', '"description": "caf\u00e9 ')
            return "json: latin-1 text", data.encode("latin-1")
        return f"json: {kind}", text.encode(kind)
    if variant == "deep":
        depth = rng.choice([1000, 10_000, 200_000])
        where = rng.choice(["top", "description", "width"])
        if where == "top":
            return f"json: {depth} nested lists as the file", ("[" * depth + "]" * depth).encode()
        inner = copy.deepcopy(config)
        if where == "description":
            inner["description"] = nested(depth)
        else:
            inner["encoder"]["options"]["width"] = nested(depth)
        return f"json: {depth} nested lists as {where}", dump(inner, None).encode()
    if variant == "oversize":
        size = rng.choice([5 << 20, (1 << 20) + 1, 900_000])
        inner = copy.deepcopy(config)
        inner["description"] = ""
        base = dump(inner, None)
        inner["description"] = "d" * max(0, size - len(base))
        return f"json: a {size:,}-byte file (a long description)", dump(inner, None).encode()
    if variant == "bigint":
        digits = rng.choice([4301, 5000, 100_000])
        key = rng.choice(["image_size", "format", "description"])
        return f"json: {key} = a {digits}-digit integer", text.replace(
            f'"{key}": ', f'"{key}": {"7" * digits}, "x_{key}": ', 1
        ).encode()
    if variant == "nul":
        cut = rng.randrange(len(text))
        return f"json: a NUL byte at {cut}", (text[:cut] + "\x00" + text[cut:]).encode()
    n = rng.choice([1000, 50_000])
    return f"json: {n} unknown top-level keys", json.dumps({f"k{i}": i for i in range(n)}).encode()


# a few files every run includes, whatever the seed
FIXED_JSON = ["oversize", "empty", "truncate", "garbage", "deep", "bigint", "token", "encoding", "top", "keys"]
KIND_WEIGHTS = {
    "delete": 14,
    "type": 22,
    "component": 10,
    "unknown_option": 10,
    "rename": 6,
    "huge": 12,
    "format": 4,
    "json": 12,
    "combo": 10,
}


def config_cases(base: dict, count: int, seed: int):
    """``(index, kind, description, bytes)`` for ``count`` mutated config.json files, deterministically."""
    rng = random.Random(seed)
    kinds = [k for k, w in KIND_WEIGHTS.items() for _ in range(w)]
    for i in range(count):
        if i < len(FIXED_JSON):
            desc, data = invalid_json(rng, base, FIXED_JSON[i])
            yield i, "json", desc, data
            continue
        kind = rng.choice(kinds)
        if kind == "json":
            desc, data = invalid_json(rng, base)
            yield i, kind, desc, data
            continue
        config = copy.deepcopy(base)
        steps = [kind] if kind != "combo" else [rng.choice(list(STRUCTURAL)) for _ in range(rng.randint(2, 4))]
        descs = []
        for step in steps:
            try:
                descs.append(STRUCTURAL[step](rng, config))
            except (KeyError, IndexError, TypeError, ValueError):  # an earlier step removed the target
                descs.append(f"{step}: no target")
        yield i, kind, "; ".join(descs), dump(config, rng.choice([2, None])).encode()


def run_config_fuzz(invoke: Invoker, base_folder: Path, work: Path, count: int, seed: int) -> dict:
    stats = Stats()
    base = json.loads((base_folder / "config.json").read_text())
    folder = work / "model"
    shutil.copytree(base_folder, folder)
    out = work / "out" / "grid.png"
    out.parent.mkdir()
    kinds: Counter = Counter()
    rejected_by_info = 0
    for i, kind, desc, data in config_cases(base, count, seed):
        kinds[kind] += 1
        (folder / "config.json").write_bytes(data)
        before = snapshot(folder)
        case = f"config case {i} (seed {seed}, {kind}): {desc}"
        commands = [["info", folder], ["sample", folder, "-n", "2", "-o", out]]
        info_code = None
        while commands:
            args = commands.pop(0)
            out.unlink(missing_ok=True)
            result = invoke(args)
            stats.record(str(args[0]), result)
            problems = result_problems(result)
            changes = differences(before, snapshot(folder))
            if changes:
                stats.folder_changes += 1
                problems.append(f"the model folder changed: {', '.join(changes[:5])}")
            if result.exit_code != 0 and out.exists():
                problems.append(f"{args[0]} failed but wrote {out.name}")
            if problems:
                stats.fail(case, args, problems, result)
            if args[0] == "info":
                info_code = result.exit_code
                if info_code != 0:  # a rejected config: train must reject it too, creating nothing
                    rejected_by_info += 1
                    commands.append(["train", folder, "--max-steps", "1", "--batch-size", "4", "--quiet"])
            elif args[0] == "train" and result.exit_code == 0:
                stats.fail(case, args, [f"info rejected this config (exit {info_code}) but train accepted it"], result)
            if changes:  # put the folder back (with this case's config.json) for the next command
                shutil.rmtree(folder)
                shutil.copytree(base_folder, folder)
                (folder / "config.json").write_bytes(data)
                before = snapshot(folder)
    return {
        "config_files": count,
        "mutation_kinds": dict(sorted(kinds.items())),
        "runs": dict(stats.runs),
        "exit_codes": {k: dict(sorted(v.items())) for k, v in stats.codes.items()},
        "rejected_by_info": rejected_by_info,
        "max_error_line_chars": stats.max_line,
        "folder_changes": stats.folder_changes,
        "failures": stats.failures,
    }


# -- argument fuzz ------------------------------------------------------------------------------------------------


class World:
    """The files the argument fuzz points genvae at; any change to them after a refused command is a failure."""

    def __init__(self, root: Path, base_folder: Path):
        from PIL import Image

        self.root = root
        self.model = root / "model"
        shutil.copytree(base_folder, self.model)
        self.images = root / "images"
        self.images.mkdir()
        rng = random.Random(0)
        for i in range(4):
            Image.frombytes("RGB", (16, 16), rng.randbytes(16 * 16 * 3)).save(self.images / f"{i}.png")
        self.image = self.images / "0.png"
        self.file = root / "notes.txt"
        self.file.write_text("a user's file\n")
        self.empty = root / "empty"
        self.empty.mkdir()
        self.nothing = root / "no" / "such" / "folder"
        self.out = root / "out.png"  # never exists
        self.out_dir = root / "edits"
        self.new = root / "new-model"
        self.json = root / "result.json"
        self.pristine = snapshot(root)

    def changes(self) -> list[str]:
        return differences(self.pristine, snapshot(self.root))

    def restore(self, base_folder: Path) -> None:
        shutil.rmtree(self.root)
        World.__init__(self, self.root, base_folder)


def _int_bad(rng, lo: int | None, hi: int | None) -> str:
    choices = ["abc", "", "1.5", "nan", "inf", "1e3", "0x10", "--", "12abc", "½", "one"]
    if lo is not None:
        choices += [str(lo - 1), str(lo - 500), str(-(10**30)) if lo > -(10**30) else "x"]
    if hi is not None:
        choices += [str(hi + 1), "2000000" if hi < 2_000_000 else str(hi * 10), str(10**30)]
    return rng.choice(choices)


# a long argument; as a path, its one component is longer than the file system allows (ENAMETOOLONG)
LONG_ARG = "x" * 5000
FLOAT_BAD = ["nan", "NaN", "inf", "-inf", "infinity", "0", "-0", "-1", "-1e-9", "abc", "1e400", "", "0x1p3"]
DEVICE_BAD = ["tpu", "meta", "cpu:0", "", "CUDA", "gpu", "mps", "xla", "cpu,cuda", "x" * 5000]
# refused with or without CUDA (malformed, or an index the machine does not have)
DEVICE_BAD_WITHOUT_CUDA = ["cuda:-1", "cuda:abc", "cuda:0:1", "cudax", "cuda:99"]
UNKNOWN_OPTIONS = [
    ["--nosuch"],
    ["--nosuch=1"],
    ["-z"],
    ["--" + "x" * 5000],
    ["---"],
    ["--lr", "1"],
    ["--json"],
    ["--set", "train.lr=1"],
    ["--epochs", "2"],
    ["--force"],
    ["--resume"],
    ["--greedy"],
    ["--debug"],
    ["--max-memory", "8G"],
    ["--version"],
    ["--fix-level", "1"],
    ["-nn", "2"],
    ["--data", "shapes"],
    ["--seed=1"],
    ["--quiet"],
]
OUT_BAD = ["x.jpg2", "noext", "x.", ".png", "x.png.txt", "x.PDF", "x.gif", "x.svg", "x.png ", "x.json"]
BUILD_SETS_BAD = [
    "noequals",
    "=1",
    "",
    "=",
    "image_size=0",
    "image_size=-3",
    "image_size=abc",
    "image_size=1e400",
    "image_size=100000",
    "channels=2",
    "channels=abc",
    "encoder.width=0",
    "encoder.width=-1",
    "encoder.width=abc",
    "encoder.width=1.5",
    "encoder.depth=100",
    "encoder.width=" + "9" * 10_000,
    "encoder.width=" + "x" * 10_000,
    "encoder.width=" + "[" * 10_000,
    "encoder.nosuch=1",
    "nosuch.width=1",
    "encoder=conv",
    "encoder.width.x=1",
    "loss.nosuch.weight=1",
    "loss.kl.weight=abc",
    "loss.kl.weight=nan",
    "loss.kl.weight=inf",
    "loss.kl.nosuch=1",
    "loss.kl=1",
    "train.lr=nan",
    "train.lr=0",
    "train.batch_size=0",
    "train.lr_schedule=sometimes",
    "train.nosuch=1",
    "transform.latent_channels=0",
    "transform.latent_channels=1000000000",
    "transform.kernel=2",
    "encoder.activation=nosuch",
    "decoder.batch_norm=maybe",
    "x" * 10_000 + "=1",
    "train.batch_size=1000000000000",
    "prior.nosuch=1",
    "encoder.width=1e400",
    "train.betas=1,2",
    "encoder.max_width=1000000000\x00",
]
TRAIN_SETS_BAD = [
    "encoder.width=8",
    "image_size=16",
    "noequals",
    "train.nosuch=1",
    "train.lr=abc",
    "train.lr=nan",
    "train.lr=-1",
    "train.batch_size=0",
    "train.max_steps=-1",
    "train.epochs=0",
    "train.betas=1,2",
    "train.betas=" + "1," * 10_000,
    "train.freeze=nothing.here",
    "train.lr_schedule=x",
    "train.=1",
    "=",
    "train.lr=" + "9" * 10_000,
    "train.seed=-1",
    "train.keep_checkpoints=0",
    "train.phase_lr=5",
    "train.grad_clip_norm=0",
    "train.lr_multipliers=[1]",
    "train.flip=maybe",
    "train." + "x" * 10_000 + "=1",
    "loss.kl.weight=2",
    "train.train_only=nothing.here",
]
LOSS_BAD = [
    "nosuch",
    "kl:abc",
    "kl:nan",
    "kl:inf",
    "kl:1e400",
    "kl:-inf",
    "mse:1:2",
    ":",
    "x" * 5000,
    "mse,nosuch",
    "conv",
    "kl: nan",
    "kl:0x10",
]
NAME_BAD = ["nosuch", "x" * 5000, "", "CONV", "conv ", "kl", "é", "\x00", "../conv"]


def _cmd_specs(w: World, commands: set[str]) -> dict[str, dict]:
    """Per command: valid positionals and options (each case breaks them), and what it accepts."""
    m = str(w.model)
    specs: dict[str, dict] = {
        "build": {
            "pos": [],
            "opts": {"--preset": "cvae", "--set": list(TINY_CVAE), "-o": str(w.new)},
            "ints": [("--image-size", 1, 8192)],
            "loads": True,
        },
        "train": {
            "pos": [m],
            "opts": {"--max-steps": "1", "--batch-size": "4", "--quiet": None, "--data": str(w.images)},
            "ints": [
                ("--epochs", 1, None),
                ("--max-steps", 1, None),
                ("--batch-size", 1, None),
                ("--checkpoint-every", 1, None),
                ("--log-every", 1, None),
                ("--seed", 0, MAX_SEED),
            ],
            "floats": ["--lr"],
            "data": True,
            "device": True,
            "loads": True,
        },
        "sample": {
            "pos": [m],
            "opts": {"-n": "2", "-o": str(w.out), "--device": "cpu"},
            "ints": [("-n", 1, 10_000), ("--nrow", 1, None), ("--seed", 0, MAX_SEED)],
            "image_out": "-o",
            "device": True,
            "loads": True,
        },
        "reconstruct": {
            "pos": [m],
            "opts": {"--data": str(w.images), "-n": "2", "-o": str(w.out)},
            "ints": [("-n", 1, 1024), ("--seed", 0, MAX_SEED)],
            "image_out": "-o",
            "data": True,
            "device": True,
            "loads": True,
        },
        "evaluate": {
            "pos": [m],
            "opts": {"--data": str(w.images), "--limit": "2"},
            "ints": [("--limit", 1, None), ("--batch-size", 1, None)],
            "data": True,
            "device": True,
            "loads": True,
        },
        "info": {"pos": [m], "opts": {}, "ints": [], "loads": True},
        "list-plugins": {"pos": [], "opts": {}, "ints": []},
        "draw": {
            "pos": [m],
            "opts": {"-o": str(w.out), "-n": "2"},
            "ints": [("-n", 1, 256), ("--seed", 0, MAX_SEED)],
            "image_out": "-o",
            "device": True,
            "loads": True,
        },
        "traverse": {
            "pos": [m],
            "opts": {"--step": "1", "-o": str(w.out), "-n": "2", "--columns": "2"},
            "ints": [("--step", 1, None), ("-n", 1, 256), ("--columns", 2, 256), ("--seed", 0, MAX_SEED)],
            "image_out": "-o",
            "device": True,
            "loads": True,
        },
        # never valid on a conv VAE (no Laplacian pyramid): every case is bad twice over
        "edit": {
            "pos": [m, str(w.image)],
            "opts": {"-o": str(w.out_dir)},
            "ints": [("--keep-levels", 1, None), ("-n", 1, 256), ("--seed", 0, MAX_SEED)],
            "device": True,
            "loads": True,
        },
        "train-levels": {
            "pos": [m],
            "opts": {"--greedy": None, "--steps": "1", "--data": str(w.images)},
            "ints": [("--steps", 1, None), ("--batch-size", 1, None), ("--seed", 0, MAX_SEED)],
            "floats": ["--lr"],
            "data": True,
            "device": True,
            "loads": True,
        },
    }
    return {k: v for k, v in specs.items() if k in commands}


def _render(cmd: str, pos: list, opts: dict, extra: list, rng, pre: list) -> list[str]:
    flat: list[list[str]] = []
    for flag, value in opts.items():
        if isinstance(value, list):
            flat += [[flag, v] for v in value]
        else:
            flat.append([flag] if value is None else [flag, value])
    rng.shuffle(flat)
    return [*pre, cmd, *pos, *(a for pair in flat for a in pair), *extra]


def arg_cases(w: World, commands: dict, count: int, seed: int):
    """``(index, command, mutations, args)`` for ``count`` argument lists, each broken at least once."""
    rng = random.Random(seed)
    specs = _cmd_specs(w, set(commands))
    valid_flags = {name: {o for p in commands[name].params for o in (*p.opts, *p.secondary_opts)} for name in specs}
    value_flags = {
        name: sorted(
            o
            for p in commands[name].params
            if p.param_type_name == "option"
            and not p.is_flag
            and not p.count
            and not getattr(p, "_flag_needs_value", False)  # --amp, --channels-last: a bare flag is a value too
            for o in p.opts
        )
        for name in specs
    }
    names = sorted(specs)

    device_bad = DEVICE_BAD + DEVICE_BAD_WITHOUT_CUDA
    for i in range(count):
        cmd = names[i % len(names)] if i < len(names) else rng.choice(names)
        spec = specs[cmd]
        pos = list(spec["pos"])
        opts = copy.deepcopy(spec["opts"])
        extra: list[str] = []
        pre: list[str] = []
        tail: list[str] = []
        applied: list[str] = []
        kinds = ["unknown", "missing", "extra"]
        if spec["ints"]:
            kinds += ["int"] * 4
        if spec.get("floats"):
            kinds += ["float"] * 2
        if spec.get("data"):
            kinds += ["data"] * 2
        if spec.get("device"):
            kinds += ["device"] * 2
        if spec.get("image_out"):
            kinds += ["out"] * 2
        if pos:
            kinds += ["folder"] * 2
        if spec.get("loads"):
            kinds += ["memory"]
        if cmd == "build":
            kinds += ["names"] * 3 + ["build_set"] * 4 + ["build_out"] * 2
        if cmd == "train":
            kinds += ["train_set"] * 3 + ["train_flags"]
        if cmd == "sample":
            kinds += ["sample_from"] * 2
        if cmd == "evaluate":
            kinds += ["json_out"]
        if cmd == "traverse":
            kinds += ["traverse_step"]
        for kind in rng.sample(kinds, k=min(len(kinds), rng.choice([1, 1, 1, 2]))):
            if kind == "unknown":
                bad = rng.choice([u for u in UNKNOWN_OPTIONS if u[0].split("=")[0] not in valid_flags[cmd]])
                extra += bad
                applied.append(f"unknown option {describe(' '.join(bad))}")
            elif kind == "missing":
                required = [f for f in ("-o", "--step", "--steps") if f in opts]
                choice = rng.choice(["positional", "required", "value"])
                if choice == "positional" and pos:
                    pos.pop(rng.randrange(len(pos)))
                    applied.append("missing positional argument")
                elif choice == "required" and required:
                    flag = rng.choice(required)
                    del opts[flag]
                    applied.append(f"missing {flag}")
                else:  # an option without its value, last on the line
                    flags = value_flags[cmd]
                    if flags:
                        flag = rng.choice(flags)
                        opts.pop(flag, None)
                        tail = [flag]
                        applied.append(f"{flag} without its value")
                    else:
                        extra.append("--nosuch")
                        applied.append("unknown option --nosuch")
            elif kind == "extra":
                # (a folder that is no model: the argument may end up as the FOLDER a mutation removed)
                value = rng.choice(["extra", str(w.images), LONG_ARG, "-", "1"])
                extra.append(value)
                applied.append(f"extra argument {describe(value)}")
            elif kind == "int":
                flag, lo, hi = rng.choice(spec["ints"])
                value = _int_bad(rng, lo, hi)
                if value == "--":
                    value = "-" + "-" * rng.randint(1, 3)
                opts[flag] = value
                applied.append(f"{flag} {describe(value)}")
            elif kind == "float":
                flag = rng.choice(spec["floats"])
                opts[flag] = rng.choice(FLOAT_BAD)
                applied.append(f"{flag} {describe(opts[flag])}")
            elif kind == "data":
                value = rng.choice(
                    [
                        str(w.file),
                        str(w.nothing),
                        str(w.empty),
                        "nosuchdataset",
                        "x" * 300,
                        str(w.image),
                        "mnist",
                        "",
                        "shapes\x00",
                    ]
                )
                opts["--data"] = value
                if value == "mnist":
                    opts["--data-root"] = str(w.nothing)
                applied.append(f"--data {describe(value)}")
            elif kind == "device":
                value = rng.choice(device_bad)
                opts["--device"] = value
                applied.append(f"--device {describe(value)}")
            elif kind == "out":
                flag = spec["image_out"]
                value = rng.choice([*(str(w.root / name) for name in OUT_BAD), str(w.file), str(w.images), str(w.root)])
                opts[flag] = value
                applied.append(f"{flag} {describe(value)}")
            elif kind == "folder":
                value = rng.choice(
                    [
                        str(w.nothing),
                        str(w.file),
                        str(w.empty),
                        str(w.images),
                        str(w.image),
                        str(w.model / "config.json"),
                        "",
                        str(w.model) + "/nosuch",
                    ]
                )
                if pos:  # (unless a missing-argument mutation took it)
                    pos[0] = value
                    applied.append(f"folder {describe(value)}")
            elif kind == "memory":
                value = rng.choice(
                    ["1", "10", "1K", "abc", "0", "-1G", "1e40", "", "8Q", "1.5.3G", "x" * 5000, "nan", "inf"]
                )
                pre = ["--max-memory", value]
                applied.append(f"--max-memory {describe(value)}")
            elif kind == "names":
                flag = rng.choice(
                    ["--preset", "--encoder", "--decoder", "--prior", "--transform", "--loss", "--channels"]
                )
                value = rng.choice(
                    LOSS_BAD if flag == "--loss" else ["2", "0", "rgb", "4"] if flag == "--channels" else NAME_BAD
                )
                opts[flag] = value
                applied.append(f"{flag} {describe(value)}")
            elif kind == "build_set":
                value = rng.choice(BUILD_SETS_BAD)
                extra += ["--set", value]  # after the valid --set options: a later --set wins
                applied.append(f"--set {describe(value)}")
            elif kind == "build_out":
                value = rng.choice([str(w.file), str(w.images), str(w.model), str(w.root)])
                opts["-o"] = value
                applied.append(f"-o {describe(value)}")
            elif kind == "train_set":
                value = rng.choice(TRAIN_SETS_BAD)
                opts["--set"] = value
                applied.append(f"--set {describe(value)}")
            elif kind == "train_flags":
                opts["--resume"] = None
                opts["--restart"] = None
                applied.append("--resume --restart")
            elif kind == "sample_from":
                choice = rng.choice(["from only", "fix only", "fix out of range", "fix not a number", "from file"])
                if choice == "from only":
                    opts["--from"] = str(w.image)
                elif choice == "fix only":
                    opts["--fix-levels"] = "1"
                elif choice == "fix out of range":
                    opts["--from"] = str(w.image)
                    opts["--fix-levels"] = rng.choice(["2", "-1", "5", str(10**30)])
                elif choice == "fix not a number":
                    opts["--from"] = str(w.image)
                    opts["--fix-levels"] = rng.choice(["abc", "1.5", ""])
                else:
                    opts["--from"] = rng.choice([str(w.file), str(w.nothing)])
                    opts["--fix-levels"] = "1"
                applied.append(f"{choice}")
            elif kind == "json_out":
                value = rng.choice([str(w.file), str(w.images), str(w.image)])
                opts["-o"] = value
                applied.append(f"-o {describe(value)}")
            elif kind == "traverse_step":
                opts["--step"] = rng.choice(["2", "100", str(10**30)])
                applied.append(f"--step {opts['--step']}")
        yield i, cmd, "; ".join(applied), [*_render(cmd, pos, opts, extra, rng, pre), *tail]


def known_bug_args(w: World) -> list[list[str]]:
    """Inputs of the bugs the fuzz found (see the regression tests at the end)."""
    m = str(w.model)
    return [
        ["info", str(w.root / ("a" * 300))],
        ["sample", m, "-n", "2", "-o", str(w.root / ("a" * 300 + ".png"))],
        ["train", m, "--data", str(w.images), "--max-steps", "1", "--batch-size", str(10**12)],
        ["sample", m, "-n", "2", "-o", str(w.out), "--device", "cuda:99"],  # where CUDA is available
    ]


def check_base_args(invoke: Invoker, w: World, base_folder: Path, scratch: Path) -> list[str]:
    """Each command's unbroken arguments succeed (run on a scratch copy), so a case fails by its mutation."""
    problems = []
    specs = _cmd_specs(w, set(invoke.commands))
    for cmd, spec in specs.items():
        if cmd in ("edit", "train-levels"):
            continue  # need a LapCVAE; the fuzz model is a conv VAE
        folder = scratch / f"{cmd}-model"
        shutil.copytree(base_folder, folder)
        args = _render(cmd, list(spec["pos"]), copy.deepcopy(spec["opts"]), [], random.Random(0), [])
        args = [
            a.replace(str(w.model), str(folder))
            .replace(str(w.out), str(scratch / f"{cmd}.png"))
            .replace(str(w.new), str(scratch / f"{cmd}-new"))
            for a in args
        ]
        result = invoke(args)
        if result.exit_code != 0:
            problems.append(f"base arguments of {cmd} fail: {args} -> {result.exit_code} {result.output[-300:]!r}")
    return problems


def run_arg_fuzz(invoke: Invoker, base_folder: Path, work: Path, count: int, seed: int) -> dict:
    stats = Stats()
    world = World(work / "world", base_folder)
    base_problems = check_base_args(invoke, world, base_folder, work / "scratch")
    for problem in base_problems:
        stats.fail("base arguments", [], [problem])
    cases = list(arg_cases(world, invoke.commands, count, seed))
    cases += [(count + j, a[0], "found bug", a) for j, a in enumerate(known_bug_args(world))]
    cwd = os.getcwd()
    os.chdir(world.empty.parent)  # relative paths ("" is the current folder) resolve inside the world
    try:
        for i, cmd, desc, args in cases:
            result = invoke(args)
            stats.record(cmd, result)
            problems = result_problems(result)
            if result.exit_code == 0:
                problems.append("bad arguments were accepted (exit 0)")
            changes = world.changes()
            if changes:
                stats.folder_changes += 1
                problems.append(f"files changed: {', '.join(changes[:5])}")
                world.restore(base_folder)
            if problems:
                stats.fail(f"argument case {i} (seed {seed}, {cmd}): {desc}", args, problems, result)
    finally:
        os.chdir(cwd)
    codes: Counter = Counter()
    for per in stats.codes.values():
        codes.update(per)
    return {
        "argument_lists": len(cases),
        "runs": dict(sorted(stats.runs.items())),
        "exit_codes": dict(sorted(codes.items())),
        "max_error_line_chars": stats.max_line,
        "folder_changes": stats.folder_changes,
        "failures": stats.failures,
    }


# -- model-folder fuzz: links and files of the user's where genvae writes ----------------------------------------


class FolderWorld:
    """A trained model folder (checkpoints at steps 2 and 4, grids, metrics, history) beside a folder and a file of
    the user's (the *victims* links point at), plus the user's files put inside the model folder by a case."""

    def __init__(self, root: Path, template: Path, rng: random.Random):
        self.root = root
        self.model = root / "model"
        shutil.copytree(template, self.model, symlinks=True)
        self.victim = root / "victim"
        self.victim.mkdir()
        (self.victim / "vacation.png").write_bytes(b"a photo")
        (self.victim / "step-00000002").mkdir()
        (self.victim / "step-00000002" / "model.safetensors").write_bytes(b"an archive copy")
        self.victim_file = root / "thesis.txt"
        self.victim_file.write_text("chapter 1\n")
        self.users: dict[str, bytes] = {}  # relative path in the model folder -> the user's bytes there
        self.rng = rng

    def manifest(self) -> dict:
        return json.loads((self.model / ".genvae-manifest.json").read_text())

    def claim(self, *rels: str) -> None:
        data = self.manifest()
        data["files"] = sorted({*data["files"], *rels})
        (self.model / ".genvae-manifest.json").write_text(json.dumps(data))

    def disown(self, rel: str) -> None:
        data = self.manifest()
        data["files"] = [f for f in data["files"] if f != rel]
        (self.model / ".genvae-manifest.json").write_text(json.dumps(data))

    def replace_with_link(self, rel: str, target: Path) -> None:
        self.users = {k: v for k, v in self.users.items() if k != rel and not k.startswith(rel + "/")}
        path = self.model / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target if self.rng.random() < 0.5 else os.path.relpath(target, path.parent), path)

    def put_users_file(self, rel: str) -> None:
        path = self.model / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"the user's {rel}\n".encode()
        path.write_bytes(data)
        self.disown(rel)
        self.users[rel] = data

    def victims(self) -> dict[str, bytes]:
        return {**snapshot(self.victim), "thesis.txt": self.victim_file.read_bytes()}


LINKED_DIRS = ["samples", "checkpoints", "checkpoints/step-00000002", "checkpoints/step-00000004", "logs", "stages"]
LINKED_FILES = [
    "metrics.jsonl",
    "commands.jsonl",
    "samples/epoch-0001.png",
    "checkpoints/step-00000004/trainer.json",
    "report.html",
]
USERS_FILES = [
    "metrics.jsonl",
    "commands.jsonl",
    "report.html",
    "samples/epoch-0002.png",
    "samples/epoch-0003.png",
    "samples/step-00000007.png",
    "checkpoints/step-00000006/model.safetensors",
    "checkpoints/step-00000008/trainer.json",
    "logs/tensorboard/notes.txt",
    "config.json.bak",
    "checkpoints/step-00000006/notes.txt",
]


def folder_case(w: FolderWorld, rng: random.Random) -> list[str]:
    """Break the model folder with 1-3 link or foreign-file mutations; returns what was done."""
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        kind = rng.choice(["link_dir", "link_dir", "link_file", "users_file", "users_file", "claim"])
        if kind == "link_dir":
            rel = rng.choice(LINKED_DIRS)
            target = rng.choice([w.victim, w.victim / "step-00000002"])
            w.replace_with_link(rel, target)
            done.append(f"{rel} -> {target.name}/")
        elif kind == "link_file":
            rel = rng.choice(LINKED_FILES)
            if (w.model / rel).parent.is_symlink():
                continue
            w.replace_with_link(rel, w.victim_file)
            done.append(f"{rel} -> thesis.txt")
        elif kind == "users_file":
            rel = rng.choice(USERS_FILES)
            if any((w.model / p).is_symlink() for p in Path(rel).parents if str(p) != "."):
                continue
            w.put_users_file(rel)
            done.append(f"user's {rel}")
        else:
            rel = rng.choice(
                [
                    "samples/vacation.png",
                    "checkpoints/step-00000002/model.safetensors",
                    "logs/vacation.png",
                    "../thesis.txt",
                    "stages/level-0/vacation.png",
                ]
            )
            w.claim(rel)
            done.append(f"manifest claims {rel}")
    return done


def folder_commands(w: FolderWorld, images: Path, rng: random.Random) -> list[str]:
    m = str(w.model)
    train = ["--data", str(images), "--batch-size", "4", "--checkpoint-every", "2", "--log-every", "2", "--quiet"]
    return rng.choice(
        [
            [*BUILD_ARGS, "-o", m, "--force"],
            ["train", m, "--resume", "--max-steps", "8", *train],
            ["train", m, "--restart", "--max-steps", "4", *train],
            ["train", m, "--resume", "--max-steps", "6", "--report", *train],
            ["train", m, "--restart", "--max-steps", "2", "--logger", "tensorboard", *train],
            ["train", m, "--max-steps", "2", *train],
            ["sample", m, "-n", "2", "-o", str(w.root / "grid.png")],
            ["info", m],
        ]
    )


def run_folder_fuzz(invoke: Invoker, base_folder: Path, work: Path, count: int, seed: int) -> dict:
    """Hostile model folders (links to the user's files and folders, the user's files at genvae's names, a
    manifest claiming paths behind links) under the commands that write and delete: nothing of the user's may
    change, and a refused command changes nothing at all."""
    stats = Stats()
    rng = random.Random(seed)
    template = work / "template"
    shutil.copytree(base_folder, template)
    images = _images(work)
    trained = invoke(
        [
            "train",
            template,
            "--data",
            images,
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--checkpoint-every",
            "2",
            "--log-every",
            "2",
            "--quiet",
        ]
    )
    assert trained.exit_code == 0, trained.output
    outcomes: Counter = Counter()
    for i in range(count):
        case_root = work / f"case-{i}"
        w = FolderWorld(case_root, template, rng)
        done = folder_case(w, rng)
        args = folder_commands(w, images, rng)
        victims, before = w.victims(), snapshot(w.model)
        before.pop(".genvae.lock", None)
        result = invoke(args)
        stats.record(args[0], result)
        problems = result_problems(result)
        if w.victims() != victims:
            problems.append(f"the user's files behind a link changed: {differences(victims, w.victims())[:5]}")
        after = snapshot(w.model)
        after.pop(".genvae.lock", None)
        for rel, data in w.users.items():
            if after.get(rel) != data:
                problems.append(f"the user's {rel} was {'changed' if rel in after else 'deleted'}")
        if result.exit_code != 0:
            changes = differences(before, after)
            if changes:
                stats.folder_changes += 1
                problems.append(f"refused, yet the folder changed: {', '.join(changes[:5])}")
        outcomes["refused" if result.exit_code else "ran"] += 1
        if problems:
            stats.fail(f"folder case {i} (seed {seed}): {'; '.join(done)}", [str(a) for a in args], problems, result)
        shutil.rmtree(case_root)
    return {
        "folders": count,
        "runs": dict(sorted(stats.runs.items())),
        "outcomes": dict(outcomes),
        "max_error_line_chars": stats.max_line,
        "folder_changes": stats.folder_changes,
        "failures": stats.failures,
    }


# -- the child process ---------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    import resource  # POSIX

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def fuzz(work: Path, config_count: int, arg_count: int, seed: int, folder_count: int = 0) -> dict:
    """The three fuzzes in this process; returns the summary (failures listed, not raised)."""
    start = time.perf_counter()
    import torch  # noqa: F401

    import genvae.cli.main  # noqa: F401

    invoke = Invoker()
    base_folder = work / "base"
    built = invoke([*BUILD_ARGS, "-o", base_folder])
    assert built.exit_code == 0, built.output
    # one valid info and sample first: what any first command loads (PIL, CUDA where present) is baseline
    for args in (["info", base_folder], ["sample", base_folder, "-n", "2", "-o", work / "warm.png"]):
        warm = invoke(args)
        assert warm.exit_code == 0, warm.output
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    config = run_config_fuzz(invoke, base_folder, work / "config-fuzz", config_count, seed)
    t1 = time.perf_counter()
    arguments = run_arg_fuzz(invoke, base_folder, work / "arg-fuzz", arg_count, seed + 1)
    t2 = time.perf_counter()
    (work / "folder-fuzz").mkdir()
    folders = run_folder_fuzz(invoke, base_folder, work / "folder-fuzz", folder_count, seed + 2)
    t3 = time.perf_counter()
    rss_after = _rss_mb()
    failures = config.pop("failures") + arguments.pop("failures") + folders.pop("failures")
    return {
        "seed": seed,
        "config_fuzz": {**config, "seconds": round(t1 - t0, 1)},
        "argument_fuzz": {**arguments, "seconds": round(t2 - t1, 1)},
        "folder_fuzz": {**folders, "seconds": round(t3 - t2, 1)},
        "max_error_line_chars": max(
            config["max_error_line_chars"], arguments["max_error_line_chars"], folders["max_error_line_chars"]
        ),
        "folder_changes": config["folder_changes"] + arguments["folder_changes"] + folders["folder_changes"],
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "peak_rss_growth_mb": round(rss_after - rss_before, 1),
        "failure_count": len(failures),
        "failures": failures[:40],
        "seconds": round(time.perf_counter() - start, 1),
    }


def _counts() -> tuple[int, int, int]:
    return (
        int(os.environ.get("GENVAE_FUZZ_CONFIG_CASES", CONFIG_CASES)),
        int(os.environ.get("GENVAE_FUZZ_ARG_CASES", ARG_CASES)),
        int(os.environ.get("GENVAE_FUZZ_SEED", SEED)),
    )


def _folder_count() -> int:
    return int(os.environ.get("GENVAE_FUZZ_FOLDER_CASES", FOLDER_CASES))


def main(argv: list[str]) -> int:
    configs, args, seed = _counts()
    if argv[:1] == ["--run"] and len(argv) == 2:
        work = Path(argv[1])
        work.mkdir(parents=True, exist_ok=True)
        summary = fuzz(work, configs, args, seed, _folder_count())
        print(json.dumps(summary))
        return 0
    if argv[:1] == ["--show-config-case"] and len(argv) == 2:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            invoke = Invoker()
            result = invoke([*BUILD_ARGS, "-o", Path(tmp) / "m"])
            assert result.exit_code == 0, result.output
            base = json.loads((Path(tmp) / "m" / "config.json").read_text())
        wanted = int(argv[1])
        for i, kind, desc, data in config_cases(base, wanted + 1, seed):
            if i == wanted:
                print(f"# config case {i} ({kind}): {desc}", file=sys.stderr)
                sys.stdout.buffer.write(data)
        return 0
    if argv[:1] == ["--show-args-case"] and len(argv) == 2:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            invoke = Invoker()
            result = invoke([*BUILD_ARGS, "-o", Path(tmp) / "base"])
            assert result.exit_code == 0, result.output
            world = World(Path(tmp) / "world", Path(tmp) / "base")
            wanted = int(argv[1])
            for i, cmd, desc, case_args in arg_cases(world, invoke.commands, wanted + 1, seed + 1):
                if i == wanted:
                    print(f"# argument case {i} ({cmd}): {desc} (paths under the world folder)")
                    print(json.dumps(case_args))
        return 0
    print(__doc__)
    return 2


# -- the tests ------------------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GENVAE_LOAD_PLUGINS": ""}
    env.pop("GENVAE_MAX_MEMORY", None)  # the default limit, as a user gets it
    env.pop("GENVAE_NO_PLUGIN_COMMANDS", None)
    return env


@pytest.mark.slow
def test_cli_fuzz_config_files_and_arguments(tmp_path):
    """>= 1000 hostile config.json files and >= 1000 bad argument lists, in one child process."""
    child = subprocess.run(
        [sys.executable, __file__, "--run", str(tmp_path / "fuzz")],
        capture_output=True,
        text=True,
        timeout=900,
        env=_child_env(),
        cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    summary = json.loads(child.stdout.strip().splitlines()[-1])
    report = os.environ.get("GENVAE_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(summary, indent=2) + "\n")
    figures = {k: v for k, v in summary.items() if k != "failures"}
    print("FUZZ", json.dumps(figures))
    for failure in summary["failures"]:
        print("FAILED", json.dumps(failure))
    configs, args, _ = _counts()
    assert summary["config_fuzz"]["config_files"] >= min(configs, CONFIG_CASES)
    assert summary["argument_fuzz"]["argument_lists"] >= min(args, ARG_CASES)
    assert summary["folder_fuzz"]["folders"] >= min(_folder_count(), FOLDER_CASES)
    assert summary["failure_count"] == 0, json.dumps(summary["failures"][:10], indent=1)
    assert summary["folder_changes"] == 0
    assert summary["max_error_line_chars"] <= MAX_LINE
    assert summary["peak_rss_growth_mb"] < RSS_LIMIT_MB, figures


@pytest.mark.long
def test_cli_fuzz_ten_times_longer(tmp_path, monkeypatch):
    """The same fuzz with 10,000 config files and 10,000 argument lists at another seed (a few minutes)."""
    monkeypatch.setenv("GENVAE_FUZZ_CONFIG_CASES", os.environ.get("GENVAE_FUZZ_CONFIG_CASES", "10000"))
    monkeypatch.setenv("GENVAE_FUZZ_ARG_CASES", os.environ.get("GENVAE_FUZZ_ARG_CASES", "10000"))
    monkeypatch.setenv("GENVAE_FUZZ_FOLDER_CASES", os.environ.get("GENVAE_FUZZ_FOLDER_CASES", "600"))
    monkeypatch.setenv("GENVAE_FUZZ_SEED", os.environ.get("GENVAE_FUZZ_SEED", "777"))
    test_cli_fuzz_config_files_and_arguments(tmp_path)


# -- small reproductions ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "m"
    result = Invoker()([*BUILD_ARGS, "-o", folder])
    assert result.exit_code == 0, result.output
    return folder


def _refused_cleanly(result) -> None:
    assert result.exit_code in (1, 2), result.output
    assert not result_problems(result), result_problems(result)


def _images(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    return folder


# -- bugs the fuzz found that are fixed: regression tests -----------------------------------------------------------


def test_seeds_are_64_bit(fuzz_model, tmp_path):
    """Seeds >= 2**64 (torch.manual_seed) or >= ~1.8e13 (the data-order stream) were internal errors; then seeds of
    2**64 or more were reduced mod 2**64, so --seed 2**64 silently equalled --seed 0. Now they are refused in one line,
    on the command line (a usage error) and in train.seed, and every seed up to 2**64-1 works."""
    invoke = Invoker()
    result = invoke(["sample", fuzz_model, "-n", "2", "-o", tmp_path / "s.png", "--seed", str(2**64 - 1)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "m"
    shutil.copytree(fuzz_model, folder)
    result = invoke(
        [
            "train",
            folder,
            "--data",
            _images(tmp_path),
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--seed",
            str(2 * 10**13),
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    before = json.loads((folder / "config.json").read_text())
    for args in (
        ["sample", fuzz_model, "-n", "2", "-o", tmp_path / "t.png", "--seed", str(2**64)],
        ["train", folder, "--restart", "--max-steps", "1", "--seed", str(2**64 + 5)],
    ):
        result = invoke(args)
        _refused_cleanly(result)
        assert result.exit_code == 2
        assert "is not a seed; a seed is an integer in 0..2**64-1" in result.stderr, result.stderr
    result = invoke(["train", folder, "--restart", "--max-steps", "1", "--set", f"train.seed={2**64}"])
    _refused_cleanly(result)
    assert "train option 'seed': expected an integer in 0..2**64-1" in result.stderr, result.stderr
    assert json.loads((folder / "config.json").read_text()) == before and not (tmp_path / "t.png").exists()


def test_every_seed_option_takes_64_bit_seeds_only():
    """--seed of every command, the plugins' included, has the same type (0..2**64-1)."""
    from genvae.api import SEED

    seeds = {
        name: param for name, command in Invoker().commands.items() for param in command.params if param.name == "seed"
    }
    assert {"train", "sample", "evaluate", "reconstruct", "draw", "traverse", "edit", "train-levels"} <= set(seeds)
    for name, param in seeds.items():
        assert param.type is SEED, name
        assert param.type.convert(str(2**64 - 1), param, None) == 2**64 - 1
        with pytest.raises(click.BadParameter, match=r"0\.\.2\*\*64-1"):
            param.type.convert(str(2**64), param, None)


@pytest.mark.parametrize("setting", ["train.batch_size=1" + "0" * 400, "image_size=1" + "0" * 200])
def test_astronomical_sizes_are_refused_in_one_line(tmp_path, setting):
    """Sizes over ~1e308 bytes overflowed float division in the budget message: an internal error."""
    result = Invoker()([*BUILD_ARGS, "--set", setting, "-o", tmp_path / "m"])
    _refused_cleanly(result)
    assert "Error: model spec needs over " in result.stderr and not (tmp_path / "m").exists()


def test_error_lines_are_cut_to_400_characters_with_the_prefix(tmp_path):
    """The message was cut to 400 characters before 'Error: ' was put in front of it (407 in all)."""
    for args in ([*BUILD_ARGS, "--set", "x" * 10_000 + "=1", "-o", tmp_path / "m"], ["list-plugins", "y" * 5000]):
        result = Invoker()(args)
        _refused_cleanly(result)
        assert len(result.stderr.splitlines()[0]) == MAX_LINE


# -- regressions: bugs the fuzz found, each a minimal reproduction -------------------------------------------


@pytest.mark.parametrize("command", ["info", "sample-output", "build-output"])
def test_file_name_too_long_is_one_line(fuzz_model, tmp_path, command):
    long = tmp_path / ("a" * 300)
    args = {
        "info": ["info", long],
        "sample-output": ["sample", fuzz_model, "-n", "2", "-o", f"{long}.png"],
        "build-output": [*BUILD_ARGS, "-o", long],
    }[command]
    _refused_cleanly(Invoker()(args))


def test_huge_train_batch_size_is_refused_before_config_is_written(fuzz_model, tmp_path):
    """train --batch-size N was clamped to the data but recorded in config.json, after which every load failed."""
    folder = tmp_path / "m"
    shutil.copytree(fuzz_model, folder)
    before = (folder / "config.json").read_bytes()
    invoke = Invoker()
    first = invoke(
        ["train", folder, "--data", _images(tmp_path), "--max-steps", "1", "--batch-size", str(10**12), "--quiet"]
    )
    _refused_cleanly(first)
    assert (folder / "config.json").read_bytes() == before
    assert invoke(["info", folder]).exit_code == 0


@pytest.mark.cuda
@pytest.mark.parametrize("device", ["cuda:abc", "cuda:-1", "cudax", "cuda:99"])
def test_bad_cuda_device_names_on_a_cuda_machine(fuzz_model, tmp_path, device):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    _refused_cleanly(Invoker()(["sample", fuzz_model, "-n", "2", "-o", tmp_path / "s.png", "--device", device]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

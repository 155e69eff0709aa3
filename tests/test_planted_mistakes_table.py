"""tools/planted_mistakes.py stays in step with the code: every planted mistake's original text is in its file
exactly once (an entry whose text moved would never be planted, and so never be missed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_planted_mistake_targets_one_place_in_the_code():
    spec = importlib.util.spec_from_file_location("planted_mistakes", ROOT / "tools" / "planted_mistakes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [
        (label, path)
        for label, path, original, *_ in module.MISTAKES
        if not (ROOT / path).is_file() or (ROOT / path).read_text(encoding="utf-8").count(original) != 1
    ]
    assert len(module.MISTAKES) > 50 and stale == []

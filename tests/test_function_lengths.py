"""Short readable functions: none over ``MAX_LINES`` lines in train/, study/ and cli.py (the project's style).

A function's length counts every line from its ``def`` to its last line: docstring, comments and
blank lines included, as a reader sees it. Nested functions count inside their parent too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"
MAX_LINES = 80
PLACES = ["train", "study", "cli.py"]


def long_functions(paths: list[Path], limit: int = MAX_LINES) -> list[str]:
    """``file:function (N lines)`` for each function longer than ``limit``."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.name}:{node.name} ({lines} lines)")
    return found


def sources(place: str) -> list[Path]:
    path = PACKAGE / place
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("place", PLACES)
def test_no_function_is_too_long(place):
    assert sources(place), f"nothing found at {place}"
    too_long = long_functions(sources(place))
    assert too_long == [], f"functions over {MAX_LINES} lines in {place}: " + ", ".join(too_long)


def test_the_measure_sees_a_long_function(tmp_path):
    """The test above would fail on a planted 81-line function, nested or not, and pass at 80."""
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    (tmp_path / "a.py").write_text(f"def ok():\n{body}\n\ndef long():\n{body}    y = 1\n")
    (tmp_path / "b.py").write_text("class C:\n    def m(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(80)))
    assert long_functions([tmp_path / "a.py", tmp_path / "b.py"]) == ["a.py:long (81 lines)", "b.py:m (81 lines)"]

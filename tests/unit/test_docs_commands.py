"""Every `tl-ray` command in the code blocks of docs/ is one tl-ray's own parser accepts, as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tl_ray.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^ *```[a-z]*\n(?P<body>.*?)^ *```", re.M | re.S)


def _commands() -> list[tuple[str, str]]:
    """``(file:line, command)`` of each command in a code block that runs tl-ray, continuation lines joined
    (a ``$ `` prompt is dropped; the shell split drops ``#`` comments)."""
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        for block in _BLOCK.finditer(text):
            lineno = text.count("\n", 0, block.start("body"))
            command = ""
            for line in block.group("body").splitlines():
                lineno += 1
                command += line.strip().removeprefix("$ ")
                if command.endswith("\\"):
                    command = command[:-1]
                    continue
                if command.startswith("tl-ray "):
                    found.append((f"{path.name}:{lineno}", command))
                command = ""
    return found


COMMANDS = _commands()


def test_the_docs_hold_commands():
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_docs_commands_parse(where, command):
    argv = shlex.split(command, comments=True)
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` is rejected by tl-ray's parser (exit {exc.code})")

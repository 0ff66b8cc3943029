"""The shell commands a Markdown file shows, parsed as a reader would type them, and answers compared.

Commands come from fenced blocks in a shell language (or none: an untagged block is read as shell),
with `\\` continuations joined and `# comments` outside quotes split off; from console blocks, where
`$ ` starts a command and the lines up to the next prompt are its output; and from inline code spans
that start with a known program (`python -m predictor --help` in a sentence is a command too).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHELL_LANGUAGES = frozenset({"", "bash", "sh", "shell", "zsh", "console", "shell-session", "terminal"})
# First words that make an inline code span (or an indented block) a command rather than a name.
PROGRAMS = frozenset({"python", "python3", "pip", "pip3", "curl", "make", "kubectl", "helm", "docker", "open",
                      "xdg-open", "predictor", "torchserve", "torch-model-archiver", "git", "export", "cd"})
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


@dataclass(frozen=True)
class Command:
    """One command as the document shows it."""

    text: str  # continuations joined, the trailing comment removed
    comment: str  # the trailing `# ...` without the hash ('' when none)
    output: str | None  # console blocks: what the document shows it printing
    source: str  # file:line of its first line
    block: str  # the block's language, or "inline"

    @property
    def key(self) -> str:
        """The text with runs of white space collapsed: how tables name a command."""
        return " ".join(self.text.split())

    @property
    def words(self) -> list[str]:
        """The shell words (quotes removed); the raw split when the text does not tokenise."""
        try:
            return shlex.split(self.text)
        except ValueError:
            return self.text.split()

    @property
    def program(self) -> str:
        """The first word."""
        words = self.words
        return words[0] if words else ""


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): a `#` that starts a word outside quotes starts the comment."""
    quote = ""
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _join_continuations(lines: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(first line number, logical line): a line ending in a backslash continues on the next."""
    pending: list[str] = []
    start = 0
    for number, line in lines:
        if not pending:
            start = number
        stripped = line.strip()
        pending.append(stripped[:-1].strip() if stripped.endswith("\\") else stripped)
        if not stripped.endswith("\\"):
            yield start, " ".join(p for p in pending if p)
            pending = []
    if pending:
        yield start, " ".join(p for p in pending if p)


def _unwrap_usage(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A usage line wrapped for width (an indented line of `[--flag ...]`) continues the line above."""
    merged: list[tuple[int, str]] = []
    for number, line in lines:
        if merged and line[:1].isspace() and line.lstrip().startswith("[") and \
                not merged[-1][1].rstrip().endswith("\\"):
            first, above = merged[-1]
            text, comment = split_comment(above)
            merged[-1] = (first, f"{text} {line.strip()}" + (f"  # {comment}" if comment else ""))
        else:
            merged.append((number, line))
    return merged


def _shell_block(lines: list[tuple[int, str]], name: str, language: str) -> Iterator[Command]:
    for number, logical in _join_continuations(_unwrap_usage(lines)):
        text, comment = split_comment(logical)
        if text.strip():
            yield Command(text.strip(), comment, None, f"{name}:{number}", language)


def _console_block(lines: list[tuple[int, str]], name: str, language: str) -> Iterator[Command]:
    """`$ command` (with continuations) followed by its output, up to the next prompt."""
    i = 0
    while i < len(lines):
        number, line = lines[i]
        if not line.startswith("$ "):
            i += 1
            continue
        typed = [(number, line[2:])]
        while typed[-1][1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            typed.append(lines[i])
        i += 1
        shown = []
        while i < len(lines) and not lines[i][1].startswith("$ "):
            shown.append(lines[i][1])
            i += 1
        [(_, logical)] = list(_join_continuations(typed))
        text, comment = split_comment(logical)
        yield Command(text.strip(), comment, "\n".join(shown).strip("\n"), f"{name}:{number}", language)


def _inline_commands(line: str, number: int, name: str) -> Iterator[Command]:
    for match in _INLINE.finditer(line):
        span = match.group(1).strip()
        if span.split(" ", 1)[0] in PROGRAMS:
            yield Command(span, "", None, f"{name}:{number}", "inline")


def parse_commands(markdown: str, name: str = "README.md") -> list[Command]:
    """Every command of a Markdown document, in document order."""
    commands: list[Command] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            indented = _indented_block(lines, i)
            if indented:
                commands += _shell_block(indented, name, "indented")
                i += len(indented)
                continue
            commands += _inline_commands(lines[i], i + 1, name)
            i += 1
            continue
        marker, language = fence.group("fence"), fence.group("info").lower()
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(marker):
            body.append((i + 1, lines[i][len(fence.group("indent")):]))
            i += 1
        i += 1  # the closing fence
        if language in SHELL_LANGUAGES:
            parse = _console_block if any(text.startswith("$ ") for _, text in body) else _shell_block
            commands += parse(body, name, language or "untagged")
    return commands


def _indented_block(lines: list[str], i: int) -> list[tuple[int, str]]:
    """An indented code block (4 spaces, after a blank line, outside lists) that starts with a program."""
    if not lines[i].startswith("    ") or (i > 0 and lines[i - 1].strip()):
        return []
    previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
    if re.match(r"^\s*([-*+]|\d+\.)\s", previous) or previous.startswith(" "):
        return []  # a list item's continuation, not a code block
    block = []
    while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        block.append((i + 1, lines[i][4:]))
        i += 1
    while block and not block[-1][1].strip():
        block.pop()
    first = block[0][1].split(" ", 1)[0] if block else ""
    return block if first in PROGRAMS else []


def parse_file(path: Path, root: Path) -> list[Command]:
    """The commands of one Markdown file, sources named relative to root."""
    return parse_commands(path.read_text(encoding="utf-8"), str(path.relative_to(root)))


# ---- answers ----------------------------------------------------------------------------------------
def answer_difference(shown: str, got: str, *, rel: float = 1e-3, abs_tol: float = 1e-4) -> str | None:
    """None when `got` is the answer `shown`: the same JSON (numbers within tolerance) or the same text."""
    try:
        expected, actual = json.loads(shown), json.loads(got)
    except ValueError:
        if shown.strip() == got.strip():
            return None
        return f"expected {shown.strip()!r}, got {got.strip()!r}"
    return _json_difference(expected, actual, "$", rel, abs_tol)


def _json_difference(expected: Any, actual: Any, path: str, rel: float, abs_tol: float) -> str | None:
    if isinstance(expected, bool) or isinstance(actual, bool) or not isinstance(expected, (int, float)):
        if isinstance(expected, dict) and isinstance(actual, dict):
            if expected.keys() != actual.keys():
                return f"{path}: keys {sorted(expected)} != {sorted(actual)}"
            return next((d for k in expected
                         if (d := _json_difference(expected[k], actual[k], f"{path}.{k}", rel, abs_tol))), None)
        if isinstance(expected, list) and isinstance(actual, list):
            if len(expected) != len(actual):
                return f"{path}: {len(expected)} items expected, got {len(actual)}"
            return next((d for i, (e, a) in enumerate(zip(expected, actual))
                         if (d := _json_difference(e, a, f"{path}[{i}]", rel, abs_tol))), None)
        return None if expected == actual and type(expected) is type(actual) else \
            f"{path}: expected {expected!r}, got {actual!r}"
    if not isinstance(actual, (int, float)) or isinstance(actual, bool):
        return f"{path}: expected the number {expected!r}, got {actual!r}"
    if math.isclose(expected, actual, rel_tol=rel, abs_tol=abs_tol):
        return None
    return f"{path}: expected {expected!r}, got {actual!r}"


# A trailing comment that describes the answer instead of showing it: what it promises, checked.
def _words_and_importances(body: str) -> str | None:
    [explanation] = json.loads(body)["explanations"]
    words, importances = explanation["words"], explanation["importances"]
    ok = words and len(words) == len(importances) and all(isinstance(v, float) for v in importances)
    return None if ok else f"expected words and one importance per word, got {explanation}"


DESCRIBED_ANSWERS: dict[str, Callable[[str], str | None]] = {
    "words + importances": _words_and_importances,
}


def check_answer(expected: str, got: str, *, from_console: bool) -> None:
    """The output matches what the document shows: a console block's lines, or a trailing `# answer`
    comment (JSON, a single word, or a description in DESCRIBED_ANSWERS)."""
    if from_console or _is_json(expected) or len(expected.split()) == 1:
        difference = answer_difference(expected, got)
    elif expected in DESCRIBED_ANSWERS:
        difference = DESCRIBED_ANSWERS[expected](got)
    else:
        raise AssertionError(f"cannot tell what the comment `# {expected}` expects: show the answer "
                             "(JSON or one word) or add the description to DESCRIBED_ANSWERS")
    assert difference is None, difference


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def shape_difference(shown: str, got: str, prompt: str) -> str | None:
    """For sampled answers, which differ from run to run: None when `got` has the shape of the answer
    `shown` (the same keys, lengths and types, JSON texts inside strings included) and every string that
    starts with `prompt` there starts with it here too."""
    return _shape(_maybe_json(shown), _maybe_json(got), prompt, "$")


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def _shape(expected: Any, actual: Any, prompt: str, path: str) -> str | None:
    if isinstance(expected, str) and isinstance(actual, str):
        inner_expected, inner_actual = _maybe_json(expected), _maybe_json(actual)
        if not isinstance(inner_expected, str):
            return _shape(inner_expected, inner_actual, prompt, path + "<json>")
        if expected.startswith(prompt) and not actual.startswith(prompt):
            return f"{path}: expected a text starting with {prompt!r}, got {actual!r}"
        return None
    if type(expected) is not type(actual) and not {type(expected), type(actual)} <= {int, float}:
        return f"{path}: expected a {type(expected).__name__}, got {actual!r}"
    if isinstance(expected, dict):
        if expected.keys() != actual.keys():
            return f"{path}: keys {sorted(expected)} != {sorted(actual)}"
        return next((d for k in expected if (d := _shape(expected[k], actual[k], prompt, f"{path}.{k}"))), None)
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{path}: {len(expected)} items expected, got {len(actual)}"
        return next((d for i, (e, a) in enumerate(zip(expected, actual))
                     if (d := _shape(e, a, prompt, f"{path}[{i}]"))), None)
    return None

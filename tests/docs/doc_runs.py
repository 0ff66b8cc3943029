"""Running a document's commands for real: a scratch directory, servers, curl, expected answers, the
plan that says how each command is covered, and the outcome of each."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from http_servers import ServerProcess
from ports import free_ports
from readme_commands import Command, check_answer, shape_difference

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
COMMAND_TIMEOUT_S = 180.0
DOCUMENTED_PORT = re.compile(r"(?P<scheme>https?://)?(?:localhost|127\.0\.0\.1):8080\b")
_MODEL_IN_URL = re.compile(r"/(?:predictions|explanations)/(?P<a>[^/?\s'\"]+)|/v[12]/models/(?P<b>[^/:?\s'\"]+)")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?$")  # NAME, OUT_DIR, FILE.mar
_PREDICTOR = ["python", "-m", "predictor"]


class Sandbox:
    """A scratch directory standing in for the repository root: commands run there as a reader runs them
    (`python` is this venv's, `examples/` is the repository's), servers are started there and stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "examples").symlink_to(REPO / "examples", target_is_directory=True)
        self.env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "PREDICTOR_CACHE_DIR": str(root / "predictor-cache")}
        self.servers: list[ServerProcess] = []

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """One shell command, to completion."""
        return subprocess.run(["bash", "-c", command], check=False, cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def must_run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """run(), failing with the output unless the exit code is 0."""
        result = self.run(command, timeout)
        assert result.returncode == 0, (f"`{command}` exited with {result.returncode}\n--- stdout ---\n"
                                        f"{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}")
        return result

    def start_server(self, command: str, name: str, http_port: int, grpc_port: int) -> ServerProcess:
        """A long-running command (its own process group), waited for until /ping says Healthy."""
        log_path = self.root / f"server-{name}-{len(self.servers)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.root, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        server = ServerProcess(name, "", self.root, http_port, grpc_port, log_path, proc)
        self.servers.append(server)
        return server.wait_ready()

    def stop(self) -> None:
        """SIGKILL every server's process group (the shell or make included), then reap them. Nothing is
        checked at this point, and a graceful drain would cost each process seconds of CPU; draining on
        SIGTERM is tested in tests/reliability/test_shutdown.py."""
        for server in self.servers:
            try:
                os.killpg(server.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for server in self.servers:
            server.wait_stopped()


# ---- what each command is and how it is covered ---------------------------------------------------
@dataclass(frozen=True)
class Step:
    """How a command is covered: run as written (`run`), or `instead` of it something else, with why."""

    how: str
    why: str
    action: Callable[[DocRun, Command], None] | None = None


def after_predictor(command: Command) -> list[str] | None:
    """The words after `python -m predictor`, or None for another command."""
    words = command.words
    return words[3:] if words[:3] == _PREDICTOR else None


def is_synopsis(command: Command) -> bool:
    """A usage line: `[optional]` parts or UPPER_CASE placeholders instead of values."""
    return any(w.startswith("[") or w.endswith("]") or _PLACEHOLDER.match(w) for w in command.words[1:])


def generic_step(command: Command) -> Step | None:
    """The rules that cover whole families of commands; None when only an explicit table entry can."""
    rest = after_predictor(command)
    if command.program == "curl":
        return Step("run", "against the server the document started before it", run_curl)
    if rest is not None and rest[-1:] in (["--help"], ["-h"]):
        return Step("run", "help must print a usage and exit 0", run_help)
    if rest is not None and is_synopsis(command):
        return Step("instead", "a usage line: its subcommand, flags, positionals and defaults are checked "
                               "against the real parser", check_synopsis)
    if rest is not None and "--model_name" in rest and "--model_dir" in rest:
        return Step("run", "started on free ports; the commands after it use it", run_server)
    if command.program == "python" and re.fullmatch(r"examples/\w+/build_model\.py", command.words[1]):
        return Step("run", "builds the example's model in the scratch directory", run_plainly)
    return None


def plan(command: Command, table: Mapping[str, Step]) -> Step | None:
    """An explicit entry first, then the generic rules."""
    return table.get(command.key) or generic_step(command)


def unplanned(commands: Iterable[Command], table: Mapping[str, Step]) -> list[Command]:
    """The commands neither run nor listed: each one is a test failure."""
    return [c for c in commands if plan(c, table) is None]


# ---- running a document ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to one command."""

    step: Step | None
    failure: str | None = None


@dataclass
class DocRun:
    """One document's commands, run in document order in one sandbox."""

    sandbox: Sandbox
    table: Mapping[str, Step]
    server: ServerProcess | None = None  # the one the document started last
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    _parsers: dict[str, Any] | None = None
    _started: dict[str, ServerProcess] = field(default_factory=dict)  # server-starting command -> its server

    def run_all(self, commands: Sequence[Command]) -> dict[int, Outcome]:
        """Every command, in order; a failure is recorded and the next command still runs."""
        done: dict[str, int] = {}
        for index, command in enumerate(commands):
            step = plan(command, self.table)
            if step is None:
                self.outcomes[index] = Outcome(None, f"{command.source}: `{command.key}` is neither run nor listed "
                                                     "with a reason: run it or add it to the table")
                continue
            if command.key in done:  # the same command shown twice (a block and a sentence): once is enough
                self.outcomes[index] = self.outcomes[done[command.key]]
                self.server = self._started.get(command.key, self.server)  # the commands after it use that server
                continue
            done[command.key] = index
            try:
                before = self.server
                if step.action is not None:
                    step.action(self, command)
                if self.server is not before:
                    self._started[command.key] = self.server
                self.outcomes[index] = Outcome(step)
            except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - reported by the command's own test
                detail = "".join(traceback.format_exception_only(exc)).strip()
                self.outcomes[index] = Outcome(step, f"{command.source}: `{command.key}` ({step.how}: {step.why}) "
                                                     f"failed:\n{detail}")
        return self.outcomes

    def current_server(self, command: Command) -> ServerProcess:
        """The server the document started last, before this command."""
        assert self.server is not None, f"{command.source}: no server was started before this command"
        return self.server

    def parsers(self) -> dict[str, Any]:
        """Flags, defaults and positionals of every subcommand's parser (and the benchmark's, for bench)."""
        if self._parsers is None:
            done = self.sandbox.must_run(f"cd {REPO} && python -c {shlex.quote(_DUMP_PARSERS)}", timeout=120)
            self._parsers = json.loads(done.stdout)
        return self._parsers


_DUMP_PARSERS = """
import argparse, json
from predictor.serving.cli import build_parser
from predictor.bench.run import build_parser as benchmark_parser

def describe(parser):
    flags, positionals = {}, []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        if not action.option_strings:
            positionals.append(action.dest)
        for option in action.option_strings:
            flags[option] = {"default": action.default, "takes_value": action.nargs != 0}
    return {"flags": flags, "positionals": positionals}

top = build_parser()
[subparsers] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
described = {name: describe(parser) for name, parser in subparsers.choices.items()}
described["bench"] = describe(benchmark_parser())
print(json.dumps(described, default=str))
"""


# ---- the actions -----------------------------------------------------------------------------------
def run_plainly(doc: DocRun, command: Command) -> None:
    """As written, in the sandbox; exit code 0."""
    doc.sandbox.must_run(command.text)


def run_help(doc: DocRun, command: Command) -> None:
    """Exit 0 and a usage line."""
    result = doc.sandbox.must_run(command.text)
    assert result.stdout.startswith("usage:"), result.stdout[:300]


def on_port(text: str, port: int) -> str:
    """The command with the documented localhost:8080 replaced by the test server's port."""
    return DOCUMENTED_PORT.sub(lambda m: f"{m.group('scheme') or ''}127.0.0.1:{port}", text)


def with_ports(words: list[str], http_port: int, grpc_port: int) -> list[str]:
    """Server arguments with --http_port/--grpc_port set to free ports (replaced or added); TorchServe's
    gRPC and management ports off, so servers started side by side never compete for 7070 and 8082."""
    out = list(words)
    for flag_name, port in (("--http_port", http_port), ("--grpc_port", grpc_port), ("--ts_grpc_port", 0),
                            ("--ts_management_port", 0)):
        if flag_name in out:
            out[out.index(flag_name) + 1] = str(port)
        else:
            out += [flag_name, str(port)]
    return out


def run_server(doc: DocRun, command: Command) -> None:
    """`python -m predictor ... --model_name X --model_dir Y`, on free ports, until ready."""
    words = command.words
    http_port, grpc_port = free_ports(2)
    name = words[words.index("--model_name") + 1]
    doc.server = doc.sandbox.start_server(shlex.join(with_ports(words, http_port, grpc_port)), name,
                                          http_port, grpc_port)


def curl_output(doc: DocRun, command: Command, *, fail_on_http_error: bool) -> str:
    """The curl command's output, run against the current server; its exit code must be 0."""
    server = doc.current_server(command)
    text = on_port(command.text, server.http_port)
    for match in _MODEL_IN_URL.finditer(text):
        model = match.group("a") or match.group("b")
        assert model == server.name, f"the URL names model {model!r}, the server before it serves {server.name!r}"
    if fail_on_http_error:
        text = text.replace("curl ", "curl --fail ", 1)
    result = doc.sandbox.run(text, timeout=120)
    assert result.returncode == 0, f"curl exited with {result.returncode}: {result.stderr.strip()[-500:]}\n" \
                                   f"{result.stdout[-500:]}\n--- server log ---\n{server.log_tail(20)}"
    return result.stdout


def run_curl(doc: DocRun, command: Command) -> None:
    """Against the current server: exit 0, and the answer the document shows (else an HTTP success)."""
    expected = command.output if command.output else command.comment
    got = curl_output(doc, command, fail_on_http_error=not expected)
    if expected:
        check_answer(expected, got, from_console=command.output is not None)


def run_sampled_curl(prompt: str) -> Callable[[DocRun, Command], None]:
    """run_curl for a sampled generation: the shape of the answer shown, and the prompt leading each text."""

    def action(doc: DocRun, command: Command) -> None:
        assert command.output, "a sampled answer is compared with the answer the document shows"
        difference = shape_difference(command.output, curl_output(doc, command, fail_on_http_error=True), prompt)
        assert difference is None, difference

    return action


def check_synopsis(doc: DocRun, command: Command) -> None:
    """Subcommand, flags (and whether they take a value), positionals and literal defaults of a usage line."""
    rest = [w.strip("[]") for w in after_predictor(command) or []]
    rest = [w for w in rest if w and w != "..."]
    parsers = doc.parsers()
    subcommand = rest.pop(0) if rest and rest[0] in parsers else "serve"
    described = parsers[subcommand]
    positionals: list[str] = []
    while rest:
        word = rest.pop(0)
        if not word.startswith("-"):
            positionals.append(word)
            continue
        assert word in described["flags"], f"`{subcommand}` has no flag {word}"
        if not described["flags"][word]["takes_value"]:
            continue
        assert rest and not rest[0].startswith("-"), f"{word} takes a value; the usage line shows none"
        value = rest.pop(0)
        default = described["flags"][word]["default"]
        if not _PLACEHOLDER.match(value) and default is not None:
            assert _same_value(value, default), f"{word}: the usage line says {value}, the default is {default}"
    assert len(positionals) == len(described["positionals"]), \
        f"`{subcommand}` takes {described['positionals']}, the usage line shows {positionals}"


def _same_value(shown: str, default: Any) -> bool:
    try:
        return float(shown) == float(default)
    except (TypeError, ValueError):
        return shown == str(default)


def run_make_recipe(target: str, expected: str) -> Callable[[DocRun, Command], None]:
    """`make -n TARGET` (install step skipped) must show the recipe running `expected`."""

    def action(doc: DocRun, command: Command) -> None:
        shown = doc.sandbox.must_run(f"make -n -f {REPO / 'Makefile'} -o {VENV}/.installed {target} "
                                     f"VENV={VENV}").stdout
        assert f"{VENV}/bin/python {expected}" in shown, f"`make -n {target}` shows:\n{shown}"

    return action

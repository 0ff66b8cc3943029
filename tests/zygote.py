"""Predictor server processes forked from one process that has already imported torch, transformers and kserve.

Importing those libraries is most of a server's start-up (about 9 of its 10 CPU seconds here), and the suite
starts dozens of servers on two cores. The fleets of shared servers (tests/http, tests/reliability, the zoo)
are forked from this zygote instead: each child is its own process on its own ports, running
`predictor.serving.cli.main(argv)` exactly as `python -m predictor ARGV` does, with its own environment and
log. Servers whose start-up or exit is under test (bad weights, SIGTERM, the documented commands) are still
started cold with `python -m predictor`.

The zygote imports without running any torch operation (no OpenMP team exists, so forking is safe), after
setting the OpenMP wait policy the CLI would set (libgomp reads it when torch is loaded).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

_SERVE = r"""
import json, os, select, signal, sys
from predictor.artifacts import offline_environment
from predictor.serving.cpu import openmp_wait
offline_environment(os.environ)
openmp_wait("short-spin")  # what the CLI sets before torch loads; the servers forked here all use it
import importlib
import torch, transformers, kserve, fastapi, uvicorn, grpc  # noqa: F401 (the point: imported once)
import predictor.serving.server, predictor.handler, predictor.explain  # noqa: F401
for module in ("transformers.modeling_utils", "transformers.masking_utils", "transformers.activations",
               "transformers.generation.utils", "transformers.pipelines.token_classification", "captum.attr",
               "uvloop", "pydantic.v1", "uvicorn.protocols.websockets.websockets_sansio_impl"):
    try:
        importlib.import_module(module)
    except ImportError:  # an optional one: the child imports what it needs itself
        pass
for family in ("bert", "gpt2", "roberta", "deberta_v2", "xlm_roberta", "distilbert", "electra", "modernbert",
               "phi", "gpt_neox", "llama", "mistral", "qwen2"):  # the tests' and the zoo's model families
    for kind in ("modeling", "tokenization"):
        try:
            importlib.import_module(f"transformers.models.{family}.{kind}_{family}")
        except ImportError:
            pass
from predictor.serving import cli
children = set()

def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

def reap():
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

def child(request):
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["predictor", *request["argv"]]
    try:
        code = cli.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    import atexit, logging
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)

say("ready")
while True:
    readable, _, _ = select.select([sys.stdin], [], [], 0.05)
    reap()
    if not readable:
        continue
    line = sys.stdin.readline()
    if not line:  # the test session ended: take the children along
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        os._exit(0)  # skip the interpreter's teardown of everything imported
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    children.add(pid)
    say(f"pid {pid}")
"""


class ForkedProcess:
    """The parts of subprocess.Popen the server helpers use, for a child of the zygote."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self.zygote = zygote
        self.pid = pid
        self.args = args

    @property
    def returncode(self) -> int | None:
        """The exit code, once the zygote has reaped the child."""
        return self.zygote.exit_codes.get(self.pid)

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Until the child exits; subprocess.TimeoutExpired after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped."""
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """One pre-imported Python process that forks predictor servers on request."""

    def __init__(self, log_path: Path) -> None:
        self.exit_codes: dict[int, int] = {}
        self._pids: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PREDICTOR_FAULT_INJECTION", None)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            kind, *values = line.split()
            if kind == "ready":
                self._ready.set()
            elif kind == "pid":
                self._pids.put(int(values[0]))
            elif kind == "exit":
                self.exit_codes[int(values[0])] = int(values[1])
        self._pids.put(-1)  # the zygote is gone: nobody waits forever

    def launch(self, argv: list[str], env: dict[str, str], log_path: Path) -> ForkedProcess:
        """Fork a server running `python -m predictor ARGV` with exactly `env`, its output in `log_path`."""
        deadline = time.monotonic() + 300
        while not self._ready.wait(timeout=0.5):  # a zygote that died at import fails at once, not in 300 s
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server zygote did not start; see {self._log.name}")
        request = {"argv": argv, "env": env, "log": str(log_path)}
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._pids.get(timeout=60)
        if pid < 0:
            raise RuntimeError(f"the server zygote exited; see {self._log.name}")
        return ForkedProcess(self, pid, ["python", "-m", "predictor", *argv])

    def stop(self) -> None:
        """End the zygote; it SIGKILLs any child still running."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()



def http_server(zygote: Zygote, name: str, mode: str, model_dir: Path, workdir: Path, *extra: str) -> Any:
    """tests/http's ServerProcess.launch, forked from the zygote: the same arguments, environment and log."""
    from http_servers import ServerProcess
    from ports import free_ports

    http_port, grpc_port, ts_grpc_port, management_port = free_ports(4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PREDICTOR_CACHE_DIR": str(workdir / f"cache-{name}"), "PYTHONUNBUFFERED": "1"}
    log_path = workdir / f"server-{name}.log"
    argv = ["--model_name", name, "--model_dir", str(model_dir), "--http_port", str(http_port),
            "--grpc_port", str(grpc_port), "--grace_period", "2", "--ts_grpc_port", str(ts_grpc_port),
            "--ts_management_port", str(management_port), *extra]
    proc = zygote.launch(argv, env, log_path)
    return ServerProcess(name, mode, model_dir, http_port, grpc_port, log_path, proc, ts_grpc_port,
                         management_port)

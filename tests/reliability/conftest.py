"""Reliability fixtures: server processes with their own configs, launched together, waited for on first use.

Only the servers the collected tests ask for are launched (importing torch takes each process several
seconds on two cores, and the launches overlap). Every process is stopped at the end of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from models import build_needle_qa
from reliability_requests import clear_labels, sample_texts
from reliability_servers import (
    GEN_QUEUE_SIZE,
    GEN_TOKEN_CAP,
    NEEDLE,
    SMALL_LIMITS,
    STREAM_LIMIT_S,
    ServerProcess,
    build_seq,
    build_slow_gpt2,
    copy_model,
)
from zygote import Zygote

from predictor.handler import GeneralizedHandler


@dataclass(frozen=True)
class ServerSpec:
    """One server of the session: which model, its model-config.yaml changes, environment and flags."""

    model: str  # "seq", "slow-gen" or "needle-qa"
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    grace_period_s: int = 5
    cold: bool = False  # `python -m predictor` from scratch instead of a fork of the zygote (its exit is tested)


# fixture name -> server. The generation servers run one model worker of one torch thread: their tests
# need a generation to take about as long on every run (on a shared two-core machine two spinning
# intra-op threads made generation up to ten times slower whenever other processes were busy), and
# they prove that abandoned work frees *the* worker: with a second one free, a request after an
# uncancelled generation would be answered at once and the tests could not fail.
ONE_WORKER = ("--model_workers", "1", "--intra_op_threads", "1")
SERVERS: dict[str, ServerSpec] = {
    # Few Integrated-Gradients steps: schemathesis sends hundreds of valid explanation requests.
    "seq_server": ServerSpec("seq", config={"handler": {"n_steps": 4}}),
    "seq_limits_server": ServerSpec("seq", config={"limits": SMALL_LIMITS}),
    "gen_queue_server": ServerSpec("slow-gen", config={"jobQueueSize": GEN_QUEUE_SIZE, "batchSize": 2,
                                                       "handler": {"max_new_tokens_limit": GEN_TOKEN_CAP}},
                                   args=ONE_WORKER),
    "gen_timeout_server": ServerSpec("slow-gen", config={"responseTimeout": 1,
                                                         "limits": {"max_stream_seconds": STREAM_LIMIT_S}},
                                     args=ONE_WORKER),
    "gen_server": ServerSpec("slow-gen", args=ONE_WORKER),
    # The mixed load test: generation (streams, OpenAI, explanations) and long QA contexts side by side.
    "gen_load_server": ServerSpec("slow-gen", config={"handler": {"max_new_tokens_limit": 256}}),
    "qa_load_server": ServerSpec("needle-qa", config={"batchSize": 4, "limits": {"max_qa_windows": 16}}),
    "crash_once_server": ServerSpec("seq", config={"responseTimeout": 60},
                                    env={"PREDICTOR_FAULT_INJECTION": "crash-once"}),
    "oom_once_server": ServerSpec("seq", env={"PREDICTOR_FAULT_INJECTION": "oom-once"}),
    "oom_always_server": ServerSpec("seq", env={"PREDICTOR_FAULT_INJECTION": "oom-always"}),
    # Exiting takes 1.5 s idle and up to 6 s on a busy machine after the drain (interpreter teardown).
    "sigterm_server": ServerSpec("seq", grace_period_s=10, cold=True),
    "sigterm_slow_client_server": ServerSpec("seq", grace_period_s=10, cold=True),
}


@pytest.fixture(scope="session")
def reliability_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models, caches, server logs and figures of the reliability tests."""
    return tmp_path_factory.mktemp("reliability")


class BaseModels:
    """The models the servers copy, each built on first use: "seq" (classifier), "slow-gen" (GPT-2) and
    "needle-qa" (a QA model that answers its needle word wherever it is)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.built:
            if name == "seq":
                self.built[name] = build_seq(self.root / name, sample_texts(200, seed=0))
            elif name == "needle-qa":
                self.built[name] = build_needle_qa(self.root / name, NEEDLE, max_length=64, doc_stride=16)
            else:
                self.built[name] = build_slow_gpt2(self.root / name)
        return self.built[name]


@pytest.fixture(scope="session")
def base_models(reliability_workdir: Path) -> BaseModels:
    """The models every server copies, built when first asked for."""
    return BaseModels(reliability_workdir / "base")


class Fleet:
    """The session's reliability servers; each launched at session start and waited for on first use."""

    def __init__(self, workdir: Path, models: BaseModels, wanted: set[str], zygote: Zygote) -> None:
        self.servers: dict[str, ServerProcess] = {}
        for name in sorted(wanted):
            spec = SERVERS[name]
            model_dir = copy_model(models[spec.model], workdir / f"model-{name}", **spec.config)
            model_name = name.removesuffix("_server").replace("_", "-")
            self.servers[name] = ServerProcess.launch(model_name, model_dir, workdir, *spec.args,
                                                      env=spec.env, grace_period_s=spec.grace_period_s,
                                                      zygote=None if spec.cold else zygote)

    def stop(self) -> None:
        """SIGKILL every server still running, then reap it. Nothing is checked at the end of the session,
        and a graceful exit costs each process seconds of CPU; test_shutdown.py tests the drain."""
        for server in self.servers.values():
            server.kill()


@pytest.fixture(scope="session")
def fleet(request: pytest.FixtureRequest, reliability_workdir: Path, base_models: BaseModels,
          server_zygote: Zygote) -> Iterator[Fleet]:
    """The servers that the collected reliability tests use (tests/http has fixtures of the same names)."""
    here = Path(__file__).parent
    mine = [item for item in request.session.items if item.path.is_relative_to(here)]
    wanted = {name for item in mine for name in getattr(item, "fixturenames", ()) if name in SERVERS}
    fleet = Fleet(reliability_workdir, base_models, wanted, server_zygote)
    try:
        yield fleet
    finally:
        fleet.stop()


def _server_fixture(name: str) -> Any:
    @pytest.fixture(scope="session", name=name)
    def server(fleet: Fleet) -> ServerProcess:
        return fleet.servers[name].wait_ready()

    server.__doc__ = f"The ready {name} ({SERVERS[name]})."
    return server


for _name in SERVERS:
    globals()[_name] = _server_fixture(_name)


@pytest.fixture(scope="session")
def seq_core(base_models: BaseModels, reliability_workdir: Path) -> GeneralizedHandler:
    """The predictor core in this process, over the classifier every seq server serves."""
    handler = GeneralizedHandler(base_models["seq"], cache_dir=reliability_workdir / "cache-core")
    handler.load()
    return handler


@pytest.fixture(scope="session")
def seq_labels(seq_core: GeneralizedHandler) -> dict[str, str]:
    """48 texts the seq servers classify with a clear margin, half of each label, and their labels."""
    return clear_labels(seq_core, 48)


@pytest.fixture(scope="session")
def gen_core(base_models: BaseModels, reliability_workdir: Path) -> GeneralizedHandler:
    """The predictor core in this process, over the slow GPT-2 of the generation servers."""
    handler = GeneralizedHandler(base_models["slow-gen"], cache_dir=reliability_workdir / "cache-core")
    handler.load()
    return handler

"""Many requests at once: in-process threads on one handler, and 32 mixed requests to a real server process.

The Rust tokenizer changes its truncation and stride settings per call; shared between threads without care,
one request's settings leak into another's encoding. Inputs of very different lengths make a leak visible.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from http_servers import ServerProcess
from zoo_models import ALL, Zoo, approx_nested, ids
from zygote import Zygote, http_server

from predictor.handler import GeneralizedHandler
from predictor.tasks import StreamEnd

SHORT = "Paris"
LONG = " ".join(["Marie Curie was born in Warsaw in 1867 and moved to Paris in 1891."] * 12)
MIDDLE = "Ada Lovelace worked with Charles Babbage in London."
GEN = {"do_sample": False, "max_new_tokens": 6}


def raws(mode: str) -> list[Any]:
    """Request items of very different lengths for a mode (details on, so truncation shows)."""
    if mode == "question_answering":
        return [{"question": "Who?", "context": c, "details": True} for c in (MIDDLE, LONG, SHORT + " is big.")]
    if mode == "text_generation":
        return [{"text": t, "parameters": GEN, "details": True} for t in (SHORT, LONG, MIDDLE)]
    return [{"text": t, "details": True} for t in (SHORT, LONG, MIDDLE)]


def explain_raw(mode: str) -> Any:
    body = dict(raws(mode)[2])
    body.pop("details", None)
    body.pop("parameters", None)
    if mode == "token_classification":
        body["target"] = [1, 1]
    return {**body, "n_steps": 4}


def stream_text(handler: GeneralizedHandler, raw: Any) -> str:
    return "".join(c for c in handler.stream(handler.parse(raw)) if not isinstance(c, StreamEnd))


THREADED = [k for k in ALL if k[0] in ("bert-cased", "xlm-roberta", "electra", "llama", "qwen2")]


@pytest.mark.parametrize("key", THREADED, ids=ids(THREADED))
def test_zoo_threads_on_one_handler_answer_as_alone(zoo: Zoo, key: tuple[str, str]) -> None:
    handler = zoo.handler(key)
    mode = key[1]
    items = raws(mode)
    alone = [handler.predict([handler.parse(r)])[0] for r in items]
    jobs: list[tuple[str, Any]] = [("predict", r) for r in items] * 8
    if mode == "text_generation":
        jobs += [("stream", r) for r in items] * 2
        streamed = [stream_text(handler, r) for r in items]
    jobs.append(("explain", explain_raw(mode)))

    def run(job: tuple[str, Any]) -> Any:
        kind, raw = job
        if kind == "predict":
            return handler.predict([handler.parse(raw)])[0]
        if kind == "stream":
            return stream_text(handler, raw)
        return handler.explain(handler.parse(raw))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, jobs))
    for (kind, raw), answer in zip(jobs, answers, strict=True):
        n = items.index(raw) if raw in items else -1
        if kind == "predict":
            assert answer == approx_nested(alone[n]), raw
        elif kind == "stream":
            assert answer == streamed[n], raw
        else:
            assert len(answer["words"]) == len(answer.get("importances") or answer["importances_answer_start"])


# ---- a real server process per model --------------------------------------------------------------------
# Every model when PREDICTOR_ZOO_SERVERS=all; by default one per tokenizer kind (WordPiece cased, left padding,
# Unigram/Metaspace, plain byte-level backend, SentencePiece BPE, several eos ids): each process costs ~6 s of
# CPU and the default run must stay within the suite's budget on 2 cores.
DEFAULT_SERVED = [("bert-cased", "token_classification"), ("electra", "sequence_classification"),
                  ("xlm-roberta", "question_answering"), ("modernbert", "token_classification"),
                  ("llama", "text_generation"), ("qwen2", "text_generation")]
SERVED = ALL if os.environ.get("PREDICTOR_ZOO_SERVERS") == "all" else DEFAULT_SERVED
LOOKAHEAD = 3  # servers started ahead of the test that uses them (their start-up overlaps)


class ZooFleet:
    """Real predictor processes (forked from the zygote) over zoo folders, a few at a time (each ~0.5 GB)."""

    def __init__(self, zoo: Zoo, workdir: Any, zygote: Zygote) -> None:
        self.zoo = zoo
        self.zygote = zygote
        self.workdir = workdir
        self.servers: dict[tuple[str, str], ServerProcess] = {}

    def ready(self, key: tuple[str, str]) -> ServerProcess:
        index = SERVED.index(key)
        for earlier in SERVED[:index]:
            if earlier in self.servers:
                _kill(self.servers.pop(earlier))
        for ahead in SERVED[index:index + LOOKAHEAD]:
            if ahead not in self.servers:
                model = self.zoo.models[ahead]
                self.servers[ahead] = http_server(self.zygote, model.id, model.mode, model.path, self.workdir,
                                                  "--model_workers", "2")
        return self.servers[key].wait_ready()

    def stop(self) -> None:
        for server in self.servers.values():
            _kill(server)


def _kill(server: ServerProcess) -> None:
    """SIGKILL and reap a server whose tests are done: a graceful exit costs seconds of CPU that the next
    servers' start-up needs (draining on SIGTERM is tested in tests/reliability/test_shutdown.py)."""
    if server.proc.poll() is None:
        server.proc.kill()
    server.wait_stopped()


@pytest.fixture(scope="module")
def zoo_fleet(zoo: Zoo, tmp_path_factory: pytest.TempPathFactory, server_zygote: Zygote) -> Any:
    fleet = ZooFleet(zoo, tmp_path_factory.mktemp("zoo-servers"), server_zygote)
    yield fleet
    fleet.stop()


def requests_for(server: ServerProcess) -> list[tuple[str, str, Any]]:
    """32 mixed requests: (kind, path, body); predictions, explanations and (generators) streams."""
    name, mode = server.name, server.mode
    predict = [("predict", f"/v1/models/{name}:predict", {"instances": [r]}) for r in raws(mode)]
    explain = [("explain", f"/v1/models/{name}:explain", {"instances": [explain_raw(mode)]})]
    stream = [("stream", f"/predictions/{name}?stream=true", r) for r in raws(mode)] \
        if mode == "text_generation" else []
    pool = predict * 3 + explain + stream
    return (pool * (32 // len(pool) + 1))[:32]


def send(client: httpx.Client, request: tuple[str, str, Any]) -> tuple[int, Any]:
    kind, path, body = request
    response = client.post(path, json=body)
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, response.text if kind == "stream" else response.json()


def comparable(kind: str, answer: Any) -> Any:
    if kind == "explain":  # importances: the same computation, compared loosely
        return approx_nested(answer, 1e-3)
    return approx_nested(answer)


@pytest.mark.parametrize("key", SERVED, ids=ids(SERVED))
def test_zoo_real_server_answers_32_mixed_requests_at_once(zoo_fleet: ZooFleet, key: tuple[str, str]) -> None:
    server = zoo_fleet.ready(key)
    with httpx.Client(base_url=server.url, timeout=120.0) as client:
        batch = requests_for(server)
        sequential: dict[str, tuple[int, Any]] = {}
        for request in batch:  # each distinct request once, alone
            if repr(request) not in sequential:
                sequential[repr(request)] = send(client, request)
        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(lambda r: send(client, r), batch))
    failures = [(r[1], status, body) for r, (status, body) in zip(batch, answers, strict=True) if status != 200]
    assert not failures, server.log_tail(20)
    for request, (_, answer) in zip(batch, answers, strict=True):
        status, alone = sequential[repr(request)]
        assert status == 200, alone
        assert answer == comparable(request[0], alone), request

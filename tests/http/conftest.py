"""Real predictor processes on loopback ports, one per handler mode, started once per session.

Every process is launched at the start of the session, forked from the zygote (tests/zygote.py: torch,
transformers and kserve imported once, then `predictor.serving.cli.main(argv)` as `python -m predictor`
runs it); a test waits only for the servers it uses. Servers that a test must break or that
need their own config get their own process, so the shared ones stay untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import transformers
from http_servers import SERVERS, Fleet, ServerProcess, build_model
from zygote import Zygote, http_server


@pytest.fixture(scope="session")
def http_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models, caches and server logs of the HTTP tests."""
    return tmp_path_factory.mktemp("http")


@pytest.fixture(scope="session")
def fleet(http_workdir: Path, server_zygote: Zygote) -> Iterator[Fleet]:
    """Every server of SERVERS, each forked from the zygote as soon as its model is built."""
    servers: dict[str, ServerProcess] = {}
    try:
        for name, (mode, kwargs) in SERVERS.items():
            model_dir = build_model(http_workdir / f"model-{name}", mode, **kwargs)
            servers[name] = http_server(server_zygote, name, mode, model_dir, http_workdir)
        yield Fleet(servers)
    finally:
        # SIGKILL: nothing is checked at the end of the session, and a graceful exit costs each process
        # seconds of CPU (draining on SIGTERM is tested in tests/reliability/test_shutdown.py).
        for server in servers.values():
            if server.proc.poll() is None:
                server.proc.kill()
        Fleet(servers).stop()  # reaps them


def _server_fixture(name: str) -> Any:
    @pytest.fixture(scope="session")
    def server(fleet: Fleet) -> ServerProcess:
        return fleet.ready(name)

    server.__doc__ = f"The ready {name!r} server ({SERVERS[name][0]})."
    return server


seq_server = _server_fixture("seq")
tok_server = _server_fixture("tok")
qa_server = _server_fixture("qa")
gen_server = _server_fixture("gen")
gen_stream_server = _server_fixture("gen-stream")
spare_server = _server_fixture("spare")


@pytest.fixture(scope="session")
def mode_servers(seq_server: ServerProcess, tok_server: ServerProcess, qa_server: ServerProcess,
                 gen_server: ServerProcess) -> dict[str, ServerProcess]:
    """The four shared servers, by mode."""
    return {s.mode: s for s in (seq_server, tok_server, qa_server, gen_server)}


def _client_fixture(server_fixture: str) -> Any:
    @pytest.fixture(scope="session")
    def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
        server: ServerProcess = request.getfixturevalue(server_fixture)
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            yield c

    client.__doc__ = f"An httpx client of {server_fixture}."
    return client


seq = _client_fixture("seq_server")
tok = _client_fixture("tok_server")
qa = _client_fixture("qa_server")
gen = _client_fixture("gen_server")


@pytest.fixture()
def still_healthy(mode_servers: dict[str, ServerProcess]) -> Iterator[None]:
    """After the test (bad requests), every shared server still answers /ping with 200 Healthy."""
    yield
    for server in mode_servers.values():
        response = httpx.get(server.url + "/ping", timeout=10.0)
        if response.status_code != 200 or response.json() != {"status": "Healthy"}:
            server.fail(f"/ping answered {response.status_code} {response.text!r} after the test")


# ---- independent computations: the same weights called through transformers directly ----------------

MAX_LENGTH = 64  # handler.max_length that tests/models.py writes for the seq and tok models


@dataclass
class Direct:
    """One model directory loaded with plain transformers, to compute expected answers independently."""

    model_dir: Path
    model: Any
    tokenizer: Any

    def labels(self) -> list[str]:
        """The label names of index_to_name.json (either TorchServe layout)."""
        raw = json.loads((self.model_dir / "index_to_name.json").read_text())
        if "label_list" in raw:
            return [s.strip() for s in raw["label_list"].strip("[]").split(",")]
        return [raw[str(i)] for i in range(len(raw))]

    def sequence_probabilities(self, text: str) -> dict[str, float]:
        """Softmax of the classifier, by label name."""
        enc = self.tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            probs = self.model(**enc).logits[0].softmax(-1).tolist()
        return dict(zip(self.labels(), probs, strict=True))

    def sequence_label(self, text: str) -> str:
        """argmax of the classifier, as a label name."""
        probs = self.sequence_probabilities(text)
        return max(probs, key=probs.__getitem__)

    def token_labels(self, text: str) -> list[list[str]]:
        """[[token, label], ...] without special tokens."""
        enc = self.tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt",
                             return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].tolist()
        with torch.inference_mode():
            best = self.model(**enc).logits[0].argmax(-1).tolist()
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        labels = self.labels()
        return [[t, labels[b]] for t, b, s in zip(tokens, best, special, strict=True) if not s]

    def greedy(self, prompt: str, max_new_tokens: int) -> str:
        """Prompt + greedy continuation, special tokens skipped."""
        enc = self.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        eos = self.tokenizer.eos_token_id
        if eos in new:
            new = new[: new.index(eos) + 1]
        return (self.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True)
                + self.tokenizer.decode(new, skip_special_tokens=True))


_AUTO = {
    "sequence_classification": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
    "question_answering": transformers.AutoModelForQuestionAnswering,
    "text_generation": transformers.AutoModelForCausalLM,
}


@pytest.fixture(scope="session")
def direct(fleet: Fleet) -> dict[str, Direct]:
    """Plain-transformers copies of the seq, tok and gen servers' models."""
    out = {}
    for name in ("seq", "tok", "gen"):
        server = fleet.servers[name]
        model = _AUTO[server.mode].from_pretrained(server.model_dir).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(server.model_dir)
        out[name] = Direct(server.model_dir, model, tokenizer)
    return out


class CoreHandlers:
    """In-process GeneralizedHandlers over the servers' model dirs, loaded on first use."""

    def __init__(self, fleet: Fleet, cache_dir: Path) -> None:
        self.fleet = fleet
        self.cache_dir = cache_dir
        self.loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        from predictor.handler import GeneralizedHandler

        if name not in self.loaded:
            handler = GeneralizedHandler(self.fleet.servers[name].model_dir, cache_dir=self.cache_dir)
            handler.load()
            self.loaded[name] = handler
        return self.loaded[name]


@pytest.fixture(scope="session")
def core(fleet: Fleet, http_workdir: Path) -> CoreHandlers:
    """The predictor core in this process, over the same model dirs as the servers."""
    return CoreHandlers(fleet, http_workdir / "cache-core")

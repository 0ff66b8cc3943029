"""Real `python -m predictor` processes for the client-library tests: a classifier and a chat generator.

They reuse the HTTP tests' process handling (tests/http/http_servers.py); only these two start, at once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "http") not in sys.path:
    sys.path.append(str(TESTS / "http"))

from http_servers import ServerProcess  # noqa: E402
from models import CHAT_TEMPLATE, build_encoder, build_gpt2  # noqa: E402


@pytest.fixture(scope="session")
def client_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """`seq` (sequence classification) and `chat` (text generation with a chat template), launched together."""
    root = tmp_path_factory.mktemp("clients")
    servers = {
        "seq": ServerProcess.launch("seq", "sequence_classification",
                                    build_encoder(root / "seq", "sequence_classification"), root),
        "chat": ServerProcess.launch("chat", "text_generation",
                                     build_gpt2(root / "chat", chat_template=CHAT_TEMPLATE), root),
    }
    try:
        yield servers
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.wait_stopped()


@pytest.fixture(scope="session")
def seq_server(client_servers: dict[str, ServerProcess]) -> ServerProcess:
    """The ready classifier."""
    return client_servers["seq"].wait_ready()


@pytest.fixture(scope="session")
def chat_server(client_servers: dict[str, ServerProcess]) -> ServerProcess:
    """The ready chat generator."""
    return client_servers["chat"].wait_ready()


@pytest.fixture(scope="session")
def seq_labels(client_servers: dict[str, ServerProcess]):
    """The classifier's label for a text, computed by transformers directly (an independent computation)."""
    import json

    import torch
    import transformers

    model_dir = client_servers["seq"].model_dir
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    names = json.loads((model_dir / "index_to_name.json").read_text())

    def label(text: str) -> str:
        enc = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            return names[str(int(model(**enc).logits[0].argmax()))]

    return label

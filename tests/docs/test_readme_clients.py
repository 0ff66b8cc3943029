"""The client examples in README.md's API section (Python blocks: tritonclient, openai) run against real
servers (forked from the zygote, tests/zygote.py): a classifier served as `demo` and a generator served as
`gpt2`, on free ports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from doc_runs import REPO
from http_servers import ServerProcess
from models import build_encoder, build_gpt2
from zygote import Zygote, http_server

README = REPO / "README.md"


def api_python_blocks() -> list[str]:
    """The ```python blocks of the README's `## API` section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


BLOCKS = api_python_blocks()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory,
            server_zygote: Zygote) -> Iterator[dict[str, ServerProcess]]:
    root = tmp_path_factory.mktemp("readme-clients")
    started = {"demo": http_server(server_zygote, "demo", "sequence_classification",
                                   build_encoder(root / "demo", "sequence_classification"), root),
               "gpt2": http_server(server_zygote, "gpt2", "text_generation", build_gpt2(root / "gpt2"), root)}
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():  # SIGKILL: nothing is checked here, and a drain costs CPU time
            if server.proc.poll() is None:
                server.proc.kill()
        for server in started.values():
            server.wait_stopped()


def _run(block: str, server: ServerProcess, tmp_path: Path) -> str:
    script = tmp_path / "example.py"
    script.write_text(block.replace("localhost:8080", f"127.0.0.1:{server.http_port}"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_api_section_shows_both_clients():
    assert [("tritonclient" in b, "openai" in b) for b in BLOCKS] == [(True, False), (False, True)]


def test_tritonclient_example(servers, tmp_path):
    [block] = [b for b in BLOCKS if "tritonclient" in b]
    [text] = re.findall(r'np\.array\(\[b"([^"]+)"\]', block)
    model_dir = servers["demo"].model_dir
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        best = int(model(**tokenizer(text, return_tensors="pt")).logits[0].argmax())
    label = json.loads((model_dir / "index_to_name.json").read_text())[str(best)]
    assert _run(block, servers["demo"], tmp_path) == str([label.encode()]).replace(", ", " ")


def test_openai_example(servers, tmp_path):
    [block] = [b for b in BLOCKS if "openai" in b]
    *_, count = _run(block, servers["gpt2"], tmp_path).split()
    assert 1 <= int(count) <= 10

"""KServe's own HuggingFace runtime, re-created for the comparison the throughput issue asks for.

The runtime (`huggingfaceserver`, in the kserve repository) is not published on PyPI and cannot be
fetched on this project's machines, so the benchmark serves a re-creation of the one path it compares:
the runtime's encoder model for sequence classification, as its source does it —

- `load()`: `AutoTokenizer` and `AutoModelForSequenceClassification.from_pretrained`, float32, eval;
  `max_length` from the model config (`max_position_embeddings`) when not given;
- `preprocess()`: the request's instances tokenised together, `padding=True, truncation=True`;
- `predict()`: an `async def` that runs the forward pass under `torch.no_grad()` on the event loop
  itself (no thread, no batching across requests: one request, one forward pass);
- `postprocess()`: the argmax class index of each row;

served by kserve's `ModelServer` with its defaults (torch threads = cores, libgomp's default
spinning). Not a copy of its code: the behaviour that decides its throughput, written from reading
it. Run as `python -m predictor.bench.kserve_hf --model_name N --model_dir D --http_port P --grpc_port Q`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predictor.bench.server_process import ServerProcess


class HuggingFaceRuntimeEncoder:
    """Built lazily so that importing this module does not import kserve or torch."""

    @staticmethod
    def model(name: str, model_dir: Path) -> Any:
        """A kserve.Model behaving as the HuggingFace runtime's sequence-classification encoder."""
        import kserve
        import torch
        from kserve.utils.utils import get_predict_input
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        class Encoder(kserve.Model):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__(name)
                self.config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
                self.max_length = int(getattr(self.config, "max_position_embeddings", 512))

            def load(self) -> bool:
                self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
                self.module = AutoModelForSequenceClassification.from_pretrained(
                    model_dir, local_files_only=True, dtype=torch.float32).eval()
                self.ready = True
                return self.ready

            def preprocess(self, payload: Any, headers: Any = None) -> Any:
                instances = get_predict_input(payload)  # as the runtime reads v1 and v2 bodies
                return self.tokenizer(instances, max_length=self.max_length, padding=True,
                                      truncation=True, return_tensors="pt")

            async def predict(self, inputs: Any, headers: Any = None, response_headers: Any = None) -> Any:
                with torch.no_grad():  # on the event loop, as the runtime does
                    return self.module(**inputs, return_dict=True).logits

            def postprocess(self, outputs: Any, headers: Any = None, response_headers: Any = None) -> Any:
                return {"predictions": [int(row.argmax()) for row in outputs]}

        return Encoder()


class KServeHFProcess(ServerProcess):
    """The re-created runtime as a server process, started and stopped like the predictor's."""

    ready_path_template = "/v1/models/{name}"

    def command(self) -> list[str]:
        """`python -m predictor.bench.kserve_hf ...`"""
        import sys

        return [sys.executable, "-m", "predictor.bench.kserve_hf", "--model_name", self.name,
                "--model_dir", str(self.model_dir), "--http_port", str(self.http_port),
                "--grpc_port", str(self.grpc_port)]

    def environment(self) -> dict[str, str]:
        """As the runtime's container runs: no OpenMP wait policy of ours."""
        env = super().environment()
        env.pop("OMP_WAIT_POLICY", None)
        env.pop("GOMP_SPINCOUNT", None)
        return env


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the re-created runtime until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_dir", type=Path, required=True)
    parser.add_argument("--http_port", type=int, default=8080)
    parser.add_argument("--grpc_port", type=int, default=8081)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import kserve

    model = HuggingFaceRuntimeEncoder.model(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                       enable_docs_url=False).start([model])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""backend auto: the pure choice, agreement with eager, the cached decision; forced openvino."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from models import build_encoder

from predictor.backend_choice import Trial, choose, compare, eager_only_reason
from predictor.config import Backend, ModelConfig, TaskName
from predictor.devices import DevicePlan
from predictor.handler import GeneralizedHandler
from predictor.loading import ModelRunner

TEXTS = ["Ada Lovelace worked with Charles Babbage in London.", "Paris",
         " ".join(["Marie Curie was born in Warsaw in 1867."] * 10)]


def test_the_fastest_agreeing_backend_is_chosen_never_a_disagreeing_or_failed_one() -> None:
    trials = [Trial("eager", agrees=True, max_prob_diff=0.0, ms=10.0),
              Trial("onnx", agrees=False, max_prob_diff=3e-3, ms=2.0),  # fastest, but disagrees
              Trial("openvino", agrees=True, max_prob_diff=1e-7, ms=6.0),
              Trial("broken", error="RuntimeError: export failed")]
    assert choose(trials) == "openvino"
    assert choose([trials[0], trials[1], trials[3]]) == "eager"
    assert choose([Trial("eager", agrees=True, max_prob_diff=0.0, ms=10.0),
                   Trial("onnx", agrees=True, max_prob_diff=0.0, ms=4.0)]) == "onnx"


def test_agreement_needs_the_same_argmax_and_probabilities_within_1e_4() -> None:
    batch = [{"attention_mask": torch.ones(2, 3, dtype=torch.long)}]
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.001]])
    same = compare([(logits,)], [(logits + 1e-7,)], batch, TaskName.SEQUENCE_CLASSIFICATION)
    assert same[0] and same[1] < 1e-6
    # A flipped near-tie: tiny probability change, different label.
    flipped = compare([(logits,)], [(torch.tensor([[2.0, 0.0], [0.001, 0.0]]),)], batch,
                      TaskName.SEQUENCE_CLASSIFICATION)
    assert not flipped[0]
    drifted = compare([(logits,)], [(logits * 1.01,)], batch, TaskName.SEQUENCE_CLASSIFICATION)
    assert not drifted[0] and drifted[1] > 1e-4
    # Padded positions are not read by the tasks, so they do not count.
    mask = torch.tensor([[1, 1, 0]])
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 0.0]]])
    padded_differs = tokens.clone()
    padded_differs[0, 2] = torch.tensor([0.0, 5.0])
    assert compare([(tokens,)], [(padded_differs,)], [{"attention_mask": mask}],
                   TaskName.TOKEN_CLASSIFICATION)[0]
    assert compare([(tokens,)], [(tokens[:, :2],)], [{"attention_mask": mask}],
                   TaskName.TOKEN_CLASSIFICATION) == (False, math.inf)


def test_auto_is_the_default_and_keeps_eager_where_the_candidates_do_not_apply() -> None:
    def config(mode: str = "sequence_classification", **top: object) -> ModelConfig:
        return ModelConfig.from_yaml({"handler": {"mode": mode}, **top})

    eager = SimpleNamespace(torchscript=False)
    cpu = DevicePlan("cpu", torch.float32)
    assert config().handler.backend is Backend.AUTO
    assert eager_only_reason(eager, config(), cpu) is None
    assert "generate" in str(eager_only_reason(eager, config("text_generation"), cpu))
    assert "CUDA" in str(eager_only_reason(eager, config(), DevicePlan("cuda", torch.float32)))
    assert "TorchScript" in str(eager_only_reason(SimpleNamespace(torchscript=True), config(), cpu))
    assert "pt2.compile" in str(eager_only_reason(eager, config(pt2={"compile": {"enable": True}}), cpu))
    assert "dtype" in str(eager_only_reason(eager, config(), DevicePlan("cpu", torch.bfloat16)))


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A tiny classifier and an empty backend cache of its own, so the first auto load must decide."""
    root = tmp_path_factory.mktemp("auto")
    path = build_encoder(root / "seq", "sequence_classification", seed=7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREDICTOR_BACKEND_CACHE_DIR", str(root / "backends"))
        yield path, root / "cache"


def _probabilities(handler: GeneralizedHandler, texts: list[str]) -> torch.Tensor:
    task = handler.state.task
    encoded = task.encode([task.parse(t) for t in texts])
    return torch.cat([torch.softmax(task.logits([e]), -1) for e in encoded])  # type: ignore[attr-defined]


def _direct_probabilities(path: Path, texts: list[str], mode: str) -> torch.Tensor:
    import transformers

    cls = transformers.AutoModelForSequenceClassification if mode == "sequence_classification" \
        else transformers.AutoModelForTokenClassification
    model = cls.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    max_length = yaml.safe_load((path / "model-config.yaml").read_text())["handler"]["max_length"]
    with torch.inference_mode():
        return torch.cat([torch.softmax(model(**tokenizer(t, truncation=True, max_length=max_length,
                                                          return_tensors="pt")).logits, -1) for t in texts])


def test_auto_serves_a_backend_that_answers_as_transformers_and_a_restart_reuses_the_choice(
        fresh_model: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    path, cache = fresh_model
    with caplog.at_level(logging.INFO, logger="predictor"):
        first = GeneralizedHandler(path, cache_dir=cache)
        first.load()
    table = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto:")]
    assert any("eager     yes" in line for line in table), table  # the table was timed and logged
    served = next(line for line in table if "serving" in line).split()[3]
    runner = first.state.task.model  # type: ignore[attr-defined]
    assert served == "eager" if isinstance(runner, ModelRunner) else served in ("onnx", "openvino")
    expected = _direct_probabilities(path, TEXTS, "sequence_classification")
    got = _probabilities(first, TEXTS)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).abs().max() <= 1e-4

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="predictor"):
        second = GeneralizedHandler(path, cache_dir=cache)
        second.load()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"serving {served} (cached choice" in m for m in messages), messages
    redone = [m for m in messages if m.startswith(("exported", "converted")) or "max prob diff" in m]
    assert not redone, messages
    assert type(second.state.task.model) is type(runner)  # type: ignore[attr-defined]
    assert (_probabilities(second, TEXTS) - got).abs().max() == 0


def test_forced_openvino_answers_as_transformers(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    path = build_encoder(tmp_path / "tok", "token_classification", backend="openvino")
    handler = GeneralizedHandler(path, cache_dir=tmp_path / "cache")
    handler.load()
    assert type(handler.state.task.model).__name__ == "OpenVinoRunner"  # type: ignore[attr-defined]
    task = handler.state.task
    for text in TEXTS:
        [encoded] = task.encode([task.parse(text)])
        got = torch.softmax(task.logits([encoded]), -1)[0]  # type: ignore[attr-defined]
        [expected] = _direct_probabilities(path, [text], "token_classification")
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
        assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_thread_with_more_torch_threads_gets_its_own_engine_with_the_same_answers(
        backend: str, tmp_path: Path) -> None:
    """The all-cores thread (every core) must not run the workers' one-thread engine."""
    pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    import threading

    path = build_encoder(tmp_path / "seq", "sequence_classification", backend=backend)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the loading thread is a one-thread model worker
    try:
        handler = GeneralizedHandler(path, cache_dir=tmp_path / "cache")
        handler.load()
    finally:
        torch.set_num_threads(before)
    assert handler.backend == backend
    runner = handler.state.task.model  # type: ignore[attr-defined]
    engines = runner.sessions if backend == "onnx" else runner.engines
    assert engines.thread_counts == [1]
    task = handler.state.task
    encoded = task.encode([task.parse(t) for t in TEXTS])
    one = task.logits(encoded)  # type: ignore[attr-defined]
    got: list[torch.Tensor] = []
    intra_op: list[int] = []

    def all_cores() -> None:
        torch.set_num_threads(2)
        got.append(task.logits(encoded))  # type: ignore[attr-defined]
        if backend == "onnx":
            intra_op.append(engines.current().get_session_options().intra_op_num_threads)

    thread = threading.Thread(target=all_cores)
    thread.start()
    thread.join()
    assert engines.thread_counts == [1, 2]
    assert intra_op == ([2] if backend == "onnx" else [])
    assert (got[0] - one).abs().max() <= 1e-5


def test_the_queue_builds_the_all_cores_engine_before_serving(tmp_path: Path) -> None:
    """The first uncontended request must not pay for building the every-core engine."""
    pytest.importorskip("onnxruntime")
    from predictor.serving.batcher import InferenceQueue
    from predictor.serving.cpu import set_torch_threads

    path = build_encoder(tmp_path / "seq", "sequence_classification", backend="onnx")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        handler = GeneralizedHandler(path, cache_dir=tmp_path / "cache")
        handler.load()
    finally:
        torch.set_num_threads(before)
    queue = InferenceQueue(handler, batch_size=4, capacity=8, timeout_s=30, workers=1, threads=1,
                           all_threads=2, set_threads=set_torch_threads)
    try:
        queue.warm_up()
        assert handler.state.task.model.sessions.thread_counts == [1, 2]  # type: ignore[attr-defined]
    finally:
        queue.shutdown()

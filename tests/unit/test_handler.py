"""GeneralizedHandler: readiness, out-of-memory splitting, error wrapping, the batch observer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from predictor.errors import (
    ConfigError,
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    OutOfResourcesError,
)
from predictor.handler import DEFAULT_VERSION, GeneralizedHandler, is_out_of_memory

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)"

# Same-length inputs per mode, so that one request is one forward pass before any split.
SAME_LENGTH: dict[str, list[Any]] = {
    "sequence_classification": [
        {"text": f"review number {n}", "details": True} for n in ("one", "two", "three", "four")
    ],
    "token_classification": [
        {"text": f"{name} lives in paris", "details": False} for name in ("ada", "bob", "tom", "sam")
    ],
    "question_answering": [
        {"question": "who?", "context": f"{name} wrote the handler.", "details": True}
        for name in ("ada", "bob", "tom", "sam")
    ],
    "text_generation": [
        {"text": p, "parameters": {"do_sample": False, "max_new_tokens": 6}}
        for p in ("Once upon", "The quick", "A predictor", "Serving models")
    ],
}


class Recorder:
    """A BatchObserver that keeps its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, float]] = []

    def __call__(self, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        self.calls.append((size, real_tokens, padded_tokens, seconds))

    @property
    def sizes(self) -> list[int]:
        return [c[0] for c in self.calls]


class OomOnce:
    """fault_hook: out of memory the first time a batch of more than one item runs."""

    def __init__(self, exc: BaseException | None = None) -> None:
        self.sizes: list[int] = []
        self.raised = False
        self.exc = exc or RuntimeError(CUDA_OOM)

    def __call__(self, size: int) -> None:
        self.sizes.append(size)
        if size > 1 and not self.raised:
            self.raised = True
            raise self.exc


class Always:
    """fault_hook: raise on every forward pass."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.sizes: list[int] = []

    def __call__(self, size: int) -> None:
        self.sizes.append(size)
        raise self.exc


# ---- readiness ---------------------------------------------------------------------------------
def test_not_ready_before_load(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    handler = GeneralizedHandler(model_dirs["sequence_classification"], cache_dir=tmp_path)
    assert handler.ready is False
    for call in (
        lambda: handler.predict([]),
        lambda: handler.parse("text"),
        lambda: handler.version,
        lambda: handler.config,
        lambda: handler.mode,
        lambda: handler.state,
        lambda: list(handler.stream(None)),
    ):  # type: ignore[arg-type]
        with pytest.raises(ModelNotReadyError):
            call()


def test_a_failed_load_leaves_the_handler_not_ready(tmp_path: Path) -> None:
    handler = GeneralizedHandler(tmp_path / "missing", cache_dir=tmp_path)
    with pytest.raises(ConfigError):
        handler.load()
    assert handler.ready is False
    with pytest.raises(ModelNotReadyError):
        handler.parse("text")


@pytest.mark.parametrize("mode", list(SAME_LENGTH))
def test_ready_after_load(handlers: dict[str, GeneralizedHandler], mode: str) -> None:
    handler = handlers[mode]
    assert handler.ready is True
    assert handler.mode.value == mode
    assert handler.version == DEFAULT_VERSION
    assert handler.predict([]) == []


# ---- out of memory -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(SAME_LENGTH))
def test_out_of_memory_on_a_batch_splits_it(
    handlers: dict[str, GeneralizedHandler], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers[mode]
    raws = SAME_LENGTH[mode]
    alone = [handler.predict([handler.parse(r)])[0] for r in raws]
    hook, observer = OomOnce(), Recorder()
    monkeypatch.setattr(handler, "fault_hook", hook)
    monkeypatch.setattr(handler, "observer", observer)
    results = handler.predict([handler.parse(r) for r in raws])
    assert hook.sizes == [4, 2, 2]  # the whole batch failed once, then two halves ran
    assert observer.sizes == [2, 2]  # only passes that ran are observed
    assert results == approx_nested(alone)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(CUDA_OOM),
        torch.cuda.OutOfMemoryError("CUDA out of memory."),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 8 GB"),
    ],
)
def test_out_of_memory_on_one_item_is_out_of_resources(
    handlers: dict[str, GeneralizedHandler], exc: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    monkeypatch.setattr(handler, "fault_hook", Always(exc))
    with pytest.raises(OutOfResourcesError) as err:
        handler.predict([handler.parse("a single review")])
    assert err.value.__cause__ is exc


def test_out_of_memory_that_persists_splits_down_to_one_item(
    handlers: dict[str, GeneralizedHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    hook = Always(RuntimeError(CUDA_OOM))
    monkeypatch.setattr(handler, "fault_hook", hook)
    with pytest.raises(OutOfResourcesError):
        handler.predict([handler.parse(r) for r in SAME_LENGTH["sequence_classification"]])
    assert hook.sizes == [4, 2, 1]


@pytest.mark.parametrize("exc", [ValueError("boom"), RuntimeError("shape mismatch"), KeyError("input_ids")])
def test_other_failures_are_inference_errors(
    handlers: dict[str, GeneralizedHandler], exc: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    hook = Always(exc)
    monkeypatch.setattr(handler, "fault_hook", hook)
    with pytest.raises(InferenceError) as err:
        handler.predict([handler.parse(r) for r in SAME_LENGTH["sequence_classification"]])
    assert not isinstance(err.value, OutOfResourcesError)
    assert err.value.__cause__ is exc
    assert type(exc).__name__ in str(err.value)
    assert hook.sizes == [4]  # no retry: only out-of-memory is worth splitting


def test_our_own_errors_pass_through_unwrapped(
    handlers: dict[str, GeneralizedHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    own = InvalidRequestError("raised on purpose")
    monkeypatch.setattr(handler, "fault_hook", Always(own))
    with pytest.raises(InvalidRequestError) as err:
        handler.predict([handler.parse("text")])
    assert err.value is own


def test_the_handler_works_again_after_a_failure(
    handlers: dict[str, GeneralizedHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    before = handler.predict([handler.parse("still fine")])
    with monkeypatch.context() as patch:
        patch.setattr(handler, "fault_hook", Always(RuntimeError(CUDA_OOM)))
        with pytest.raises(OutOfResourcesError):
            handler.predict([handler.parse("still fine")])
    assert handler.predict([handler.parse("still fine")]) == before


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError(CUDA_OOM), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"), True),
        (torch.cuda.OutOfMemoryError("x"), True),
        (MemoryError(), True),
        (RuntimeError("Expected all tensors to be on the same device"), False),
        (ValueError("out of memory"), False),  # only torch's RuntimeErrors carry the message
        (KeyError("memory"), False),
    ],
)
def test_is_out_of_memory(exc: BaseException, expected: bool) -> None:
    assert is_out_of_memory(exc) is expected


# ---- the observer ---------------------------------------------------------------------------------
def test_observer_gets_sizes_and_tokens(
    handlers: dict[str, GeneralizedHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    tokenizer = handler.state.task.tokenizer
    texts = ["short one", "a slightly longer sentence here"]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert lengths[0] != lengths[1] and abs(lengths[0] - lengths[1]) < 10  # one padded forward pass
    observer = Recorder()
    monkeypatch.setattr(handler, "observer", observer)
    handler.predict([handler.parse(t) for t in texts])
    [(size, real, padded, seconds)] = observer.calls
    assert (size, real, padded) == (2, sum(lengths), 2 * max(lengths))
    assert 0 <= seconds < 60


def test_observer_sees_one_call_per_forward_pass(
    handlers: dict[str, GeneralizedHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = handlers["sequence_classification"]
    assert handler.config.batch_size == 8
    observer = Recorder()
    monkeypatch.setattr(handler, "observer", observer)
    short = [f"item {n}" for n in range(11)]
    long = " ".join(["a long text"] * 15)
    results = handler.predict([handler.parse(t) for t in [*short, long]])
    assert len(results) == 12
    assert sorted(observer.sizes) == [1, 3, 8]  # max batch 8; the long text is not padded with the short ones
    assert sum(c[1] for c in observer.calls) == sum(
        len(handler.state.task.tokenizer(t)["input_ids"]) for t in [*short, long]
    )


def approx_nested(value: Any) -> Any:
    """pytest.approx that recurses into lists and dicts of floats (abs 1e-4)."""
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-4)
    if isinstance(value, list):
        return [approx_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: approx_nested(v) for k, v in value.items()}
    return value

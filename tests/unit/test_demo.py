"""The demo model: the shipped data set, a real short fine-tune, the files it writes, the build guards."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from predictor import demo
from predictor.config import load_model_config
from predictor.demo import LABELS, METRICS_FILE, build_demo_model, demo_model_ready, load_examples
from predictor.errors import ConfigError

# Plainly worded reviews that are not in sentiment.tsv (checked below).
OBVIOUS = [
    ("I absolutely loved this phone, it is fantastic.", "positive"),
    ("The hotel was wonderful and the staff were so kind.", "positive"),
    ("Terrible food and awful service, never again.", "negative"),
    ("It broke after one day, a total waste of money.", "negative"),
]
SERVING_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "model-config.yaml", "index_to_name.json", METRICS_FILE)  # fmt: skip
MAX_EPOCHS = 2  # a fixed step count, so the result depends on the seed and not on how busy the machine is


class _Records(logging.Handler):
    """Keeps the records logged while a build runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """One real build (two epochs, seed 0) shared by the tests that only read it, with its log."""
    records = _Records()
    logger = logging.getLogger("predictor")  # the build and its progress lines (predictor.progress)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(logger, "level", logging.INFO)
        logger.addHandler(records)
        try:
            # The time budget must not bind here: a loaded machine would then train fewer steps.
            out = build_demo_model(tmp_path_factory.mktemp("demo") / "model", seconds=3600, seed=0,
                                   progress=False, max_epochs=MAX_EPOCHS)  # fmt: skip
        finally:
            logger.removeHandler(records)
        yield out, records.messages


def _fake_build(path: Path, files: tuple[str, ...] = SERVING_FILES, metrics: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        (path / name).write_text("{}")
    if METRICS_FILE in files:
        (path / METRICS_FILE).write_text(metrics or json.dumps({"format": demo.FORMAT_VERSION}))
    return path


def test_dataset_is_balanced_and_well_formed() -> None:
    examples = load_examples()
    assert 300 <= len(examples) <= 400
    counts = [sum(e.label == label for e in examples) for label in range(len(LABELS))]
    assert counts[0] == counts[1]
    assert len({e.text for e in examples}) == len(examples)
    assert all(4 <= len(e.text.split()) <= 30 for e in examples)


def test_split_is_seeded_stratified_and_disjoint() -> None:
    examples = load_examples()
    train, heldout = demo.split_examples(examples, seed=0)
    assert demo.split_examples(examples, seed=0) == (train, heldout)
    assert demo.split_examples(examples, seed=1) != (train, heldout)
    assert sorted(map(repr, train + heldout)) == sorted(map(repr, examples))
    assert abs(len(heldout) / len(examples) - demo.HOLDOUT_FRACTION) < 0.02
    assert sum(e.label for e in heldout) * 2 == len(heldout)


@pytest.mark.slow
def test_build_writes_the_serving_files(built: tuple[Path, list[str]]) -> None:
    out, _ = built
    assert all((out / name).is_file() for name in SERVING_FILES)
    assert demo_model_ready(out)
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    config = yaml.safe_load((out / "model-config.yaml").read_text())
    assert config["handler"] == {
        "model_name": "demo-sentiment", "mode": "sequence_classification", "do_lower_case": True,
        "num_labels": 2, "save_mode": "pretrained", "max_length": 128, "captum_explanation": True,
        "embedding_name": "bert",
    }  # fmt: skip
    assert {k: config.get(k) for k in ("minWorkers", "batchSize", "maxBatchDelay")} == {
        "minWorkers": None, "batchSize": 8, "maxBatchDelay": 5}  # workers: one per core
    assert config["responseTimeout"] == 120
    assert json.loads((out / "index_to_name.json").read_text()) == {"0": "negative", "1": "positive"}


@pytest.mark.slow
def test_model_config_passes_the_project_validator(
    built: tuple[Path, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="predictor.config"):
        config = load_model_config(built[0] / "model-config.yaml")
    assert config.handler.mode.value == "sequence_classification"
    assert config.handler.embedding_name == "bert"
    assert not caplog.records  # no unknown keys


@pytest.mark.slow
def test_metrics_and_log_report_the_run(built: tuple[Path, list[str]]) -> None:
    out, messages = built
    metrics = json.loads((out / METRICS_FILE).read_text())
    train, heldout = demo.split_examples(load_examples(), seed=0)
    assert metrics["seed"] == 0
    assert metrics["steps"] == MAX_EPOCHS * -(-len(train) // demo.BATCH_SIZE)
    assert metrics["heldout_examples"] == len(heldout)
    assert metrics["heldout_accuracy"] >= 0.75
    assert any("held-out accuracy" in m for m in messages)
    assert sum("training" in m and "%" in m for m in messages) >= 9  # a line every ~10% without a terminal


@pytest.mark.slow
def test_model_loads_with_transformers_and_gets_obvious_reviews_right(
    built: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [text for text, _ in OBVIOUS]
    assert not set(texts) & {e.text for e in load_examples()}
    model = AutoModelForSequenceClassification.from_pretrained(built[0], local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(built[0], local_files_only=True)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(dim=-1).tolist()]
    assert predicted == [label for _, label in OBVIOUS]


@pytest.mark.slow
def test_time_budget_stops_training_and_replaces_an_earlier_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = _fake_build(tmp_path / "model")
    build_demo_model(out, seconds=2, seed=0, progress=True)
    metrics = json.loads((out / METRICS_FILE).read_text())
    train, _ = demo.split_examples(load_examples(), seed=0)
    assert 1 <= metrics["steps"] < demo.MAX_EPOCHS * len(train) // demo.BATCH_SIZE  # the budget stopped it
    assert metrics["seconds"] < 2 + 10  # stops before a step that would overrun; slack for a loaded machine
    assert (out / "model.safetensors").stat().st_size > 1_000_000  # the real weights replaced the fake
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.slow
def test_failed_build_leaves_nothing_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(demo, "_train", lambda *args, **kwargs: (0, 0.0))

    def fail() -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_model_config", fail)  # fails after the weights are already written
    with pytest.raises(RuntimeError, match="disk full"):
        build_demo_model(tmp_path / "model", seconds=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", SERVING_FILES)
def test_not_ready_when_a_file_is_missing(tmp_path: Path, missing: str) -> None:
    assert demo_model_ready(_fake_build(tmp_path / "full"))
    files = tuple(name for name in SERVING_FILES if name != missing)
    assert not demo_model_ready(_fake_build(tmp_path / "partial", files))


@pytest.mark.parametrize("metrics", ["{", "[]", '{"format": 0}'])
def test_not_ready_with_bad_metrics(tmp_path: Path, metrics: str) -> None:
    assert not demo_model_ready(_fake_build(tmp_path, metrics=metrics))


def test_not_ready_when_missing_or_empty(tmp_path: Path) -> None:
    assert not demo_model_ready(tmp_path / "absent")
    assert not demo_model_ready(tmp_path)


def test_refuses_to_overwrite_a_directory_it_did_not_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        build_demo_model(tmp_path, seconds=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs", [{"seconds": 0}, {"seconds": float("nan")}, {"max_epochs": 0}])
def test_rejects_bad_budgets(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        build_demo_model(tmp_path / "model", **kwargs)


def test_publish_into_a_mount_point_moves_files_with_the_marker_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = _fake_build(tmp_path / ".model.building-x")
    out = tmp_path / "model"
    out.mkdir()  # an empty volume mount: rename(2) onto it fails with EBUSY

    def busy(src: object, dst: object) -> None:
        raise OSError(16, "Device or resource busy")

    moved: list[str] = []
    real_move = shutil.move

    def move(src: str, dst: str) -> object:
        moved.append(Path(src).name)
        return real_move(src, dst)

    monkeypatch.setattr("os.replace", busy)
    monkeypatch.setattr("shutil.move", move)
    demo._publish(staging, out)
    assert demo_model_ready(out)
    assert sorted(moved) == sorted(SERVING_FILES)
    assert moved[-1] == METRICS_FILE


# ---- serving the demo: the trainer stays out of the server ---------------------------------------------
def test_serving_a_built_demo_never_imports_the_trainer(tmp_path: Path) -> None:
    ready = _fake_build(tmp_path / "demo-model")
    # `python -m predictor demo` up to the point where it serves (serve itself replaced by a probe).
    program = ("import sys; from predictor.serving import cli, server; "
               "cli.serve = lambda args: "
               "print(sorted(m for m in sys.modules if m.startswith('predictor.demo'))) or 0; "
               f"raise SystemExit(cli.main(['demo', '--model_dir', {str(ready)!r}]))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['predictor.demo_files']"


def test_a_missing_demo_is_built_in_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from predictor.serving import cli

    out = tmp_path / "demo-model"
    children: list[list[str]] = []
    served: list[Path] = []

    def child(command: list[str], check: bool = False) -> subprocess.CompletedProcess[str]:
        children.append(command)
        _fake_build(out)  # what `predictor demo-model OUT` leaves
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", child)
    monkeypatch.setattr(cli, "serve", lambda args: served.append(Path(args.model_dir)) or 0)
    args = cli.build_parser().parse_args(["demo", "--model_dir", str(out)])
    assert cli.demo(args) == 0
    assert children == [[sys.executable, "-m", "predictor", "demo-model", str(out)]]
    assert served == [out]
    # Built now: the next start serves at once.
    assert cli.demo(args) == 0 and len(children) == 1 and served == [out, out]


def test_a_failed_demo_build_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from predictor.serving import cli

    monkeypatch.setattr(subprocess, "run",
                        lambda command, check=False: subprocess.CompletedProcess(command, 3))
    monkeypatch.setattr(cli, "serve", lambda args: pytest.fail("served a demo model that was never built"))
    assert cli.demo(cli.build_parser().parse_args(["demo", "--model_dir", str(tmp_path / "absent")])) == 3

"""Model dir -> labels, tokenizer, weights: index_to_name formats, local tokenizers, TorchScript, .mar."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from models import SEQ_LABELS, TOKEN_LABELS, build_encoder, build_mar

from predictor.artifacts import ModelSource, load_labels, parse_labels, resolve_model_source
from predictor.errors import ConfigError
from predictor.handler import GeneralizedHandler
from predictor.loading import torchscript_file

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TEXTS = ["The movie was absolutely wonderful.", "Terrible, never again.", "Ada Lovelace lived in London."]


@pytest.fixture(scope="module")
def torchscript_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A traced tiny sequence classifier with config.json, as TorchServe's examples save one."""
    return build_encoder(
        tmp_path_factory.mktemp("ts") / "seq-ts", "sequence_classification", torchscript=True
    )


@pytest.fixture
def copy_model(tmp_path: Path) -> Callable[..., Path]:
    """Copy a model dir into this test's tmp dir, optionally editing its handler: section."""

    def copy(src: Path, name: str = "model", **handler: Any) -> Path:
        dest = tmp_path / name
        shutil.copytree(src, dest)
        if handler:
            doc = yaml.safe_load((dest / "model-config.yaml").read_text())
            doc["handler"].update(handler)
            for key in [k for k, v in handler.items() if v is None]:
                del doc["handler"][key]
            (dest / "model-config.yaml").write_text(yaml.safe_dump(doc))
        return dest

    return copy


def load(model_dir: Path, cache: Path, **kwargs: Any) -> GeneralizedHandler:
    handler = GeneralizedHandler(model_dir, cache_dir=cache, **kwargs)
    handler.load()
    return handler


def predict_details(handler: GeneralizedHandler, texts: list[str]) -> list[dict[str, Any]]:
    return handler.predict([handler.parse({"text": t, "details": True}) for t in texts])


# ---- parse_labels / load_labels ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"0": "Not Accepted", "1": "Accepted"}, ["Not Accepted", "Accepted"]),
        ({"1": "Accepted", "0": "Not Accepted"}, ["Not Accepted", "Accepted"]),
        ({"label_list": "[O, B-MISC, I-MISC]"}, ["O", "B-MISC", "I-MISC"]),
        ({"label_list": "['O', 'B-PER', 'I-PER']"}, ["O", "B-PER", "I-PER"]),
        ({"label_list": ["O", "B-LOC"]}, ["O", "B-LOC"]),
        (["negative", "positive"], ["negative", "positive"]),
        (
            json.loads('{"label_list":"[O, B-MISC, I-MISC, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC]"}'),
            ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"],
        ),
    ],
)
def test_parse_labels_accepts_torchserve_formats(raw: Any, expected: list[str]) -> None:
    assert parse_labels(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [1, 2],
        ["a", None],
        {"0": "a", "2": "b"},
        {"1": "a"},
        {"a": "x"},
        {"0": 1},
        {"0": "a", "1": ["b"]},
        "Accepted",
        5,
        None,
        {"label_list": ""},
        {"label_list": "[]"},
        {"label_list": 5},
        {"label_list": [1]},
    ],
)
def test_parse_labels_rejects_malformed_maps(raw: Any) -> None:
    with pytest.raises(ConfigError, match="index_to_name.json"):
        parse_labels(raw)


def test_parse_labels_rejects_an_empty_mapping() -> None:
    with pytest.raises(ConfigError):
        parse_labels({})


def test_load_labels_prefers_index_to_name_over_id2label(tmp_path: Path) -> None:
    (tmp_path / "index_to_name.json").write_text(json.dumps({"label_list": "[O, B-PER]"}))
    assert load_labels(tmp_path, {0: "LABEL_0", 1: "LABEL_1"}) == ["O", "B-PER"]


def test_load_labels_falls_back_to_id2label_in_index_order(tmp_path: Path) -> None:
    assert load_labels(tmp_path, {1: "positive", 0: "negative", 2: "neutral"}) == [
        "negative",
        "positive",
        "neutral",
    ]
    assert load_labels(tmp_path, None) is None
    assert load_labels(tmp_path, {}) is None


def test_load_labels_invalid_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "index_to_name.json").write_text("{'0': 'single quotes'}")
    with pytest.raises(ConfigError, match="index_to_name.json.*not valid JSON"):
        load_labels(tmp_path, None)


# ---- labels at load time -----------------------------------------------------------------------
def test_label_count_mismatch_is_a_config_error_at_load(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"])
    (model_dir / "index_to_name.json").write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    handler = GeneralizedHandler(model_dir, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"3 labels.*2 outputs"):
        handler.load()
    assert not handler.ready


def test_label_count_mismatch_of_a_bare_torchscript_file_is_found_from_its_outputs(
    torchscript_dir: Path, copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(
        torchscript_dir, num_labels=None
    )  # no num_labels and no config.json: only outputs tell
    (model_dir / "config.json").unlink()
    (model_dir / "index_to_name.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(ConfigError, match=r"3 labels.*2 outputs"):
        load(model_dir, tmp_path / "cache")


def test_token_label_count_mismatch(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["token_classification"])
    (model_dir / "index_to_name.json").write_text(json.dumps({"label_list": "[O, B-PER, I-PER]"}))
    with pytest.raises(ConfigError, match=f"3 labels.*{len(TOKEN_LABELS)} outputs"):
        load(model_dir, tmp_path / "cache")


def test_num_labels_must_match_the_model(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"], num_labels=3)
    (model_dir / "index_to_name.json").unlink()
    with pytest.raises(ConfigError, match="num_labels"):
        load(model_dir, tmp_path / "cache")


def test_labels_fall_back_to_the_model_id2label(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"])
    (model_dir / "index_to_name.json").unlink()
    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive"}
    config["label2id"] = {"negative": 0, "positive": 1}
    (model_dir / "config.json").write_text(json.dumps(config))
    handler = load(model_dir, tmp_path / "cache")
    assert handler.state.labels == ["negative", "positive"]
    for result in predict_details(handler, TEXTS):
        assert {e["label"] for e in result["top_k"]} == {"negative", "positive"}


# ---- tokenizer ---------------------------------------------------------------------------------
def move_tokenizer(model_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.move(model_dir / name, dest / name)


def test_missing_tokenizer_says_where_it_looked(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"], model_name="my-tokenizer")
    for name in TOKENIZER_FILES:
        (model_dir / name).unlink()
    with pytest.raises(ConfigError) as err:
        load(model_dir, tmp_path / "cache")
    message = str(err.value)
    assert "tokenizer" in message
    assert str(model_dir) in message
    assert str(model_dir / "my-tokenizer") in message


def test_model_name_is_a_tokenizer_folder_inside_the_model_dir(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"], model_name="tokenizer")
    move_tokenizer(model_dir, model_dir / "tokenizer")
    handler = load(model_dir, tmp_path / "cache")
    assert Path(handler.state.task.tokenizer.name_or_path) == model_dir / "tokenizer"
    reference = load(model_dirs["sequence_classification"], tmp_path / "cache")
    assert predict_details(handler, TEXTS) == predict_details(reference, TEXTS)


def test_model_name_is_never_looked_up_in_the_working_directory(
    model_dirs: dict[str, Path],
    copy_model: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"], model_name="tokenizer")
    elsewhere = tmp_path / "cwd"
    move_tokenizer(model_dir, elsewhere / "tokenizer")  # a valid tokenizer, but relative to the cwd only
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as err:
        load(model_dir, tmp_path / "cache")
    assert str(model_dir / "tokenizer") in str(err.value)


def test_model_name_may_be_an_absolute_tokenizer_folder(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    shared = tmp_path / "shared-tokenizer"
    model_dir = copy_model(model_dirs["sequence_classification"], model_name=str(shared))
    move_tokenizer(model_dir, shared)
    handler = load(model_dir, tmp_path / "cache")
    assert Path(handler.state.task.tokenizer.name_or_path) == shared


# ---- TorchScript file choice -----------------------------------------------------------------
def source_with(tmp_path: Path, files: list[str], serialized_file: str | None = None) -> ModelSource:
    folder = tmp_path / "m"
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"x")
    return ModelSource(path=folder, config_path=None, serialized_file=serialized_file)


def test_torchscript_file_named_by_the_config(tmp_path: Path) -> None:
    source = source_with(tmp_path, ["a.pt", "b.pt", "config.json"])
    assert torchscript_file(source, "b.pt") == (source.path / "b.pt").resolve()


def test_torchscript_file_named_by_the_manifest(tmp_path: Path) -> None:
    source = source_with(tmp_path, ["a.pt", "traced_model.pt"], serialized_file="traced_model.pt")
    assert torchscript_file(source, None).name == "traced_model.pt"
    assert torchscript_file(source, "a.pt").name == "a.pt"  # the config wins over the manifest


def test_the_single_torchscript_file_is_found(tmp_path: Path) -> None:
    source = source_with(tmp_path, ["model.pt", "config.json", "vocab.txt"])
    assert torchscript_file(source, None) == source.path / "model.pt"


@pytest.mark.parametrize("files", [["a.pt", "b.pt"], ["a.pt", "b.pth"], ["config.json"]])
def test_zero_or_several_torchscript_files_is_an_error(tmp_path: Path, files: list[str]) -> None:
    source = source_with(tmp_path, files)
    with pytest.raises(ConfigError) as err:
        torchscript_file(source, None)
    assert "serialized_file" in str(err.value)
    for name in files:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["missing.pt", "../outside.pt", "/etc/passwd"])
def test_named_torchscript_file_must_exist_inside_the_model_dir(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.pt").write_bytes(b"x")
    source = source_with(tmp_path, ["a.pt"])
    with pytest.raises(ConfigError, match="serialized_file"):
        torchscript_file(source, name)


def test_torchscript_model_loads_by_serialized_file(
    torchscript_dir: Path, copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(torchscript_dir, serialized_file="renamed.pt")
    (model_dir / "traced_model.pt").rename(model_dir / "renamed.pt")
    shutil.copy(model_dir / "renamed.pt", model_dir / "other.pt")  # two .pt files: only the name decides
    handler = load(model_dir, tmp_path / "cache")
    assert handler.state.task.model.torchscript
    assert predict_details(handler, TEXTS) == predict_details(
        load(torchscript_dir, tmp_path / "cache"), TEXTS
    )


def test_torchscript_is_refused_for_text_generation(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["text_generation"], save_mode="torchscript")
    with pytest.raises(ConfigError, match="torchscript"):
        load(model_dir, tmp_path / "cache")


# ---- .mar archives -----------------------------------------------------------------------------
class ExtractCounter:
    """Counts zip members extracted (to show a second load reuses the unpacked archive)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = zipfile.ZipFile.extract

        def extract(zf: zipfile.ZipFile, member: Any, *args: Any, **kwargs: Any) -> str:
            self.count += 1
            return original(zf, member, *args, **kwargs)

        monkeypatch.setattr(zipfile.ZipFile, "extract", extract)


@pytest.mark.parametrize(
    ("kind", "serialized_file"),
    [("torchscript", "traced_model.pt"), ("pretrained", "model.safetensors")],
)
def test_mar_archive_loads_once_with_its_version(
    kind: str,
    serialized_file: str,
    torchscript_dir: Path,
    model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = torchscript_dir if kind == "torchscript" else model_dirs["sequence_classification"]
    store = tmp_path / "model-store"
    archive = build_mar(store, plain, serialized_file=serialized_file, name="bert_seq", version="2.0")
    assert sorted(p.name for p in store.iterdir()) == ["bert_seq.mar"]
    cache = tmp_path / "cache"
    extracted = ExtractCounter(monkeypatch)

    first = load(store, cache)
    assert first.version == "2.0"
    assert first.state.source.archive == archive
    unpacked = first.state.source.path
    assert unpacked.is_relative_to(cache) and (unpacked / "MAR-INF" / "MANIFEST.json").is_file()
    assert first.state.task.model.torchscript is (kind == "torchscript")
    assert first.state.labels == SEQ_LABELS
    assert extracted.count > 0
    reference = load(plain, tmp_path / "cache-plain")
    assert predict_details(first, TEXTS) == predict_details(reference, TEXTS)

    (unpacked / "sentinel").write_text("kept")  # re-extraction would replace the folder
    extracted.count = 0
    second = load(store, cache)
    assert extracted.count == 0
    assert second.state.source.path == unpacked and (unpacked / "sentinel").exists()
    assert [p.name for p in cache.iterdir()] == [unpacked.name]
    assert second.version == "2.0"
    assert load(store, cache, version="7").version == "7"  # an explicit version wins


def test_mar_member_escaping_the_archive_is_refused(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_mar(
        store,
        model_dirs["sequence_classification"],
        serialized_file="model.safetensors",
        extra_members={"../escaped.txt": b"pwned"},
    )
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ConfigError, match=r"escaped\.txt"):
        load(store, cache)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_mar_with_an_absolute_member_is_refused(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    target = tmp_path / "absolute-target.txt"
    build_mar(
        store,
        model_dirs["sequence_classification"],
        serialized_file="model.safetensors",
        extra_members={str(target): b"pwned"},
    )
    with pytest.raises(ConfigError, match="escapes"):
        load(store, tmp_path / "cache")
    assert not target.exists()


def test_a_mar_that_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "broken.mar").write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match="broken.mar"):
        load(tmp_path, tmp_path / "cache")


def test_two_mar_archives_are_ambiguous(tmp_path: Path) -> None:
    for name in ("a.mar", "b.mar"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"a\.mar.*b\.mar"):
        resolve_model_source(tmp_path, None, tmp_path / "cache")


def test_a_mar_whose_manifest_is_not_an_object(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "odd.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", "[]")
    with pytest.raises(ConfigError, match="MANIFEST"):
        resolve_model_source(tmp_path, None, tmp_path / "cache")


# ---- broken model directories ------------------------------------------------------------------
def test_corrupt_torchscript_file(
    torchscript_dir: Path, copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(torchscript_dir)
    (model_dir / "traced_model.pt").write_bytes(b"PK\x03\x04 definitely not torchscript")
    with pytest.raises(ConfigError, match="traced_model.pt"):
        load(model_dir, tmp_path / "cache")


def test_corrupt_safetensors_weights(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"])
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # truncated: the header promises more than is there
    with pytest.raises(ConfigError, match="model"):
        load(model_dir, tmp_path / "cache")


def test_corrupt_pickled_weights(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"])
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x02 not a pickle of tensors")
    with pytest.raises(ConfigError, match="model"):
        load(model_dir, tmp_path / "cache")


def test_missing_weights_and_missing_config_json(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    no_weights = copy_model(model_dirs["sequence_classification"], "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no model weights"):
        load(no_weights, tmp_path / "cache")
    no_config = copy_model(model_dirs["sequence_classification"], "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json"):
        load(no_config, tmp_path / "cache")


def test_missing_model_config_lists_what_is_there(
    model_dirs: dict[str, Path], copy_model: Callable[..., Path], tmp_path: Path
) -> None:
    model_dir = copy_model(model_dirs["sequence_classification"])
    (model_dir / "model-config.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load(model_dir, tmp_path / "cache")
    assert "model-config.yaml" in str(err.value) and "model.safetensors" in str(err.value)
    handler = load(
        model_dir, tmp_path / "cache", config_path=model_dirs["sequence_classification"] / "model-config.yaml"
    )
    assert handler.ready


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nowhere", tmp_path / "cache")


def test_unknown_compile_backend_is_a_config_error_at_load(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = tmp_path / "m"
    shutil.copytree(model_dirs["sequence_classification"], model_dir)
    doc = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    doc["pt2"] = {"compile": {"enable": True, "backend": "no-such-backend"}}
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="no-such-backend"):
        load(model_dir, tmp_path / "cache")

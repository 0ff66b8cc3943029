""".mar archives from an attacker: bombs, paths out of the archive, file contents in errors and logs."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest
import yaml

from predictor.artifacts import ArchiveLimits, load_source_config, resolve_model_source
from predictor.errors import ConfigError
from predictor.handler import GeneralizedHandler

SECRET = "TOP-SECRET-7f3a9c"


def write_mar(store: Path, model_dir: Path, *, config_file: str = "model-config.yaml",
              members: dict[str, bytes] | None = None, name: str = "m") -> Path:
    """A .mar with the model's files, a manifest naming `config_file`, and extra members."""
    store.mkdir(parents=True, exist_ok=True)
    manifest = {"model": {"modelName": name, "serializedFile": "model.safetensors", "modelVersion": "1.0",
                          "configFile": config_file}}
    archive = store / f"{name}.mar"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for file in sorted(model_dir.iterdir()):
            if file.is_file():
                zf.write(file, file.name)
        for member, data in (members or {}).items():
            zf.writestr(member, data)
    return archive


@pytest.fixture
def seq_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["sequence_classification"]


def test_a_zip_bomb_member_is_refused_before_it_is_written(seq_dir: Path, tmp_path: Path) -> None:
    write_mar(tmp_path / "store", seq_dir, members={"weights.bin": bytes(64 * 2**20)})  # ~1000x
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"weights\.bin.*expands \d+ times.*--mar_max_ratio"):
        resolve_model_source(tmp_path / "store", None, cache)
    assert not list(cache.rglob("weights.bin"))
    # the limit is configurable: the same archive unpacks with a higher one
    source = resolve_model_source(tmp_path / "store", None, cache, ArchiveLimits(max_ratio=100_000))
    assert (source.path / "weights.bin").stat().st_size == 64 * 2**20


def test_total_size_and_entry_count_are_limited(seq_dir: Path, tmp_path: Path) -> None:
    write_mar(tmp_path / "store", seq_dir, members={f"extra/{n}.txt": b"x" * 1000 for n in range(50)})
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"unpacks to \d+ bytes; the limit is 10000 \(--mar_max_bytes\)"):
        resolve_model_source(tmp_path / "store", None, cache, ArchiveLimits(max_bytes=10_000))
    with pytest.raises(ConfigError, match=r"\d+ entries; the limit is 20 \(--mar_max_entries\)"):
        resolve_model_source(tmp_path / "store", None, cache, ArchiveLimits(max_entries=20))
    assert not list(cache.rglob("*.txt"))
    assert resolve_model_source(tmp_path / "store", None, cache).archive is not None  # defaults: fine


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_manifest_config_outside_the_archive_is_refused_and_never_read(
        seq_dir: Path, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture) -> None:
    # A valid config outside the archive must not be used, and a private file must not be echoed.
    outside = tmp_path / "outside.yaml"
    outside.write_text(yaml.safe_dump({"handler": {"mode": "sequence_classification"}, "modelVersion": SECRET}))
    named = str(outside) if where == "absolute" else "../../../outside.yaml"
    write_mar(tmp_path / "store", seq_dir, config_file=named)
    cache = tmp_path / "cache" / "deeper"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match=r"model\.configFile .* points outside the archive") as error:
        resolve_model_source(tmp_path / "store", None, cache)
    assert SECRET not in str(error.value) and SECRET not in caplog.text
    handler = GeneralizedHandler(tmp_path / "store", cache_dir=cache)
    with pytest.raises(ConfigError, match="outside the archive"):
        handler.load()
    assert not handler.ready


@pytest.mark.parametrize("content", [f"{SECRET}\n", f"handler: [{SECRET}\n", f"- {SECRET}\n",
                                     f"handler: {SECRET}\n", f"handler: {{mode: x}}\nlimits: {SECRET}\n"])
def test_errors_about_a_config_never_quote_its_text(seq_dir: Path, tmp_path: Path, content: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    write_mar(tmp_path / "store", seq_dir, config_file="conf/private.yaml",
              members={"conf/private.yaml": content.encode()})
    caplog.set_level(logging.DEBUG)
    source = resolve_model_source(tmp_path / "store", None, tmp_path / "cache")
    with pytest.raises(ConfigError) as error:
        load_source_config(source)
    assert SECRET not in str(error.value) and SECRET not in caplog.text, str(error.value)
    assert "private.yaml" in str(error.value) or "expected" in str(error.value)


def test_a_manifest_that_is_not_an_object_is_not_quoted(seq_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "m.mar", "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps([SECRET]))
    with pytest.raises(ConfigError, match="got list") as error:
        resolve_model_source(store, None, tmp_path / "cache")
    assert SECRET not in str(error.value)

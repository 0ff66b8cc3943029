"""import-mar carries over what TorchServe's config.properties says that maps, and warns for the rest."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from models import build_encoder, build_mar

from predictor.config import load_model_config
from predictor.mar import import_mar
from predictor.properties import carry_over, parse_properties

# A config.properties as TorchServe 0.12's docs/configuration.md writes them.
PROPERTIES = """\
# TorchServe settings
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
number_of_netty_threads=32
job_queue_size=1000
default_workers_per_model: 2
model_store=/home/model-server/model-store
max_request_size=65535000
enable_token_authorization=true
models={\\
  "tiny": {\\
    "2.0": {\\
        "defaultVersion": true,\\
        "marName": "tiny.mar",\\
        "minWorkers": 3,\\
        "maxWorkers": 3,\\
        "batchSize": 4,\\
        "maxBatchDelay": 50,\\
        "responseTimeout": 30,\\
        "startupTimeout": 300\\
    }\\
  }\\
}
"""


def test_parse_properties():
    values = parse_properties(PROPERTIES)
    assert values["default_workers_per_model"] == "2"
    assert values["inference_address"] == "http://0.0.0.0:8080"
    assert json.loads(values["models"])["tiny"]["2.0"]["batchSize"] == 4
    assert "# TorchServe settings" not in values


def test_carry_over_maps_and_warns_for_each_other_setting(caplog):
    with caplog.at_level(logging.WARNING, logger="predictor.properties"):
        carried = carry_over(parse_properties(PROPERTIES), "tiny", "2.0")
    assert carried.model_config == {"jobQueueSize": 1000, "minWorkers": 3, "maxWorkers": 3, "batchSize": 4,
                                    "maxBatchDelay": 50, "responseTimeout": 30,
                                    "limits": {"max_body_bytes": 65535000}}
    assert carried.token_authorization is True
    assert set(carried.not_carried) == {"inference_address", "management_address", "metrics_address",
                                        "number_of_netty_threads", "model_store", "models.tiny.startupTimeout"}
    warned = [r.getMessage() for r in caplog.records]
    for key in carried.not_carried:
        assert sum(key in line for line in warned) == 1, key
    assert any("--ts_management_port" in line for line in warned)


def test_token_authorization_switches():
    assert carry_over({"disable_token_authorization": "true"}, "m", None).token_authorization is False
    assert carry_over({"disable_token_authorization": "false"}, "m", None).token_authorization is True
    assert carry_over({}, "m", None).token_authorization is None


@pytest.fixture()
def archive(tmp_path):
    model = build_encoder(tmp_path / "model", "sequence_classification")
    config = yaml.safe_load((model / "model-config.yaml").read_text())
    for key in ("batchSize", "maxBatchDelay", "responseTimeout"):
        config.pop(key, None)  # so config.properties decides them
    (model / "model-config.yaml").write_text(yaml.safe_dump(config))
    return build_mar(tmp_path / "mar", model, serialized_file="model.safetensors", name="tiny", version="2.0")


def test_import_mar_carries_config_properties(tmp_path, archive):
    properties = tmp_path / "config.properties"
    properties.write_text(PROPERTIES)
    result = import_mar(archive, tmp_path / "out", config_properties=properties)
    config = load_model_config(result.model_dir / "model-config.yaml")
    assert (config.batch_size, config.max_batch_delay_ms, config.response_timeout_s) == (4, 50, 30)
    assert (config.min_workers, config.max_workers, config.job_queue_size) == (3, 3, 1000)
    assert config.limits.max_body_bytes == 65535000
    service = yaml.safe_load(result.inference_service.read_text())
    predictor = service["spec"]["predictor"]
    assert predictor["volumes"] == [{"name": "token", "secret": {"secretName": "tiny-token"}}]
    assert predictor["model"]["args"] == ["--token_file=/etc/predictor/token/key_file.json"]
    assert predictor["model"]["volumeMounts"][0]["mountPath"] == "/etc/predictor/token"


def test_import_mar_reads_config_properties_in_the_archive(tmp_path):
    model = build_encoder(tmp_path / "model", "sequence_classification")
    archive = build_mar(tmp_path / "mar", model, serialized_file="model.safetensors", name="tiny",
                        extra_members={"config.properties": "disable_token_authorization=true\njob_queue_size=7\n"})
    result = import_mar(archive, tmp_path / "out")
    assert load_model_config(result.model_dir / "model-config.yaml").job_queue_size == 7
    assert not (result.model_dir / "config.properties").exists()
    assert "volumes" not in yaml.safe_load(result.inference_service.read_text())["spec"]["predictor"]


def test_import_mar_without_config_properties_changes_nothing(tmp_path, archive):
    result = import_mar(archive, tmp_path / "out")
    service = yaml.safe_load(result.inference_service.read_text())
    assert "args" not in service["spec"]["predictor"]["model"]

"""Token authorization: key files in TorchServe's layout or a bare token, constant-time checks, exempt paths."""

from __future__ import annotations

import hmac
import json

import pytest

from predictor.errors import ConfigError
from predictor.serving import auth

KEY_FILE = {"management": {"key": "B-E5KSRM", "expiration time": "2024-02-16T21:12:24.801167Z"},
            "inference": {"key": "gNRuA7dS", "expiration time": "2024-02-16T21:12:24.801148Z"},
            "API": {"key": "yv9uQajP"}}


def test_torchserve_key_file_layout():
    keys = auth.parse_keys(json.dumps(KEY_FILE, indent=2), "key_file.json")
    assert (keys.inference, keys.management) == ("gNRuA7dS", "B-E5KSRM")
    assert "gNRuA7dS" not in repr(keys) and "B-E5KSRM" not in repr(keys)


def test_bare_token_guards_both():
    keys = auth.parse_keys("  s3cret-token\n", "token")
    assert keys.inference == keys.management == "s3cret-token"


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"), ("two words", "one word"), ("{not json", "not valid JSON"),
    (json.dumps({"inference": {"key": "a"}}), '"management"'), (json.dumps({"inference": "a", "management": "b"}),
                                                              '"inference"'),
])
def test_bad_key_files_fail_at_start_without_showing_keys(text, says):
    with pytest.raises(ConfigError, match=says) as caught:
        auth.parse_keys(text, "--token_file k.json")
    assert "k.json" in str(caught.value)
    assert '"a"' not in str(caught.value)


def test_load_keys_order(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps(KEY_FILE))
    assert auth.load_keys(None, {}) is None
    assert auth.load_keys(None, {"PREDICTOR_TOKEN": "envtoken"}).inference == "envtoken"
    assert auth.load_keys(str(path), {"PREDICTOR_TOKEN": "envtoken"}).inference == "gNRuA7dS"
    assert auth.load_keys(None, {"PREDICTOR_TOKEN_FILE": str(path)}).management == "B-E5KSRM"
    with pytest.raises(ConfigError, match="cannot read"):
        auth.load_keys(str(tmp_path / "missing.json"), {})


def test_authorized_compares_in_constant_time(monkeypatch):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.authorized("Bearer gNRuA7dS", "gNRuA7dS")
    assert auth.authorized(b"bearer gNRuA7dS", "gNRuA7dS")
    assert not auth.authorized("Bearer gNRuA7dT", "gNRuA7dS")
    assert compared == [(b"gNRuA7dS", b"gNRuA7dS")] * 2 + [(b"gNRuA7dT", b"gNRuA7dS")]
    for header in (None, "", "gNRuA7dS", "Basic gNRuA7dS", "Bearer", "Bearer  "):
        assert not auth.authorized(header, "gNRuA7dS")


@pytest.mark.parametrize(("method", "path", "exempt"), [
    ("GET", "/ping", True), ("GET", "/metrics", True), ("GET", "/viewer", True), ("GET", "/v2/health/live", True),
    ("GET", "/v2/health/ready", True), ("GET", "/v1/models/bert", True), ("GET", "/v2/models/bert/ready", True),
    ("GET", "/v2/models/bert/versions/2/ready", True),
    ("POST", "/ping", False), ("POST", "/v1/models/bert:predict", False), ("GET", "/v1/models", False),
    ("GET", "/v2/models/bert", False), ("POST", "/predictions/bert", False), ("OPTIONS", "/", False),
    ("GET", "/pingx", False), ("GET", "/v1/models/bert:predict", False), ("POST", "/openai/v1/completions", False),
])
def test_exempt_paths(method, path, exempt):
    assert auth.exempt_path(method, path, {}) is exempt

"""Schemathesis against the Open Inference Protocol's own OpenAPI document: no 5xx, and every answer
conforms to the document's response schemas (no null fields, required fields present).

The document is the one in ../shared/oip-spec, made usable in memory (oip_spec.usable_spec); path
parameters are pinned to the served model and version (random names would only reach the 404 branch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from oip_spec import usable_spec

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40
SEED = 20250601


def test_oip_operations_conform(seq_server, tmp_path: Path, capsys):
    schema = tmp_path / "oip.json"
    schema.write_text(json.dumps(usable_spec()))
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.MODEL_NAME" = "seq"\n"path.MODEL_VERSION" = "1.0"\n')
    report_dir = tmp_path / "report"
    st = Path(sys.executable).with_name("st")
    command = [str(st), "--config-file", str(config), "run", str(schema), "--url", seq_server.url,
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--phases", "examples,coverage,fuzzing",
               "--workers", "1", "--request-timeout", "30", "--no-color", "--report", "json",
               "--report-dir", str(report_dir), "--warnings", "off"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)
    [report] = sorted(report_dir.glob("*.json"))
    report_data = json.loads(report.read_text())
    cases, operations = report_data["test_cases"], report_data["operations"]
    with capsys.disabled():
        print(f"\nschemathesis (OIP document): {cases['generated']} requests over {operations['tested']} operations, "
              f"{cases['with_failures']} with failures ({report_data['running_time']:.1f}s, seed {SEED})")
    assert result.returncode == 0 and not report_data["failures"] and not report_data["errors"], (
        result.stdout[-6000:] + result.stderr[-2000:])
    assert operations["tested"] == len([op for item in usable_spec()["paths"].values() for op in item
                                        if op in ("get", "post")])

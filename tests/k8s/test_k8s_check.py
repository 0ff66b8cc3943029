"""The shared offline verifier (k8s-check) on this checkout: CRD schemas, KServe rules, checkov, hadolint."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from k8s_support import REPO, k8s_check_kit

SCRIPT, WHY_NOT = k8s_check_kit()
pytestmark = [pytest.mark.skipif(SCRIPT is None, reason=WHY_NOT), pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """k8s-check --strict (checkov findings fail too) on the repository, as JSON."""
    out = tmp_path_factory.mktemp("k8s-check") / "report.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(REPO), "--strict", "--json", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert out.is_file(), f"k8s-check wrote no report (exit {done.returncode}):\n{done.stderr}{done.stdout}"
    data: dict[str, Any] = json.loads(out.read_text())
    data["_stdout"] = done.stdout
    data["_returncode"] = done.returncode
    return data


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One step of the report."""
    return next(s for s in report["steps"] if s["name"] == name)


def test_no_failures(report: dict[str, Any]) -> None:
    assert report["failures"] == 0 and report["_returncode"] == 0, report["_stdout"]
    assert report["_stdout"].splitlines()[-1].endswith(" 0 failures")


def test_every_step_ran(report: dict[str, Any]) -> None:
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses == {
        name: "PASS" for name in ("yamllint", "helm", "schema", "semantic", "checkov", "hadolint")
    }
    # --strict fails objects without a schema, so every object was checked against one.
    assert sum(step(report, "schema")["data"].values()) == report["objects"]
    # All of manifests/ and every render of the chart (default + each values-*.yaml) were checked.
    renders = {r["values"] for r in report["renders"]}
    assert renders == {
        "default values",
        *(
            f"helm/transformers-predictor/{p.name}"
            for p in (REPO / "helm/transformers-predictor").glob("values-*.yaml")
        ),
    }
    kinds = {o["kind"] for o in report["object_list"]}
    assert {"ClusterServingRuntime", "ServingRuntime", "InferenceService", "ConfigMap"} <= kinds


def test_checkov_really_scanned(report: dict[str, Any]) -> None:
    # A checkov crash (e.g. an "=" in a skip reason) leaves an empty report that k8s-check counts as a pass.
    checkov = step(report, "checkov")
    assert checkov["data"]["passed"] > 500, checkov
    assert checkov["data"]["failed_check_ids"] == {}

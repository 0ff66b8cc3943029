"""kserve's model-repository routes must not take the one model of the process away.

These run on the `spare` server: if the bug is there, that server is left without its model.
"""

from __future__ import annotations

import httpx
import pytest


def test_unload_route_does_not_remove_the_model(spare_server):
    with httpx.Client(base_url=spare_server.url, timeout=30) as client:
        assert client.post("/predictions/spare", content=b"hello").status_code == 200
        client.post("/v2/repository/models/spare/unload")
        assert client.get("/ping").status_code == 200
        assert client.post("/predictions/spare", content=b"hello").status_code == 200

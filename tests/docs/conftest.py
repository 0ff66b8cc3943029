"""The documentation tests reuse the HTTP tests' server handling and the deployment tests' manifest checks."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for helpers in (TESTS / "http", TESTS / "k8s"):  # http_servers.py, k8s_support.py: plain modules, not packages
    if str(helpers) not in sys.path:
        sys.path.append(str(helpers))

"""`python -m predictor ...` with GET /viewer wired in, for the browser test (until server.py wires it)."""

from __future__ import annotations

import sys

import kserve.model_server

from predictor.serving.cli import main
from predictor.serving.viewer import VIEWER_PATH, register_viewer_routes

if __name__ == "__main__":
    app = kserve.model_server.app
    if not any(getattr(route, "path", None) == VIEWER_PATH for route in app.router.routes):
        register_viewer_routes(app)
    sys.exit(main(sys.argv[1:]))

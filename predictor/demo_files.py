"""What a finished demo-model build looks like: checked by `predictor demo` before serving.

Standard library only, so serving the demo never imports the trainer (predictor/demo.py).
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "demo-metrics.json"
# Bumped when the build changes, so a serve command rebuilds an older demo model instead of reusing it.
FORMAT_VERSION = 1
# The metrics file is written last: its presence (with the right format) marks a finished build.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "model-config.yaml", "index_to_name.json", METRICS_FILE)  # fmt: skip


def demo_model_ready(out_dir: Path) -> bool:
    """True when out_dir holds a finished demo build of the current format."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        metrics = json.loads((out_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("format") == FORMAT_VERSION

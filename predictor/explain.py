"""Captum glue: Layer Integrated Gradients on the input embeddings, for every mode. Imported lazily.

Attributions run on a structural clone of the model that shares its weights: Captum hooks the
embedding layer while it works, and a hook on the served model would corrupt predictions running
concurrently on the model thread. The clone costs no weight memory and is built once.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from predictor.errors import ExplanationUnavailableError, InvalidRequestError, RequestCancelledError
from predictor.spans import best_window
from predictor.tasks.base import Explanation, Instance, TaskBase

if TYPE_CHECKING:  # types only: each task imports this module, so importing the tasks back would be a cycle
    from predictor.tasks.question_answering import QuestionAnsweringTask
    from predictor.tasks.sequence_classification import SequenceClassificationTask
    from predictor.tasks.text_generation import TextGenerationTask
    from predictor.tasks.token_classification import TokenClassificationTask

TaskT = TypeVar("TaskT", bound=TaskBase)

logger = logging.getLogger(__name__)

# Where common architectures keep their embeddings module (word + position + type), as TorchServe's
# handler finds it with `getattr(model, embedding_name).embeddings`.
_BASE_MODEL_ATTRS = ("bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta_v2",
                     "xlm_roberta", "camembert", "mpnet", "longformer", "xlnet")  # fmt: skip


# The instance each thread is explaining: the clone's forward hook stops work nobody waits for.
_working = threading.local()


def _stop_if_cancelled(module: torch.nn.Module, args: Any) -> None:
    instance = getattr(_working, "instance", None)
    if instance is not None and instance.cancelled:
        raise RequestCancelledError("explanation given up (timed out or client gone): stopped")


def _cancellable(
    explain: Callable[[TaskT, Instance], Explanation],
) -> Callable[[TaskT, Instance], Explanation]:
    """Lets the server stop this explanation between two forward passes of Integrated Gradients."""

    @functools.wraps(explain)
    def wrapped(task: TaskT, instance: Instance) -> Explanation:
        _working.instance = instance
        try:
            _stop_if_cancelled(task.model.module, ())
            return explain(task, instance)
        finally:
            _working.instance = None

    return wrapped


def _lig_class() -> Any:
    try:
        from captum.attr import LayerIntegratedGradients
    except ModuleNotFoundError as exc:
        raise ExplanationUnavailableError("explanations need captum: pip install captum") from exc
    return LayerIntegratedGradients


def weight_sharing_clone(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors (no extra memory)."""
    memo: dict[int, Any] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def embedding_layer(model: torch.nn.Module, embedding_name: str | None) -> torch.nn.Module:
    """The layer to attribute to: `<embedding_name>.embeddings` (or a dotted path), else found automatically."""
    if embedding_name:
        target: Any = model
        for part in embedding_name.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ExplanationUnavailableError(f"handler.embedding_name: {embedding_name!r} is not a submodule "
                                                  f"of {type(model).__name__}")
        return getattr(target, "embeddings", target)
    for attr in _BASE_MODEL_ATTRS:
        base = getattr(model, attr, None)
        if base is not None and isinstance(getattr(base, "embeddings", None), torch.nn.Module):
            return base.embeddings  # type: ignore[no-any-return]
    layer = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if layer is None:
        raise ExplanationUnavailableError(f"cannot find the embedding layer of {type(model).__name__}; "
                                          "set handler.embedding_name")
    return layer  # type: ignore[no-any-return]


def summarize(attributions: torch.Tensor) -> list[float]:
    """Per-token importances as TorchServe computes them: sum over the embedding, then L2-normalise."""
    summed = attributions.sum(dim=-1).float()
    norm = torch.linalg.vector_norm(summed)
    return (summed / norm if norm > 0 else summed).tolist()


class Explainer:
    """Integrated Gradients for one task's model; one per handler, used by one thread at a time."""

    def __init__(self, task: TaskBase) -> None:
        if task.model.torchscript:
            raise ExplanationUnavailableError("explanations need an eager model (save_mode: pretrained); "
                                              "TorchScript models cannot be hooked")
        self.task = task
        self.tokenizer = task.tokenizer
        self.handler = task.handler
        self.device = task.model.device
        self.model = weight_sharing_clone(task.model.module)
        self.layer = embedding_layer(self.model, self.handler.embedding_name)
        self.model.register_forward_pre_hook(_stop_if_cancelled)
        self.lig = _lig_class()(self._forward, self.layer)
        self.lock = threading.Lock()

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                 select: Any) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # BERT-like QA reads the context as segment 1, as the served model does
            inputs["token_type_ids"] = token_type_ids
        return select(self.model(**inputs))  # type: ignore[no-any-return]

    def encode(self, text: str, pair: str | None = None) -> dict[str, torch.Tensor]:
        """Model inputs, the baseline (content tokens -> pad, special tokens kept) and, for a pair, the context mask."""
        enc = self.tokenizer(text, pair, truncation="only_second" if pair else True,
                             max_length=self.handler.max_length, return_special_tokens_mask=True,
                             return_tensors="pt")
        ids = enc["input_ids"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        baseline = torch.where(enc["special_tokens_mask"].bool(), ids, torch.full_like(ids, pad))
        out = {"input_ids": ids, "attention_mask": enc["attention_mask"], "baseline": baseline}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        if pair is not None:
            out["context"] = torch.tensor([sid == 1 for sid in enc.sequence_ids(0)])
        return {k: v.to(self.device) for k, v in out.items()}

    def steps(self, instance: Instance, targets: int = 1) -> int:
        """n_steps for this request, keeping steps x targets within handler.max_explain_steps.

        An explicit `n_steps` over the cap is refused; the default shrinks to fit.
        """
        cap = self.handler.max_explain_steps
        if instance.n_steps is None:
            return max(1, min(self.handler.n_steps, cap // max(1, targets)))
        if instance.n_steps * targets > cap:
            raise InvalidRequestError(f"explanation work {instance.n_steps} steps x {targets} targets exceeds "
                                      f"handler.max_explain_steps ({cap})")
        return instance.n_steps

    def attribute(self, enc: dict[str, torch.Tensor], select: Any, targets: Sequence[Any],
                  n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One Captum call for several targets of the same input (they share its batches)."""
        k = len(targets)
        ids = enc["input_ids"].expand(k, -1)
        types = enc["token_type_ids"].expand(k, -1) if "token_type_ids" in enc else None
        with self.lock, torch.enable_grad():
            attributions, delta = self.lig.attribute(
                inputs=ids, baselines=enc["baseline"].expand(k, -1), target=list(targets),
                additional_forward_args=(enc["attention_mask"].expand(k, -1), types, select),
                n_steps=n_steps, internal_batch_size=max(self.handler.internal_batch_size, k),
                return_convergence_delta=True,
            )
        return attributions.detach(), delta.detach()

    def encode_row(self, row: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """encode() for a row the task already tokenised (a QA window)."""
        ids = torch.tensor([row["input_ids"]])
        special = torch.tensor([self.tokenizer.get_special_tokens_mask(row["input_ids"],
                                                                       already_has_special_tokens=True)])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        baseline = torch.where(special.bool(), ids, torch.full_like(ids, pad))
        mask = torch.tensor([row["attention_mask"]])
        out = {"input_ids": ids, "attention_mask": mask, "baseline": baseline}
        if "token_type_ids" in row:
            out["token_type_ids"] = torch.tensor([row["token_type_ids"]])
        return {k: v.to(self.device) for k, v in out.items()}

    def predict_logits(self, enc: dict[str, torch.Tensor]) -> Any:
        """The clone's outputs for the input, without gradients."""
        with torch.inference_mode():
            return self._forward(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), lambda out: out)

    def words(self, enc: dict[str, torch.Tensor]) -> list[str]:
        """The tokens the importances belong to, special tokens included (as TorchServe shows them)."""
        return list(self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()))


def explainer_for(task: TaskBase) -> Explainer:
    """The task's explainer, built on first use."""
    explainer = getattr(task, "_explainer", None)
    if explainer is None:
        explainer = Explainer(task)
        task._explainer = explainer  # type: ignore[attr-defined]
        logger.info("explanations: Layer Integrated Gradients on %s", type(explainer.layer).__name__)
    return explainer


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


@_cancellable
def explain_sequence_classification(task: SequenceClassificationTask, instance: Instance) -> Explanation:
    """{"words", "importances", "delta", "target"}: attributions to the target class (default: predicted)."""
    ex = explainer_for(task)
    enc = ex.encode(instance.text)
    target = instance.target
    if target is None:
        target = int(_logits(ex.predict_logits(enc))[0].argmax())
    attributions, delta = ex.attribute(enc, _logits, [target], ex.steps(instance))
    return {"words": ex.words(enc), "importances": summarize(attributions[0]), "delta": float(delta[0]),
            "target": target, "label": task.label(target)}


@_cancellable
def explain_token_classification(task: TokenClassificationTask, instance: Instance) -> Explanation:
    """Attributions to one token's label; by default to every predicted entity token (first one on top)."""
    ex = explainer_for(task)
    enc = ex.encode(instance.text)
    length = enc["input_ids"].shape[1]
    if instance.target is not None:
        position, label = instance.target
        if position >= length:
            raise InvalidRequestError(f"field 'target': token position {position} is past the last token "
                                      f"({length - 1})")
        targets = [(position, label)]
    else:
        predicted = _logits(ex.predict_logits(enc))[0].argmax(-1).tolist()
        special = set(i for i, t in enumerate(enc["baseline"][0].tolist()) if t == enc["input_ids"][0, i])
        targets = [(i, lab) for i, lab in enumerate(predicted) if i not in special and task.label(lab) != "O"]
        targets = targets or [(i, predicted[i]) for i in range(length) if i not in special][:1]
        if not targets:
            raise InvalidRequestError("the text has no tokens to explain: "
                                      "it tokenises to special tokens only")
    n_steps = ex.steps(instance, len(targets))

    def select(outputs: Any) -> torch.Tensor:
        return _logits(outputs).flatten(1)  # [batch, tokens * labels]: target = position * labels + label

    num_labels = len(task.labels)
    flat = [position * num_labels + label for position, label in targets]
    attributions, delta = ex.attribute(enc, select, flat, n_steps)
    entities = [{"position": p, "label": task.label(lab), "importances": summarize(attributions[n]),
                 "delta": float(delta[n])} for n, (p, lab) in enumerate(targets)]
    first = entities[0]
    return {"words": ex.words(enc), "importances": first["importances"], "delta": first["delta"],
            "target": [targets[0][0], targets[0][1]], "entities": entities}


@_cancellable
def explain_question_answering(task: QuestionAnsweringTask, instance: Instance) -> Explanation:
    """Attributions of question and context tokens to the answer's start and to its end, in one pass.

    A long context is explained in the window that holds the served answer; target positions count
    in that window.
    """
    ex = explainer_for(task)
    [encoded] = task.encode([instance])
    alone = len(encoded.rows) == 1 and instance.target is not None  # nothing to choose: no forward pass
    spans = [(0.0, 0, 0)] if alone else task.window_spans([encoded])[0]
    window = best_window(spans)
    enc = ex.encode_row(encoded.rows[window])
    length = enc["input_ids"].shape[1]
    if instance.target is not None:
        start, end = instance.target
        if end >= length:
            raise InvalidRequestError(f"field 'target': position {end} is past the last token ({length - 1})")
    else:
        _, start, end = spans[window]

    def select(outputs: Any) -> torch.Tensor:
        return torch.cat([outputs.start_logits, outputs.end_logits], dim=1) if hasattr(outputs, "start_logits") \
            else torch.cat([outputs[0], outputs[1]], dim=1)

    attributions, delta = ex.attribute(enc, select, [start, length + end], ex.steps(instance, 2))
    return {"words": ex.words(enc), "importances_answer_start": summarize(attributions[0]),
            "importances_answer_end": summarize(attributions[1]), "delta_start": float(delta[0]),
            "delta_end": float(delta[1]), "target": [start, end], "window": window}


@_cancellable
def explain_text_generation(task: TextGenerationTask, instance: Instance) -> Explanation:
    """Prompt-token attributions to the continuation (target text, default the greedy continuation)."""
    try:
        from captum.attr import LLMGradientAttribution, TextTokenInput
    except ModuleNotFoundError as exc:
        raise ExplanationUnavailableError("explanations need captum: pip install captum") from exc
    ex = explainer_for(task)
    target = instance.target
    if target is None:
        greedy = task.parse({"text": instance.text, "parameters": {"max_new_tokens": 5, "do_sample": False},
                             "details": True})
        target = task.run(task.encode([greedy]))[0]["continuation"] or task.tokenizer.eos_token
    prompt = _prompt_within_max_length(task, instance.text)
    target_tokens = len(task.tokenizer(target, add_special_tokens=False)["input_ids"])
    _check_fits_context(task, prompt, target_tokens)
    n_steps = ex.steps(instance, max(1, target_tokens))
    llm_attr = LLMGradientAttribution(_lig_class()(ex.model, ex.model.get_input_embeddings()), task.tokenizer)
    inp = TextTokenInput(prompt, task.tokenizer)
    with ex.lock, torch.enable_grad():
        result = llm_attr.attribute(inp, target=target, n_steps=n_steps,
                                    internal_batch_size=ex.handler.internal_batch_size)
    seq_attr = result.seq_attr.detach().float()
    norm = torch.linalg.vector_norm(seq_attr)
    return {"words": list(result.input_tokens), "importances": (seq_attr / norm if norm > 0 else seq_attr).tolist(),
            "target": target, "output_tokens": list(result.output_tokens),
            "token_importances": result.token_attr.detach().float().tolist() if result.token_attr is not None else []}


def _prompt_within_max_length(task: TextGenerationTask, text: str) -> str:
    """The prompt as generation sees it: its last handler.max_length tokens."""
    ids = task.tokenizer(text)["input_ids"]
    if len(ids) <= task.handler.max_length:
        return text
    return str(task.tokenizer.decode(ids[-task.handler.max_length:], skip_special_tokens=True))


def _check_fits_context(task: TextGenerationTask, prompt: str, target_tokens: int) -> None:
    """Prompt and target are one sequence for the model: InvalidRequestError when it exceeds the context."""
    context = task.context_size
    prompt_tokens = len(task.tokenizer(prompt)["input_ids"])
    if context is not None and prompt_tokens + target_tokens > context:
        raise InvalidRequestError(f"explanation target ({target_tokens} tokens) after the prompt "
                                  f"({prompt_tokens} tokens) runs past the model's context of {context} tokens")

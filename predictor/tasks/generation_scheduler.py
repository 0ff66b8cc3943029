"""Continuous batching of greedy generations: one decoding loop, requests join and leave between steps.

transformers' own continuous batching (`generate_batch`, `ContinuousBatchingManager`) runs its own
thread, switches the shared model to paged attention and has no stop strings, so it is not used here;
this loop keeps the model as it is and decodes a left-padded batch with a DynamicCache, as generate() does.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from predictor.tasks.base import Encoded, GenerationParams, Instance

logger = logging.getLogger(__name__)


class GenerationListener(Protocol):
    """Told about one request's progress, on the thread that decodes (keep each call short)."""

    def started(self, enc: Encoded) -> None: ...
    def token(self, token_id: int) -> None: ...
    def finished(self, new_ids: list[int], finish: str) -> None: ...
    def failed(self, exc: BaseException) -> None: ...


class NotBatchableError(Exception):
    """The model's cache cannot be merged row-wise (sliding-window or static layers)."""


# Generation-config keys whose non-default value makes greedy decoding more than an argmax.
_PROCESSOR_KEYS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "min_length",
                   "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                   "begin_suppress_tokens", "sequence_bias", "encoder_repetition_penalty",
                   "exponential_decay_length_penalty", "renormalize_logits", "epsilon_cutoff", "eta_cutoff",
                   "guidance_scale", "watermarking_config")


def greedy_is_argmax(model: Any) -> bool:
    """True when the model's generation config adds no logits processor to greedy search."""
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    default = GenerationConfig()
    return all(getattr(config, key, None) == getattr(default, key, None) for key in _PROCESSOR_KEYS)


def mergeable_cache(model: Any) -> bool:
    """True when the model's DynamicCache has full-attention layers only (rows can be padded and joined)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # a config DynamicCache cannot read: generate() keeps this model
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class _Row:
    """One sequence being decoded."""

    instance: Instance
    params: GenerationParams
    listener: GenerationListener
    enc: Encoded | None = None
    new_ids: list[int] = field(default_factory=list)


class GenerationScheduler:
    """Decodes greedy requests together; each leaves at its own eos, max_new_tokens, stop string or cancel.

    `submit` is thread-safe. One thread at a time decodes: the server's model worker (`drive`), or for
    in-process callers (`wait`) a thread started while there is work. Each step
    prefills the requests that arrived (alone, as generate() would), merges their caches into the running
    batch (left padding), then decodes one token for every row.
    """

    def __init__(self, model: Any, encode: Callable[[Sequence[Instance]], list[Encoded]],
                 is_finished: Callable[[_Row], str | None], max_rows: int = 64) -> None:
        self.model = model
        self.encode = encode
        self.is_finished = is_finished
        self.max_rows = max_rows
        self._pending: list[_Row] = []
        self._lock = threading.Lock()  # guards _pending and _driving
        self._turn = threading.Condition(self._lock)  # notified after every step and when the driver leaves
        self._driving = False
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length]: 0 where a row is left padding
        self._last: torch.Tensor | None = None  # [rows, 1]: each row's latest token, the next step's input
        forward = inspect.signature(model.forward).parameters
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in forward else {}
        self._positions = "position_ids" in forward
        self._cache_key = "cache" if "cache" in forward else "past_key_values"  # renamed in transformers 5

    # ---- the public side ---------------------------------------------------------------------
    def submit(self, instance: Instance, params: GenerationParams, listener: GenerationListener,
               enc: Encoded | None = None) -> None:
        """Queue a request; it joins the batch at the next step (encoded there when `enc` is None)."""
        with self._turn:
            self._pending.append(_Row(instance, params, listener, enc))
            self._turn.notify_all()

    @property
    def waiting(self) -> int:
        """Requests submitted and not decoding yet."""
        return len(self._pending)

    @property
    def has_work(self) -> bool:
        """True while a request is queued or being decoded."""
        with self._lock:
            return bool(self._pending or self._rows)

    def drive(self, on_step: Callable[[], None] | None = None) -> None:
        """Decode on this thread until no work is left; first waits while another thread decodes."""
        with self._turn:
            self._turn.wait_for(lambda: not self._driving)
            self._driving = True
        self._decode_until_idle(on_step)

    def wait(self, done: Callable[[], bool]) -> None:
        """Return once done(); starts a decoding thread (with this thread's torch threads) if none runs."""
        with self._turn:
            if not self._driving and not done():
                self._driving = True
                threading.Thread(target=self._decode_in_background, args=(torch.get_num_threads(),),
                                 name="predictor-decode", daemon=True).start()
            self._turn.wait_for(done)

    def _decode_in_background(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self._decode_until_idle(None)

    def _decode_until_idle(self, on_step: Callable[[], None] | None) -> None:
        """The loop of the thread that set _driving; it stops (and clears the flag) when nothing is left."""
        try:
            while True:
                with self._turn:
                    self._turn.notify_all()  # waiters check their requests after every step
                    if not (self._pending or self._rows):
                        self._driving = False  # under the lock that submit() takes: no request is missed
                        return
                self.step()
                if on_step is not None:
                    on_step()
        except BaseException:
            with self._turn:
                self._driving = False
                self._turn.notify_all()
            raise

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> None:
        """Admit what arrived, then decode one token for every row; rows that finish leave."""
        with self._lock:
            room = max(0, self.max_rows - len(self._rows))
            arrived, self._pending = self._pending[:room], self._pending[room:]
        with torch.inference_mode():
            for row in arrived:
                try:
                    self._admit(row)
                except Exception as exc:  # this request's error; the others go on
                    row.listener.failed(exc)
            if self._rows:
                try:
                    self._decode()
                except Exception as exc:  # the batch's state is unknown: every row gets the error
                    rows = self._rows
                    self._reset()
                    for row in rows:
                        row.listener.failed(exc)

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._last = [], None, None, None

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, self._cache_key: cache,
                                  "use_cache": True, **self._extra}
        if self._positions:  # as generate() makes them: left padding does not shift a row's positions
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
            kwargs["position_ids"] = positions[:, -ids.shape[1]:]
        logits = self.model(**kwargs).logits[:, -1, :]
        return logits.argmax(dim=-1)

    def _admit(self, row: _Row) -> None:
        if row.enc is None:
            row.enc = self.encode([row.instance])[0]
        row.listener.started(row.enc)
        device = self.model.device
        ids = torch.tensor([row.enc.rows[0]["input_ids"]], device=device)
        mask = torch.ones_like(ids)
        cache = DynamicCache(config=self.model.config)
        token = self._forward(ids, mask, cache)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            layer = type(cache.layers[0]).__name__
            raise NotBatchableError(f"{type(self.model).__name__}: cache layers {layer}")
        if self._take(row, int(token[0])):
            return
        self._merge(cache, mask, token.view(1, 1))
        self._rows.append(row)

    def _take(self, row: _Row, token: int) -> bool:
        """Record a row's new token; True (and the row told) when it has finished or was given up."""
        row.new_ids.append(token)
        row.listener.token(token)
        finish = self.is_finished(row) or ("length" if row.instance.cancelled else None)
        if finish is None:
            return False
        row.listener.finished(row.new_ids, finish)
        return True

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor) -> None:
        if self._cache is None or self._mask is None or self._last is None:
            self._cache, self._mask, self._last = cache, mask, last
            return
        length = max(self._mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(mask, length, 1)])
        self._last = torch.cat([self._last, last])

    def _decode(self) -> None:
        assert self._cache is not None and self._mask is not None and self._last is not None
        mask = torch.cat([self._mask, self._mask.new_ones(self._mask.shape[0], 1)], dim=1)
        tokens = self._forward(self._last, mask, self._cache).tolist()
        rows = zip(self._rows, tokens, strict=True)
        keep = [n for n, (row, token) in enumerate(rows) if not self._take(row, token)]
        if not keep:
            self._reset()
            return
        self._mask, self._last = mask, torch.tensor(tokens, device=mask.device).view(-1, 1)
        if len(keep) < len(self._rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep these rows; drop the left-padding columns no remaining row needs."""
        assert self._cache is not None and self._mask is not None and self._last is not None
        index = torch.tensor(keep, device=self._mask.device)
        self._rows = [self._rows[n] for n in keep]
        self._mask, self._last = self._mask[index], self._last[index]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def all_done(flags: Iterable[threading.Event]) -> Callable[[], bool]:
    """A predicate for `GenerationScheduler.wait`: every event is set."""
    events = list(flags)
    return lambda: all(e.is_set() for e in events)

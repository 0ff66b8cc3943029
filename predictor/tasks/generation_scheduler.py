"""Continuous batching of greedy generations: one decoding loop, requests join and leave between steps.

transformers' own continuous batching (`generate_batch`, `ContinuousBatchingManager`) runs its own
thread, switches the shared model to paged attention and has no stop strings, so it is not used here;
this loop keeps the model as it is and decodes a left-padded batch with a DynamicCache, as generate() does
(its layers keep spare room, so a step writes in place: see _SlotLayer).
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class SchedulesGenerations(Protocol):
    """A task whose greedy generations a GenerationScheduler decodes (text_generation): what the handler
    reaches for through `schedules`, `submit_generation` and `drive_generation`."""

    scheduler: GenerationScheduler | None  # None when the model's cache cannot be batched

    def schedules(self, instance: Instance) -> bool:
        """True when the scheduler decodes this request."""
        ...

    def submit(self, instance: Instance, emit: Callable[[Any], None], *, stream: bool,
               enc: Encoded | None = None) -> None:
        """Queue a request the scheduler decodes; `emit` gets its answer or its chunks, or an exception."""
        ...


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
    prefills the requests that arrived in one left-padded pass, joins them to the running batch (left
    padding; the cache's storage keeps spare rows and columns, see _SlotLayer), then decodes one token
    for every row.
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
        """Admit what arrived (one prefill pass for all of them), then decode one token for every row."""
        with self._lock:
            room = max(0, self.max_rows - len(self._rows))
            arrived, self._pending = self._pending[:room], self._pending[room:]
        with torch.inference_mode():
            if arrived:
                self._admit_all(arrived)
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

    def _admit_all(self, arrived: list[_Row]) -> None:
        """Encode and prefill the arrivals together (left padded, as generate() batches prompts); when
        that pass fails, each is prefilled alone so that only a request at fault gets its error."""
        ready = []
        for row in arrived:
            try:
                if row.enc is None:
                    row.enc = self.encode([row.instance])[0]
                row.listener.started(row.enc)
                ready.append(row)
            except Exception as exc:  # this request's error; the others go on
                row.listener.failed(exc)
        groups = [ready] if ready else []
        if len(ready) > 1:
            try:
                self._prefill(ready)
                return
            except NotBatchableError as exc:
                for row in ready:
                    row.listener.failed(exc)
                return
            except Exception as exc:
                logger.warning("a batched prefill failed (%s); prefilling its %d requests one by one", exc,
                               len(ready))
                groups = [[row] for row in ready]
        for group in groups:
            try:
                self._prefill(group)
            except Exception as exc:
                group[0].listener.failed(exc)

    def _prefill(self, rows: list[_Row]) -> None:
        """One forward pass over the rows' prompts; then (no exception past this point is the rows'
        fault) their first tokens, and the rows that go on join the batch."""
        prompts = [row.enc.rows[0]["input_ids"] for row in rows if row.enc is not None]
        width = max(len(ids) for ids in prompts)
        device = self.model.device
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        cache = DynamicCache(config=self.model.config)
        tokens = self._forward(ids, mask, cache)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            layer = type(cache.layers[0]).__name__
            raise NotBatchableError(f"{type(self.model).__name__}: cache layers {layer}")
        keep: list[int] = []
        try:
            keep = [n for n, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True))
                    if not self._take(row, token)]
            if keep:
                self._join([rows[n] for n in keep], cache, mask, tokens.view(-1, 1), keep)
        except Exception as exc:  # the batch's state is unknown: every row gets the error
            running = {id(row) for row in self._rows}
            failed = self._rows + [rows[n] for n in keep if id(rows[n]) not in running]
            self._reset()
            for row in failed:
                row.listener.failed(exc)

    def _take(self, row: _Row, token: int) -> bool:
        """Record a row's new token; True (and the row told) when it has finished or was given up."""
        row.new_ids.append(token)
        row.listener.token(token)
        finish = self.is_finished(row) or ("length" if row.instance.cancelled else None)
        if finish is None:
            return False
        row.listener.finished(row.new_ids, finish)
        return True

    def _join(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor, last: torch.Tensor,
              keep: list[int]) -> None:
        """Append the kept rows of a prefill to the running batch (both left padded to the longer)."""
        if len(keep) < mask.shape[0]:
            index = torch.tensor(keep, device=mask.device)
            mask, last = mask[index], last[index]
        else:
            index = None
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        mask = mask[:, start:]
        if self._cache is None or self._mask is None or self._last is None:
            self._cache = DynamicCache(config=self.model.config)
            self._cache.layers = [_SlotLayer() for _ in cache.layers]
            self._mask, self._last = mask[:0, :0], last[:0]
        pad = ~mask.bool()[:, None, :, None]  # padded prompt positions hold what a fully masked query made
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            keys, values = theirs.keys[:, :, start:], theirs.values[:, :, start:]
            if index is not None:
                keys, values = keys[index], values[index]
            mine.join(keys.masked_fill(pad, 0), values.masked_fill(pad, 0))
        length = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_left_pad(self._mask, length, 1), _left_pad(mask, length, 1)])
        self._last = torch.cat([self._last, last])
        self._rows.extend(rows)

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
        """Keep these rows (the last ones move into the places of those that left, so only they are
        copied); drop the left-padding columns no remaining row needs."""
        assert self._cache is not None and self._mask is not None and self._last is not None
        count, kept = len(keep), set(keep)
        holes = [n for n in range(count) if n not in kept]
        movers = [n for n in keep if n >= count]
        order = list(range(count))
        for hole, mover in zip(holes, movers, strict=True):
            order[hole] = mover
        index = torch.tensor(order, device=self._mask.device)
        self._rows = [self._rows[n] for n in order]
        self._mask, self._last = self._mask[index], self._last[index]
        used = self._mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.leave(holes, movers, count, start)


ROW_ROOM, COLUMN_ROOM = 4, 32  # the least spare rows and columns a relayout leaves


def _room(used: int, least: int) -> int:
    """Storage for `used` rows or columns: a quarter more, at least `least` more, rounded up to `least`
    (few distinct sizes, so the allocator can reuse what a previous relayout freed)."""
    wanted = used + max(least, used // 4)
    return -(-wanted // least) * least


class _SlotLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of storage with room for more rows and columns.

    A decoding step writes its column in place where DynamicLayer.update concatenates the whole cache;
    rows join into spare rows, leave by having the last rows moved into their places, and left padding
    that no row needs is dropped by moving the view's first column. Storage is what is used plus a
    quarter (_room), so copies are amortised and a batch that never empties holds at most about 1.6x
    its cache; it shrinks when most rows have left. Hand-written: transformers' StaticLayer preallocates but attends over its
    whole length and fixes the batch size.
    """

    def __init__(self) -> None:
        super().__init__()
        self._k = self._v = torch.empty(0)
        self.rows = self.start = self.end = 0  # keys/values are _k[:rows, :, start:end]

    def _view(self) -> None:
        self.keys = self._k[:self.rows, :, self.start:self.end]
        self.values = self._v[:self.rows, :, self.start:self.end]

    def _relayout(self, rows: int, columns: int, left: int) -> None:
        """New storage of `rows` x `columns`; the used block copied to begin at column `left`."""
        length = self.end - self.start
        k = self._k.new_zeros(rows, self._k.shape[1], columns, self._k.shape[3])
        v = self._v.new_zeros(rows, self._v.shape[1], columns, self._v.shape[3])
        if self.rows:
            k[:self.rows, :, left:left + length] = self.keys
            v[:self.rows, :, left:left + length] = self.values
        self._k, self._v, self.start, self.end = k, v, left, left + length
        self._view()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new columns in place (growing the storage when full); the filled columns."""
        added = key_states.shape[-2]
        if self.end + added > self._k.shape[2]:
            self._relayout(_room(self.rows, ROW_ROOM), _room(self.end - self.start + added, COLUMN_ROOM), 0)
        self._k[:self.rows, :, self.end:self.end + added] = key_states
        self._v[:self.rows, :, self.end:self.end + added] = value_states
        self.end += added
        self._view()
        return self.keys, self.values

    def join(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append rows (left padded, padding zero); the shorter side gets zero columns on its left."""
        if not self.is_initialized:
            self._k = keys.new_zeros(0, keys.shape[1], 0, keys.shape[3])
            self._v = values.new_zeros(0, values.shape[1], 0, values.shape[3])
            self.device, self.is_initialized = keys.device, True
        added, length, theirs = keys.shape[0], self.end - self.start, keys.shape[2]
        width = max(length, theirs)
        wider = width - length
        if self.rows + added > self._k.shape[0] or wider > self.start:
            self._relayout(_room(self.rows + added, ROW_ROOM), _room(width, COLUMN_ROOM), wider)
        if wider:
            self._k[:self.rows, :, self.start - wider:self.start] = 0
            self._v[:self.rows, :, self.start - wider:self.start] = 0
            self.start -= wider
        new = slice(self.rows, self.rows + added)
        self._k[new, :, self.start:self.end - theirs] = 0
        self._v[new, :, self.start:self.end - theirs] = 0
        self._k[new, :, self.end - theirs:self.end] = keys
        self._v[new, :, self.end - theirs:self.end] = values
        self.rows += added
        self._view()

    def leave(self, holes: list[int], movers: list[int], rows: int, trim: int) -> None:
        """Rows `movers` move to `holes`; `rows` remain; the first `trim` columns are dropped."""
        if holes:
            to = torch.tensor(holes, device=self._k.device)
            source = torch.tensor(movers, device=self._k.device)
            self._k[to, :, self.start:self.end] = self._k[source, :, self.start:self.end]
            self._v[to, :, self.start:self.end] = self._v[source, :, self.start:self.end]
        self.rows, self.start = rows, self.start + trim
        self._view()
        if self._k.shape[0] > 2 * _room(rows, ROW_ROOM):  # most rows have left: give the memory back
            self._relayout(_room(rows, ROW_ROOM), _room(self.end - self.start, COLUMN_ROOM), 0)


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

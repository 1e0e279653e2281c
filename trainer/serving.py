"""The model side of `brightrun serve`: one worker thread, a bounded queue, batched decoding.

Requests wait in a bounded queue; the worker takes the oldest and gathers the others waiting
for the same adapter (up to `max_batch`) into one left-padded batch, then decodes it token by
token with the KV cache, greedy or sampled per row. Each row stops on its own (end of turn, a
stop string, `max_new_tokens`, or its client cancelling), and a cancelled row is dropped at
the next token, so a client that goes away never keeps the model busy.

Several adapters of one base live in one PEFT model (`load_adapter(adapter_name=...)`); a batch
runs one adapter (`set_adapter`), so requests for different adapters are never mixed.

No HTTP here (cli/serve_openai.py); events go to a callback the caller supplies, from the
worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from brightrun.errors import BrightrunError, InputError
from trainer.inference import (
    ChatModel,
    Generation,
    GenerationOptions,
    Message,
    stop_token_ids,
    validate_messages,
)

log = logging.getLogger("brightrun.serving")

Event = str | Generation | BaseException
"""What a request's callback receives: text pieces, then its `Generation`, or the error."""


class QueueFull(BrightrunError):
    """The queue holds `queue_size` requests already: the client should retry later."""


class ContextTooLong(InputError):
    """The prompt plus `max_tokens` does not fit the model's context."""


@dataclass(frozen=True)
class ServedModel:
    """One name the server answers to: an adapter of the loaded base (or the model itself)."""

    name: str  # the `model` a request sends; the first of `names`
    tokenizer: Any  # the adapter's own copy, with the chat template it trained with
    adapter: str | None = None  # PEFT adapter name; None: the model as loaded (one adapter or merged)
    aliases: tuple[str, ...] = ()  # other names accepted for it (the artifact id, the ref given)


@dataclass
class Ticket:
    """One request in the engine; `cancel()` from any thread stops it at the next token."""

    served: ServedModel
    prompt: list[int]
    options: GenerationOptions
    emit: Callable[[Event], None]
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    done: bool = False
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def context_length(model: Any) -> int | None:
    return int(getattr(model.config, "max_position_embeddings", 0) or 0) or None


class BatchingEngine:
    """The loaded model, the names it serves, and the worker that runs every request."""

    def __init__(
        self,
        model: Any,
        served: Sequence[ServedModel],
        *,
        queue_size: int = 64,
        max_batch: int = 8,
        dev: torch.device | None = None,
    ) -> None:
        if not served:
            raise InputError("nothing to serve: give at least one adapter")
        self.model = model
        self.served = list(served)
        self.device = dev or next(model.parameters()).device
        self.queue_size = queue_size
        self.max_batch = max_batch
        self.context = context_length(model)
        tokenizer = self.served[0].tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._by_name: dict[str, ServedModel] = {}
        for s in self.served:
            for n in (s.name, *s.aliases):
                self._by_name.setdefault(n, s)
        self._stops = {id(s): stop_token_ids(s.tokenizer) for s in self.served}
        self._queue: deque[Ticket] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Observed by tests and the benchmark: what the worker actually did.
        self.batch_sizes: list[int] = []
        self.cancelled_seen = 0

    # ------------------------------------------------------------ requests

    def lookup(self, name: str) -> ServedModel | None:
        return self._by_name.get(name)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def prompt_ids(
        self, served: ServedModel, messages: Sequence[Message], max_new_tokens: int | None
    ) -> tuple[list[int], int]:
        """The rendered prompt and the reply length; over the context → `ContextTooLong`.

        `max_new_tokens=None` (the client gave none): what is left of the context, at most
        256. The prompt is never cut: a reply to half a conversation answers someone else.
        """
        text = served.tokenizer.apply_chat_template(
            validate_messages(messages), tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = served.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.context is None:
            return ids, max_new_tokens or 256
        room = self.context - len(ids)
        if max_new_tokens is None:
            max_new_tokens = min(256, room)
        if max_new_tokens < 1 or len(ids) + max_new_tokens > self.context:
            raise ContextTooLong(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({max_new_tokens}) is over the "
                f"model's context length of {self.context} tokens; shorten the conversation or "
                f"ask for at most {max(room, 0)} tokens"
            )
        return ids, max_new_tokens

    def submit(
        self,
        served: ServedModel,
        prompt: list[int],
        options: GenerationOptions,
        emit: Callable[[Event], None],
    ) -> Ticket:
        ticket = Ticket(served, prompt, options, emit)
        with self._ready:
            if len(self._queue) >= self.queue_size:
                raise QueueFull(f"the server's queue is full ({self.queue_size} requests waiting)")
            self._queue.append(ticket)
            self._ready.notify()
        return ticket

    # ------------------------------------------------------------ the worker

    def start(self) -> BatchingEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="brightrun-serve", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._ready:
            self._stopping = True
            for t in self._queue:
                t.cancel()
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _take_batch(self) -> list[Ticket]:
        """The oldest request and the others waiting for the same adapter (cancelled ones
        dropped here, so they never reach the model)."""
        with self._ready:
            while not self._stopping:
                while self._queue and self._queue[0].cancelled:
                    self._queue.popleft()
                    self.cancelled_seen += 1
                if self._queue:
                    break
                self._ready.wait()
            if self._stopping:
                return []
            first = self._queue.popleft()
            batch, rest = [first], deque[Ticket]()
            while self._queue:
                t = self._queue.popleft()
                if t.cancelled:
                    self.cancelled_seen += 1
                elif len(batch) < self.max_batch and t.served is first.served:
                    batch.append(t)
                else:
                    rest.append(t)
            self._queue.extendleft(reversed(rest))
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            self.batch_sizes.append(len(batch))
            try:
                self._run(batch)
            except BaseException as exc:  # every waiting client hears of it; the worker lives on
                log.exception("generation failed")
                for t in batch:
                    if not t.done:
                        t.done = True
                        t.emit(BrightrunError(f"generation failed: {exc}"))

    @torch.no_grad()
    def _run(self, batch: list[Ticket]) -> None:
        served = batch[0].served
        if served.adapter is not None:
            self.model.set_adapter(served.adapter)
        stops = self._stops[id(served)]
        width = max(len(t.prompt) for t in batch)
        ids = [[self.pad_id] * (width - len(t.prompt)) + t.prompt for t in batch]
        mask = [[0] * (width - len(t.prompt)) + [1] * len(t.prompt) for t in batch]
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention = torch.tensor(mask, dtype=torch.long, device=self.device)
        # Left padding: positions count real tokens only, so a padded row sees what it would alone.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True
        )
        generators = [self._generator(t.options) for t in batch]
        while True:
            logits = out.logits[:, -1, :].float()
            nxt: list[int] = []
            for row, t in enumerate(batch):
                if not t.done and t.cancelled:
                    t.done = True
                    self.cancelled_seen += 1
                if t.done:
                    nxt.append(self.pad_id)
                    continue
                token = _choose(logits[row], t.options, generators[row])
                t.generated.append(token)
                self._step(t, token, stops)
                nxt.append(token)
            if all(t.done for t in batch):
                return
            live = torch.tensor([[0 if t.done else 1] for t in batch], dtype=torch.long, device=self.device)
            attention = torch.cat([attention, live], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=torch.tensor([[n] for n in nxt], dtype=torch.long, device=self.device),
                attention_mask=attention,
                position_ids=positions,
                cache=out.cache,  # transformers 5: `past_key_values` is deprecated
                use_cache=True,
            )

    def _generator(self, options: GenerationOptions) -> torch.Generator | None:
        if options.temperature <= 0:
            return None
        g = torch.Generator(device=self.device)
        if options.seed is not None:
            g.manual_seed(options.seed)
        else:
            g.seed()
        return g

    def _step(self, t: Ticket, token: int, stops: list[int]) -> None:
        """After one token: send the new text, and finish the row when it is done."""
        stopped = token in stops
        text = t.served.tokenizer.decode(t.generated, skip_special_tokens=True)
        cut = cut_at_stop(text, t.options.stop)
        if cut is not None:
            text, stopped = text[:cut], True
        full = len(t.generated) >= t.options.max_new_tokens
        finished = stopped or full
        # Hold back what could still become a stop string, and half a multi-byte character.
        hold = 0 if finished else max((len(s) - 1 for s in t.options.stop), default=0)
        upto = len(text) - hold
        if not finished and text.endswith("\ufffd"):
            upto = min(upto, len(text) - 1)
        if upto > t.sent_chars:
            t.emit(text[t.sent_chars : upto])
            t.sent_chars = upto
        if finished:
            t.done = True
            t.emit(
                Generation(
                    text=text.strip(),
                    tokens=list(t.generated),
                    prompt_tokens=len(t.prompt),
                    finish_reason="stop" if stopped else "length",
                )
            )


def _choose(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
    """Greedy (temperature 0) or nucleus sampling, for one row."""
    if generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < options.top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def engine_from_chat(chat: ChatModel, names: Sequence[str], **kwargs: Any) -> BatchingEngine:
    """An engine over an already loaded `ChatModel` (one adapter or a merged model), answering
    to `names` (the first is the one listed)."""
    accepted = list(dict.fromkeys(n for n in names if n))
    served = ServedModel(accepted[0], chat.tokenizer, None, tuple(accepted[1:]))
    return BatchingEngine(chat.model, [served], dev=chat.device, **kwargs)

"""Talking to an adapter: base model + LoRA loading, chat generation, held-out losses, merge.

The torch side of issue 14. The CLI, the OpenAI-compatible server and the evaluation stage
import this lazily (the orchestrator must import without torch). Never imports Prefect.

Loading is the trainer's own (trainer/model.py): the same base model and revision, the
same 4-bit NF4 settings when the job trained on 4-bit weights, and the same CPU weight
layout, so replies and losses here are the ones the trainer measured. The
tokenizer and chat template are the adapter's own copies (saved beside it by the trainer),
so a prompt is rendered exactly as the training data was.

Merging is the exception: it needs the base in full precision (merging into 4-bit weights
would round the LoRA update away), so `merge_adapter` always loads the plain checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from brightrun.base_model import BaseModelSpec
from brightrun.errors import BrightrunError, InputError
from brightrun.prepared import IGNORE_INDEX, PreparedExample
from trainer.evaluate import perplexity
from trainer.model import (
    BaseModelMismatch,
    attach_adapter,
    device,
    load_base,
    load_tokenizer,
)

log = logging.getLogger("brightrun.inference")

Message = Mapping[str, str]

# Loading lives in trainer/model.py; these names stay importable from here for the callers.
__all__ = [
    "BaseModelMismatch",
    "BaseModelSpec",
    "ChatModel",
    "ExampleLoss",
    "Generation",
    "GenerationOptions",
    "attach_adapter",
    "device",
    "example_losses",
    "load_base",
    "load_chat_model",
    "load_merged_model",
    "load_tokenizer",
    "mean_loss",
    "merge_adapter",
    "perplexity",
    "stop_token_ids",
    "validate_messages",
]


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy (deterministic)
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the reply ends before the first of these strings (serve only)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InputError(f"temperature must be between 0 and 5, not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], not {self.top_p}")


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: list[int]  # the generated token ids (no prompt)
    prompt_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length"


def validate_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Chat messages as the template expects them; every problem named at once."""
    problems = []
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            problems.append(f"messages[{i}].role: {role!r} is not system, user or assistant")
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content: must be a string")
        out.append({"role": str(role), "content": content if isinstance(content, str) else ""})
    if not out:
        problems.append("messages: at least one message is needed")
    elif out[-1]["role"] != "user":
        problems.append("messages: the last message must be the user's")
    if problems:
        raise InputError("the conversation cannot be sent to the model", problems)
    return out


class ChatModel:
    """Base + adapter (or a merged model), its tokenizer and chat template, one lock.

    One generation at a time: a model is not safe to run from several threads at once.
    (`generate` and `chat` use this; `serve` runs its own single worker, trainer/serving.py.)
    """

    def __init__(self, model: Any, tokenizer: Any, name: str, dev: torch.device | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = dev or device()
        self.lock = threading.Lock()
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.stop_ids = stop_token_ids(tokenizer)

    def prompt_ids(self, messages: Sequence[Message], max_new_tokens: int) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            validate_messages(messages), tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.max_length and len(ids) + max_new_tokens > self.max_length:
            # Refused, never cut: a reply to the last few tokens ignores what the user said.
            raise InputError(
                f"the prompt ({len(ids)} tokens) plus max_new_tokens ({max_new_tokens}) is over the "
                f"model's context length of {self.max_length} tokens; shorten the conversation or "
                f"ask for at most {max(self.max_length - len(ids), 0)} tokens"
            )
        return ids

    def _generate_kwargs(self, ids: list[int], options: GenerationOptions) -> dict[str, Any]:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": options.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.stop_ids,
        }
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _finish(self, ids: list[int], generated: list[int], options: GenerationOptions) -> Generation:
        stopped = bool(generated) and generated[-1] in self.stop_ids
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return Generation(
            text=text.strip(),
            tokens=generated,
            prompt_tokens=len(ids),
            finish_reason="stop" if stopped or len(generated) < options.max_new_tokens else "length",
        )

    @torch.no_grad()
    def generate(self, messages: Sequence[Message], options: GenerationOptions | None = None) -> Generation:
        options = options or GenerationOptions()
        ids = self.prompt_ids(messages, options.max_new_tokens)
        with self.lock:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            output = self.model.generate(**self._generate_kwargs(ids, options))
        return self._finish(ids, output[0, len(ids) :].tolist(), options)

    def stream(
        self, messages: Sequence[Message], options: GenerationOptions | None = None
    ) -> Iterator[str | Generation]:
        """Text pieces as they are generated, then the whole `Generation` last.

        A reader that stops early (Ctrl-C in `chat`, a client gone from `serve`) stops the
        generation at its next token and waits for its thread: a generation thread still
        inside torch at interpreter exit aborts the process ("terminate called without an
        active exception", exit 134)."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        options = options or GenerationOptions()
        ids = self.prompt_ids(messages, options.max_new_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}
        abandoned = threading.Event()

        class ReaderGone(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), abandoned.is_set(), dtype=torch.bool, device=input_ids.device
                )

        def run() -> None:
            try:
                with self.lock, torch.no_grad():
                    if options.seed is not None:
                        torch.manual_seed(options.seed)
                    out = self.model.generate(
                        **self._generate_kwargs(ids, options),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([ReaderGone()]),
                    )
                result["tokens"] = out[0, len(ids) :].tolist()
            except BaseException as exc:  # surfaced to the reader below
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, name="brightrun-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            if thread.is_alive():
                abandoned.set()  # a no-op for a generation that ended on its own
            thread.join()
        if "error" in result:
            raise BrightrunError(f"generation failed: {result['error']}") from result["error"]
        yield self._finish(ids, result["tokens"], options)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End of turn and end of text: a chat reply stops at either."""
    ids = []
    for token in (tokenizer.eos_token, "<|eot_id|>", "<|end_of_text|>"):
        if token is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def load_chat_model(base: BaseModelSpec, adapter_dir: Path | None, name: str) -> ChatModel:
    """Base + adapter as trained; `adapter_dir=None` is the base model alone. The tokenizer
    (with the chat template the adapter was trained with) comes from the adapter."""
    dev = device()
    tokenizer = load_tokenizer(adapter_dir or base.name, None if adapter_dir else base.revision)
    model = load_base(base, dev)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir)
    return ChatModel(model, tokenizer, name, dev)


def load_merged_model(directory: Path, name: str) -> ChatModel:
    dev = device()
    tokenizer = load_tokenizer(directory)
    model = load_base(BaseModelSpec(str(directory)), dev)
    return ChatModel(model, tokenizer, name, dev)


# ---------------------------------------------------------------- held-out losses


@dataclass(frozen=True)
class ExampleLoss:
    conversation_id: str
    loss_sum: float  # summed next-token cross-entropy over trained tokens
    tokens: int  # trained tokens


def _examples_for_eval(examples: Sequence[PreparedExample], max_length: int | None) -> list[PreparedExample]:
    out = []
    for e in examples:
        if len(e.input_ids) != len(e.labels):
            raise InputError(
                f"eval set: an example of conversation {e.conversation_id} has {len(e.input_ids)} "
                f"input ids but {len(e.labels)} labels"
            )
        if max_length and len(e.input_ids) > max_length:
            e = e.model_copy(update={"input_ids": e.input_ids[:max_length], "labels": e.labels[:max_length]})
        out.append(e)
    return out


@torch.no_grad()
def example_losses(
    model: Any,
    examples: Sequence[PreparedExample],
    pad_token_id: int,
    *,
    batch_size: int = 4,
    max_length: int | None = None,
    dev: torch.device | None = None,
) -> list[ExampleLoss]:
    """Per-example summed loss on trained tokens (labels != -100), in fp32, in input order.

    The same loss the trainer reports (trainer/evaluate.py), kept per example so two models
    can be compared conversation by conversation.
    """
    dev = dev or device()
    items = _examples_for_eval(examples, max_length)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    results: dict[int, ExampleLoss] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(items[i].input_ids) for i in chunk)
        ids = [items[i].input_ids + [pad_token_id] * (width - len(items[i].input_ids)) for i in chunk]
        labels = [items[i].labels + [IGNORE_INDEX] * (width - len(items[i].labels)) for i in chunk]
        mask = [[1] * len(items[i].input_ids) + [0] * (width - len(items[i].input_ids)) for i in chunk]
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        label_t = torch.tensor(labels, dtype=torch.long, device=dev)
        logits = (
            model(
                input_ids=input_ids,
                attention_mask=torch.tensor(mask, dtype=torch.long, device=dev),
                use_cache=False,
            )
            .logits[:, :-1, :]
            .float()
        )
        target = label_t[:, 1:]
        losses = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(target.shape)
        trained = (target != IGNORE_INDEX).sum(dim=1)
        for row, i in enumerate(chunk):
            results[i] = ExampleLoss(items[i].conversation_id, float(losses[row].sum()), int(trained[row]))
    return [results[i] for i in range(len(items))]


def mean_loss(losses: Sequence[ExampleLoss]) -> float:
    tokens = sum(x.tokens for x in losses)
    return sum(x.loss_sum for x in losses) / tokens if tokens else float("nan")


# ---------------------------------------------------------------- merge


def merge_adapter(
    base: BaseModelSpec,
    adapter_dir: Path,
    out_dir: Path,
    *,
    dtype: str = "auto",
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """The adapter merged into the full-precision base, saved as a plain transformers model.

    `out_dir` gets safetensors weights, config, generation config, the adapter's tokenizer
    and chat template. Written to a temp dir beside it and renamed, so a failed merge leaves
    nothing at `out_dir`. `dtype`: `auto` keeps the base checkpoint's own dtype.
    """
    say = on_progress or log.info
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} exists and is not empty; choose a new --out directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        say(f"loading {base.name} in full precision")
        model = load_base(base.full_precision(), torch.device("cpu"), dtype=dtype)
        model = attach_adapter(model, adapter_dir)
        say("merging the adapter into the base weights")
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer = load_tokenizer(adapter_dir)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"merged model written to {out_dir}")
    return out_dir

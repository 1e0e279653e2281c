"""Turn validated conversations into token sequences with an assistant-only loss mask.

Pure logic (DESIGN.md section 5), no Prefect and no torch; the tokenizer is any
Hugging Face tokenizer passed in by the caller.

Merging rule. Pair k's `conversation_history` should equal the earlier pairs'
(`current_user_input`, assistant reply) turns. Pairs are walked in turn order and
appended to one *run* [system, user1, assistant1, user2, ...] while that holds; a
pair whose history or system prompt disagrees closes the run and opens a new one
seeded with its own history as context. So a consistent conversation becomes
one sequence, and a conversation with a disagreement splits into consistent runs
(never worse than one example per pair, and every kept target keeps exactly the
history the file gave it). A null target is context whose text is not known yet:
the next pair's history supplies it; below-threshold targets are context too.

Masking. Each trained assistant turn's character span is found by rendering the
chat template for the prefix with the generation prompt and for the prefix plus
the turn: the difference is the reply and whatever the template emits to close
the turn (`<|eot_id|>` for Llama 3, `<|im_end|>` for ChatML), never the next
header. Tokens whose offsets overlap a span are trained; nothing depends on a
particular tokenizer's ids.

Over-long runs are cut into windows: each window is the system prompt plus a
contiguous slice ending on a trained reply, later targets packed in while they
fit, then older history added back while it fits. A target that does not fit
with only the system prompt and its user turn cannot be trained at all.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from brightrun.errors import BrightrunError
from brightrun.prepared import IGNORE_INDEX
from tasks.dataset.schema import Conversation, TrainingPair


@dataclass
class Msg:
    role: str
    # None: an assistant reply whose text the file has not told us yet (null target).
    content: str | None
    pair_id: str | None = None
    trained: bool = False


@dataclass
class CandidateSequence:
    """One consistent run of a conversation's pairs (the same system prompt, each pair's
    history extending the last): the messages of one candidate training sequence. Named
    apart from the trainer's `Run`, a training run."""

    conversation_id: str
    system: str
    messages: list[Msg] = field(default_factory=list)

    def trained_pairs(self) -> list[str]:
        return [m.pair_id for m in self.messages if m.trained and m.pair_id is not None]


@dataclass
class Mismatch:
    conversation_id: str
    pair: str
    field: str

    def __str__(self) -> str:
        return f"conversation {self.conversation_id}, pair {self.pair}, field {self.field}"


@dataclass
class ConversionStats:
    kept_targets: int = 0
    skipped: dict[str, int] = field(
        default_factory=lambda: {"null_target": 0, "below_min_quality": 0, "too_long": 0}
    )
    quality_histogram: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    mismatch_examples: list[str] = field(default_factory=list)
    merged_conversations: int = 0
    split_conversations: int = 0


def _score_key(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else f"{score:g}"


def _history_matches(run: CandidateSequence, pair: TrainingPair) -> bool:
    history = pair.conversation_history
    if pair.system_prompt != run.system or len(history) != len(run.messages):
        return False
    for turn, msg in zip(history, run.messages, strict=True):
        if turn.role != msg.role:
            return False
        if msg.content is not None and msg.content != turn.content:
            return False
    return True


def _fill_pending(run: CandidateSequence, pair: TrainingPair) -> None:
    for turn, msg in zip(pair.conversation_history, run.messages, strict=True):
        if msg.content is None:
            msg.content = turn.content


def _close(run: CandidateSequence) -> CandidateSequence | None:
    """Drop the untrained tail (nothing learns from it); None when nothing is trained."""
    last = max((i for i, m in enumerate(run.messages) if m.trained), default=-1)
    if last < 0:
        return None
    run.messages = run.messages[: last + 1]
    return run


def build_runs(
    conversation: Conversation, min_quality: float, stats: ConversionStats
) -> list[CandidateSequence]:
    """Consistent runs of one conversation, each a candidate training sequence."""
    cid = conversation.conversation_id
    runs: list[CandidateSequence] = []
    run: CandidateSequence | None = None
    for index, pair in enumerate(conversation.training_pairs):
        score = pair.training_metadata.quality_score
        key = _score_key(score)
        stats.quality_histogram[key] = stats.quality_histogram.get(key, 0) + 1
        if run is not None and _history_matches(run, pair):
            _fill_pending(run, pair)
        else:
            if run is not None:
                stats.mismatches += 1
                field_name = "system_prompt" if pair.system_prompt != run.system else "conversation_history"
                if len(stats.mismatch_examples) < 20:
                    stats.mismatch_examples.append(
                        str(Mismatch(cid, f"{pair.id} (#{index}) turn {pair.turn_number}", field_name))
                    )
                closed = _close(run)
                if closed is not None:
                    runs.append(closed)
            run = CandidateSequence(
                cid, pair.system_prompt, [Msg(t.role, t.content) for t in pair.conversation_history]
            )
        run.messages.append(Msg("user", pair.current_user_input))
        target = pair.target_response
        if target is None:
            stats.skipped["null_target"] += 1
            run.messages.append(Msg("assistant", None, pair.id, trained=False))
        elif score < min_quality:
            stats.skipped["below_min_quality"] += 1
            run.messages.append(Msg("assistant", target, pair.id, trained=False))
        else:
            stats.kept_targets += 1
            run.messages.append(Msg("assistant", target, pair.id, trained=True))
    if run is not None:
        closed = _close(run)
        if closed is not None:
            runs.append(closed)
    if len(runs) == 1:
        stats.merged_conversations += 1
    elif len(runs) > 1:
        stats.split_conversations += 1
    return runs


class TemplateError(BrightrunError):
    """The tokenizer's chat template cannot be used to locate assistant turns."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pair_ids: list[str]


class ChatEncoder:
    """Render with the tokenizer's own chat template and mask everything but trained replies."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError(
                f"{type(tokenizer).__name__} is a slow tokenizer; the dataset stage needs a fast "
                "(tokenizers-backed) one for character offsets. Save the model's tokenizer.json."
            )
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat template; use the base model's tokenizer (e.g. a Llama 3 "
                "Instruct tokenizer) or set tokenizer.chat_template"
            )
        self.tokenizer = tokenizer
        self._fast_render = self._compile_fast_render()
        self._base: str | None = None
        self._generation_header = ""
        self._pieces: dict[tuple[str, str], str] = {}
        self._frames: dict[str, tuple[str, str, Any] | None] = {}

    def _compile_fast_render(self) -> Any:
        """The compiled Jinja template called directly, when it renders exactly as apply_chat_template.

        apply_chat_template copies and sanitizes every message on every call; masking renders
        each prefix of a conversation, so that copying would dominate preparation. The fast path
        is only used after it reproduced apply_chat_template on a probe conversation.
        """
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            template = _compile_jinja_template(self.tokenizer.get_chat_template())
            extras = {k: v for k, v in self.tokenizer.special_tokens_map.items() if isinstance(v, str)}

            def render(chat: list[dict[str, str]], add_generation_prompt: bool) -> str:
                return template.render(
                    messages=chat,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **extras,
                )

            probe = [
                {"role": "system", "content": "Probe system. "},
                {"role": "user", "content": " Probe question?"},
                {"role": "assistant", "content": "Probe answer.\n"},
                {"role": "user", "content": "Again?"},
            ]
            for n in (2, 3, 4):
                for gen in (False, True):
                    slow = self.tokenizer.apply_chat_template(
                        probe[:n], tokenize=False, add_generation_prompt=gen
                    )
                    if render(probe[:n], gen) != slow:
                        return None
            return render
        except Exception:  # private API moved or template needs more context: use the public path
            return None

    @staticmethod
    def _messages(system: str, msgs: Sequence[Msg]) -> list[dict[str, str]]:
        out = [{"role": "system", "content": system}] if system else []
        out.extend({"role": m.role, "content": m.content or ""} for m in msgs)
        return out

    def render(self, system: str, msgs: Sequence[Msg], *, add_generation_prompt: bool = False) -> str:
        return self._render_many([self._messages(system, msgs)], add_generation_prompt=add_generation_prompt)[
            0
        ]

    def _render_many(self, chats: list[list[dict[str, str]]], *, add_generation_prompt: bool) -> list[str]:
        if not chats:
            return []
        if self._fast_render is not None:
            return [self._fast_render(chat, add_generation_prompt) for chat in chats]
        # One batched call: the per-call overhead of apply_chat_template dominates short renders.
        texts = self.tokenizer.apply_chat_template(
            chats, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return [texts] if isinstance(texts, str) else list(texts)

    def texts_and_spans(
        self, runs: Sequence[tuple[str, Sequence[Msg]]]
    ) -> list[tuple[str, list[tuple[int, int]]]]:
        """Rendered text of each run and the character spans of its trained replies.

        Each run is rendered one message at a time when the template is additive for it (the
        whole conversation renders as the concatenation of its messages, checked against one
        full render per run); otherwise every prefix is rendered, which costs quadratically
        in the conversation's length but makes no assumption about the template.
        """
        results: list[tuple[str, list[tuple[int, int]]] | None] = [
            (self._structural(system, msgs) or self._incremental(system, msgs))
            if self._fast_render is not None
            else None
            for system, msgs in runs
        ]
        slow = [i for i, r in enumerate(results) if r is None]
        if slow:
            for i, r in zip(slow, self._prefix_texts_and_spans([runs[i] for i in slow]), strict=True):
                results[i] = r
        return [r for r in results if r is not None]

    _MARK = "\ue000brightrun-probe\ue001"

    def _role_frame(self, role: str) -> tuple[str, str, Any] | None:
        """(text before, text after, content transform) of one `role` message, when the template
        renders a lone message as frame + transformed content + frame; None when it does not."""
        if role in self._frames:
            return self._frames[role]
        frame = None
        render = self._fast_render
        base = render([], False)
        text = render([{"role": role, "content": self._MARK}], False)
        rest = text[len(base) :] if text.startswith(base) else ""
        if rest.count(self._MARK) == 1:
            before, after = rest.split(self._MARK)
            probe = " \n Probe, with spaces. \n"
            rendered = render([{"role": role, "content": probe}], False)
            for transform in (str.strip, str):
                if rendered == base + before + transform(probe) + after:
                    frame = (before, after, transform)
                    break
        self._frames[role] = frame
        return frame

    def _structural(self, system: str, msgs: Sequence[Msg]) -> tuple[str, list[tuple[int, int]]] | None:
        """One template render per conversation: the text is assembled from each role's frame
        (found once) and must equal the template's own render of the whole conversation."""
        if self._base is None and self._incremental_setup() is None:
            return None
        chat = self._messages(system, msgs)
        pieces = []
        for message in chat:
            frame = self._role_frame(message["role"])
            if frame is None:
                return None
            before, after, transform = frame
            pieces.append(before + transform(message["content"]) + after)
        full = self._base + "".join(pieces)
        if self._fast_render(chat, False) != full:
            return None
        spans = self._spans(chat, msgs, pieces)
        return None if spans is None else (full, spans)

    def _spans(
        self, chat: list[dict[str, str]], msgs: Sequence[Msg], pieces: list[str]
    ) -> list[tuple[int, int]] | None:
        """Trained spans of an additive render: from after the generation header to the end of
        the reply's piece (its end-of-turn included); None if a reply does not open with the
        header the generation prompt adds."""
        head = len(chat) - len(msgs)
        pos = len(self._base or "") + sum(len(p) for p in pieces[:head])
        spans = []
        for msg, piece in zip(msgs, pieces[head:], strict=True):
            if msg.trained:
                if not piece.startswith(self._generation_header):
                    return None
                spans.append((pos + len(self._generation_header), pos + len(piece)))
            pos += len(piece)
        return spans

    def _incremental_setup(self) -> str | None:
        render = self._fast_render
        base = render([], False)
        with_prompt = render([], True)
        if not with_prompt.startswith(base):
            return None
        self._base, self._generation_header = base, with_prompt[len(base) :]
        return base

    def _incremental(self, system: str, msgs: Sequence[Msg]) -> tuple[str, list[tuple[int, int]]] | None:
        render = self._fast_render
        if self._base is None and self._incremental_setup() is None:
            return None
        base = self._base
        chat = self._messages(system, msgs)
        pieces = []
        for message in chat:
            key = (message["role"], message["content"])
            piece = self._pieces.get(key) if message["role"] == "system" else None
            if piece is None:
                text = render([message], False)
                if not text.startswith(base):
                    return None
                piece = text[len(base) :]
                if message["role"] == "system":
                    self._pieces[key] = piece
            pieces.append(piece)
        full = base + "".join(pieces)
        if render(chat, False) != full:
            return None
        spans = self._spans(chat, msgs, pieces)
        return None if spans is None else (full, spans)

    def _prefix_texts_and_spans(
        self, runs: Sequence[tuple[str, Sequence[Msg]]]
    ) -> list[tuple[str, list[tuple[int, int]]]]:
        fulls, prompts, uptos = [], [], []
        for system, msgs in runs:
            chat = self._messages(system, msgs)
            fulls.append(chat)
            head = len(chat) - len(msgs)  # 1 with a system prompt, else 0
            for i, msg in enumerate(msgs):
                if msg.trained:
                    prompts.append(chat[: head + i])
                    uptos.append(chat[: head + i + 1])
        full_texts = self._render_many(fulls, add_generation_prompt=False)
        prompt_texts = iter(self._render_many(prompts, add_generation_prompt=True))
        upto_texts = iter(self._render_many(uptos, add_generation_prompt=False))
        out = []
        for (_, msgs), full in zip(runs, full_texts, strict=True):
            spans: list[tuple[int, int]] = []
            for msg in msgs:
                if not msg.trained:
                    continue
                prompt, upto = next(prompt_texts), next(upto_texts)
                if upto.startswith(prompt) and full.startswith(upto):
                    spans.append((len(prompt), len(upto)))
                    continue
                # Templates that rewrite earlier turns: fall back to finding the reply's text.
                start_from = spans[-1][1] if spans else 0
                needle = (msg.content or "").strip()
                pos = full.find(needle, start_from) if needle else -1
                if pos < 0:
                    raise TemplateError(
                        f"cannot locate assistant turn of pair {msg.pair_id} in the rendered chat template"
                    )
                spans.append((pos, pos + len(needle)))
            out.append((full, spans))
        return out

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # The Rust tokenizer directly: transformers' conversion of every Encoding to Python
            # lists costs more than the tokenization itself.
            encodings = backend.encode_batch(texts, add_special_tokens=False)
            return [e.ids for e in encodings], [e.offsets for e in encodings]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenize(texts)[0]]

    @staticmethod
    def labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
        """Trained where a token's characters overlap a reply span, -100 elsewhere."""
        labels = [IGNORE_INDEX] * len(ids)
        starts = [a for a, _ in offsets]
        ends = [b for _, b in offsets]
        for start, end in spans:
            first = bisect.bisect_right(ends, start)  # first token ending after the span starts
            last = bisect.bisect_left(starts, end)  # first token starting at or after the span ends
            labels[first:last] = ids[first:last]
        return labels

    def encode_many(self, runs: Sequence[tuple[str, Sequence[Msg]]]) -> list[Encoded]:
        if not runs:
            return []
        rendered = self.texts_and_spans(runs)
        texts = [text for text, _ in rendered]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        encodings = backend.encode_batch(texts, add_special_tokens=False) if backend is not None else None
        out = []
        for i, ((_, msgs), (_, spans)) in enumerate(zip(runs, rendered, strict=True)):
            labels = None
            if encodings is not None:
                ids = encodings[i].ids
                labels = self._labels_by_char(encodings[i], ids, spans)
            if labels is None:  # no Rust encoding, or a span edge on a character no token covers
                ids_list, offsets_list = self.tokenize([texts[i]])
                ids = list(ids_list[0])
                labels = self.labels(ids, offsets_list[0], spans)
            trained_pairs = [m.pair_id for m in msgs if m.trained and m.pair_id is not None]
            out.append(Encoded(ids, labels, trained_pairs))
        return out

    @staticmethod
    def _labels_by_char(encoding: Any, ids: list[int], spans: list[tuple[int, int]]) -> list[int] | None:
        """`labels` without materializing every token's offsets (which costs more than the
        tokenization): ask the encoding for the tokens at each span's first and last character."""
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            if end <= start:
                continue
            first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
            if first is None or last is None:
                return None
            labels[first : last + 1] = ids[first : last + 1]
        return labels

    def length(self, system: str, msgs: Sequence[Msg]) -> int:
        return self.count([self.render(system, msgs)])[0]


@dataclass
class Window:
    start: int
    end: int  # inclusive, a trained assistant message


def plan_windows(
    encoder: ChatEncoder, run: CandidateSequence, max_len: int
) -> tuple[list[tuple[str, list[Msg]]], list[Msg]]:
    """Cut an over-long run into windows that fit; also return the targets that cannot fit."""
    msgs = run.messages
    targets = [i for i, m in enumerate(msgs) if m.trained]
    windows: list[tuple[str, list[Msg]]] = []
    unfit: list[Msg] = []

    def fits(start: int, end: int) -> bool:
        return encoder.length(run.system, msgs[start : end + 1]) <= max_len

    k = 0
    while k < len(targets):
        t = targets[k]
        minimal = t - 1 if t > 0 and msgs[t - 1].role != "assistant" else t
        if not fits(minimal, t):
            unfit.append(msgs[t])
            k += 1
            continue
        last = k
        while last + 1 < len(targets) and fits(minimal, targets[last + 1]):
            last += 1
        end = targets[last]
        start = minimal
        while start > 0 and fits(start - 1, end):
            start -= 1
        # Open on a user turn where possible: a window opening on a reply reads oddly to most templates.
        while start < minimal and msgs[start].role != "user":
            start += 1
        # Targets before t were trained in an earlier window: here they are history only.
        window = [
            Msg(m.role, m.content, m.pair_id, m.trained and start + j >= t)
            for j, m in enumerate(msgs[start : end + 1])
        ]
        windows.append((run.system, window))
        k = last + 1
    return windows, unfit

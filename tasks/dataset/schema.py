"""The brightrun-lora-v4 training file: schema and a streaming validator.

Pure logic, no Prefect, no torch: the export-feedback flow validates the files it
writes with `validate_dataset`, and the dataset stage streams conversations from
`DatasetScanner` so a 230 MB file never sits in memory.

Required (DESIGN.md section 5): `training_file_metadata.format_spec ==
"brightrun-lora-v4"`, a non-empty `conversations` list; per conversation
`conversation_metadata.conversation_id` (str) and `total_turns` (int >= 1), a
non-empty `training_pairs` list; per pair `id` (str), `turn_number` (int >= 1,
strictly increasing within the conversation), `system_prompt` (str),
`conversation_history` (list of `{role: system|user|assistant, content: str}`),
`current_user_input` (non-empty str), `target_response` (str or null, the key
must be present) and `training_metadata.quality_score` (number). Optional:
`consultant_profile`, `scaffolding`, `emotional_context`, `difficulty_level`,
`demonstrates_skills`. Unknown extra fields anywhere are kept, never rejected.
Types are strict: "3" is not a turn number.

Bounded: every read goes through `_bounded_events`, which refuses a file past the
`DatasetLimits` (file size, nesting depth, string length, conversations, pairs) with a
located problem before it can take the machine's memory. Nothing here recurses on the
input: a depth bomb stops at the depth limit, before the prefix strings of a deep
parse (quadratic in the depth) or a recursive validator ever see it.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import ijson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brightrun.settings import DatasetLimits

FORMAT_SPEC = "brightrun-lora-v4"
MAX_PROBLEMS_KEPT = 1000


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class Turn(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class TrainingMetadata(_Model):
    quality_score: float
    difficulty_level: str | None = None
    demonstrates_skills: list[str] = Field(default_factory=list)


class TrainingPair(_Model):
    id: str = Field(min_length=1)
    turn_number: int = Field(ge=1)
    system_prompt: str
    conversation_history: list[Turn]
    current_user_input: str = Field(min_length=1)
    emotional_context: dict[str, Any] | None = None
    # Required key, null allowed: a null target is context, never trained.
    target_response: str | None
    training_metadata: TrainingMetadata


class Scaffolding(_Model):
    persona_key: str | None = None
    emotional_arc_key: str | None = None
    training_topic_key: str | None = None


class ConversationMetadata(_Model):
    conversation_id: str = Field(min_length=1)
    total_turns: int = Field(ge=1)
    scaffolding: Scaffolding | None = None


class Conversation(_Model):
    conversation_metadata: ConversationMetadata
    training_pairs: list[TrainingPair] = Field(min_length=1)

    @property
    def conversation_id(self) -> str:
        return self.conversation_metadata.conversation_id


class FileMetadata(_Model):
    format_spec: str
    file_name: str | None = None
    version: str | None = None
    total_conversations: int | None = None
    total_training_pairs: int | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file, located as precisely as the file allows."""

    message: str
    conversation: str | None = None
    pair: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = []
        if self.conversation is not None:
            where.append(f"conversation {self.conversation}")
        if self.pair is not None:
            where.append(f"pair {self.pair}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{', '.join(where) or 'file'}: {self.message}"


@dataclass
class ValidationResult:
    path: Path
    conversations: int = 0
    pairs: int = 0
    sha256: str | None = None
    file_metadata: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def messages(self) -> list[str]:
        lines = [str(p) for p in self.problems]
        if self.problem_count > len(self.problems):
            lines.append(f"... {self.problem_count - len(self.problems)} more problems not listed")
        return lines


class _InvalidUtf8(Exception):
    def __init__(self, offset: int, line: int) -> None:
        super().__init__(f"invalid UTF-8 at byte {offset} (line {line})")
        self.offset = offset
        self.line = line


class _LimitExceeded(Exception):
    """The file is past one of the `DatasetLimits`; the message says which and where."""


def _limit_message(what: str, setting: str, limit: int, reader: _CheckedReader) -> str:
    return (
        f"{what} (near byte {reader.offset}, line {reader.lines}); the limit is "
        f"BRIGHTRUN_{setting.upper()}={limit}: the file was refused before it was read further"
    )


class _CheckedReader:
    """A binary reader that hashes and UTF-8-checks the bytes as ijson pulls them.

    Doing it inside the one parsing pass costs no extra read of a large file and
    gives the exact byte offset and line of an invalid UTF-8 sequence, which the
    JSON parser's own message does not.

    It also refuses a run of bytes without a `"` longer than a string may be, before
    the parser buffers it: the parser only hands a string over once it has all of it
    (a string full of escaped quotes passes here and is refused by its length after).
    """

    def __init__(self, raw: BinaryIO, *, hash_it: bool, limits: DatasetLimits | None = None) -> None:
        self._raw = raw
        self._digest = hashlib.sha256() if hash_it else None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0
        self.lines = 1
        self._limits = limits or DatasetLimits()
        # A character takes at most 6 bytes in JSON (a \uXXXX escape).
        self._max_gap = 6 * self._limits.max_string_chars + 16
        self._since_quote = 0

    def _check_gap(self, chunk: bytes) -> None:
        first = chunk.find(b'"')
        if (first if first >= 0 else len(chunk)) + self._since_quote > self._max_gap:
            raise _LimitExceeded(
                _limit_message(
                    f"a string or token longer than {self._limits.max_string_chars} characters",
                    "dataset_max_string_chars",
                    self._limits.max_string_chars,
                    self,
                )
            )
        last = chunk.rfind(b'"')
        self._since_quote = self._since_quote + len(chunk) if last < 0 else len(chunk) - last - 1

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self._check_gap(chunk)
        try:
            self._decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            bad = self.offset + exc.start
            raise _InvalidUtf8(bad, self.lines + chunk.count(b"\n", 0, exc.start)) from None
        if self._digest is not None:
            self._digest.update(chunk)  # the file's bytes as stored, BOM included
        first = self.offset == 0
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        if first and chunk.startswith(codecs.BOM_UTF8):
            # Editors on Windows save UTF-8 with a byte order mark; JSON allows a parser to
            # ignore it (RFC 8259 §8.1), and the JSON parser itself would call it invalid.
            return chunk[len(codecs.BOM_UTF8) :]
        return chunk

    def hexdigest(self) -> str | None:
        return self._digest.hexdigest() if self._digest is not None else None


def _depth_bounded(reader: _CheckedReader, limits: DatasetLimits) -> Iterator[tuple[str, Any]]:
    """ijson's basic events (no prefixes: constant work per event), refused past the depth
    and string limits. It must come before any prefixed parse: those build a prefix string
    per event as long as the depth, so a depth bomb costs memory in the square of its depth
    within one read buffer, before any later check could see it."""
    depth = 0
    for event, value in ijson.basic_parse(reader, use_float=True):
        if event == "start_map" or event == "start_array":
            depth += 1
            if depth > limits.max_depth:
                raise _LimitExceeded(
                    _limit_message(
                        f"nested deeper than {limits.max_depth} levels",
                        "dataset_max_depth",
                        limits.max_depth,
                        reader,
                    )
                )
        elif event == "end_map" or event == "end_array":
            depth -= 1
        elif (event == "string" or event == "map_key") and len(value) > limits.max_string_chars:
            raise _LimitExceeded(
                _limit_message(
                    f"a string of {len(value)} characters, more than {limits.max_string_chars}",
                    "dataset_max_string_chars",
                    limits.max_string_chars,
                    reader,
                )
            )
        yield event, value


def _check_bounds(path: Path, limits: DatasetLimits) -> None:
    """One pass of basic events over the whole file before any prefixed parse reads it;
    raises `_LimitExceeded`. Malformed JSON or UTF-8 ends this pass quietly: the parses
    after it stop at the same byte and report it with its location."""
    with open(path, "rb") as raw:
        try:
            for _ in _depth_bounded(_CheckedReader(raw, hash_it=False, limits=limits), limits):
                pass
        except (_InvalidUtf8, ijson.JSONError):
            return


def _yajl_reason(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1].encode().decode("unicode_escape", errors="replace")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first.strip()


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(conversation)"


def _describe_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class DatasetScanner:
    """Stream a brightrun-lora-v4 file: validated conversations out, problems collected.

    Iterating `conversations()` yields each conversation that passed validation;
    invalid ones only add problems. When iteration ends, `result` holds every
    problem found (file-level ones included) and the file's sha256.
    """

    def __init__(self, path: Path, *, sha256: str | None = None, limits: DatasetLimits | None = None) -> None:
        """`sha256`: the file's digest when the caller already has it (the dataset stage hashes
        a source once, while fetching it); otherwise the scan computes it in its one pass.
        `limits`: the settings' `dataset_limits` (default: `DatasetLimits()`)."""
        self.path = Path(path)
        self.limits = limits or DatasetLimits()
        self.result = ValidationResult(path=self.path)
        self._known_sha256 = sha256
        self._pair_ids: dict[str, str] = {}
        self._conversation_ids: set[str] = set()

    # -- problems ---------------------------------------------------------
    def add(self, problem: Problem) -> None:
        self.result.problem_count += 1
        if len(self.result.problems) < MAX_PROBLEMS_KEPT:
            self.result.problems.append(problem)

    # -- passes -------------------------------------------------------------
    def _header(self) -> bool:
        """Check the top level and the file metadata; False when the file is not usable at all."""
        limits = self.limits
        try:
            size = os.stat(self.path).st_size
        except OSError as exc:
            self.add(Problem(f"cannot read {self.path}: {exc.strerror or exc}"))
            return False
        if size > limits.max_file_bytes:
            self.add(
                Problem(
                    f"the file is {size} bytes, more than {limits.max_file_bytes}; the limit is "
                    f"BRIGHTRUN_DATASET_MAX_FILE_BYTES={limits.max_file_bytes}: nothing was read"
                )
            )
            return False
        try:
            # Depth and string lengths, before a prefixed parse (prefix strings as long as the
            # depth, per event, a buffer at a time: a depth bomb's cost is in their square)
            # ever sees the file.
            _check_bounds(self.path, limits)
            with open(self.path, "rb") as raw:
                reader = _CheckedReader(raw, hash_it=False, limits=limits)
                events = ijson.parse(reader)
                first = next(events, None)
                if first is None:
                    self.add(Problem("the file is empty; expected a JSON object"))
                    return False
                if first[1] != "start_map":
                    self.add(
                        Problem(
                            f"the top level must be a JSON object with training_file_metadata and "
                            f"conversations, found {first[1].replace('start_', '')}"
                        )
                    )
                    return False
            with open(self.path, "rb") as raw:
                reader = _CheckedReader(raw, hash_it=False, limits=limits)
                # The metadata comes first in every file we know of, so this reads a few KB.
                meta = next(ijson.items(reader, "training_file_metadata", use_float=True), None)
        except _LimitExceeded as exc:
            self.add(Problem(str(exc)))
            return False
        except _InvalidUtf8 as exc:
            self.add(Problem(f"{exc}; the file must be UTF-8 encoded"))
            return False
        except ijson.JSONError as exc:
            self.add(Problem(f"not valid JSON: {_yajl_reason(exc)}"))
            return False
        except OSError as exc:
            self.add(Problem(f"cannot read {self.path}: {exc.strerror or exc}"))
            return False
        if meta is None:
            self.add(Problem("missing", field="training_file_metadata"))
            return True
        if not isinstance(meta, dict):
            self.add(Problem("must be an object", field="training_file_metadata"))
            return True
        self.result.file_metadata = meta
        try:
            parsed = FileMetadata.model_validate(meta)
        except ValidationError as exc:
            for err in exc.errors():
                self.add(Problem(err["msg"], field="training_file_metadata." + _fmt_loc(err["loc"])))
            return True
        if parsed.format_spec != FORMAT_SPEC:
            self.add(
                Problem(
                    f"is {parsed.format_spec!r}; this pipeline reads {FORMAT_SPEC!r} files",
                    field="training_file_metadata.format_spec",
                )
            )
        return True

    def conversations(self) -> Iterator[Conversation]:
        if not self._header():
            return
        count = 0
        pairs = 0
        last_id: str | None = None
        try:
            with open(self.path, "rb") as raw:
                reader = _CheckedReader(raw, hash_it=self._known_sha256 is None, limits=self.limits)
                for raw_conv in ijson.items(reader, "conversations.item", use_float=True):
                    count += 1
                    if isinstance(raw_conv, dict) and isinstance(raw_conv.get("training_pairs"), list):
                        pairs += len(raw_conv["training_pairs"])
                        if pairs > self.limits.max_pairs:
                            raise _LimitExceeded(
                                _limit_message(
                                    f"more than {self.limits.max_pairs} training pairs",
                                    "dataset_max_pairs",
                                    self.limits.max_pairs,
                                    reader,
                                )
                            )
                    if count > self.limits.max_conversations:
                        raise _LimitExceeded(
                            _limit_message(
                                f"more than {self.limits.max_conversations} conversations",
                                "dataset_max_conversations",
                                self.limits.max_conversations,
                                reader,
                            )
                        )
                    conv = self._check_conversation(count - 1, raw_conv)
                    last_id = self._conversation_label(count - 1, raw_conv)
                    if conv is not None:
                        yield conv
                # Drain whatever follows the conversations so the digest covers the whole file
                # and a truncated tail is noticed.
                while reader.read(1024 * 1024):
                    pass
                self.result.sha256 = self._known_sha256 or reader.hexdigest()
        except _LimitExceeded as exc:
            self.add(Problem(str(exc), conversation=self._after(last_id)))
            return
        except _InvalidUtf8 as exc:
            self.add(Problem(f"{exc}; the file must be UTF-8 encoded", conversation=self._after(last_id)))
            return
        except ijson.JSONError as exc:
            reason = _yajl_reason(exc)
            if "premature EOF" in reason:
                reason = "the file ends before the JSON is complete (truncated?)"
            self.add(Problem(f"not valid JSON: {reason}", conversation=self._after(last_id)))
            return
        self.result.conversations = count
        if count == 0:
            self._explain_no_conversations()

    def _after(self, last_id: str | None) -> str | None:
        return f"after {last_id}" if last_id else None

    def _explain_no_conversations(self) -> None:
        with open(self.path, "rb") as raw:
            # `_header` checked the whole file's bounds: this parse is safe.
            value = next(ijson.items(raw, "conversations", use_float=True), None)
        if value is None:
            self.add(Problem("missing", field="conversations"))
        elif isinstance(value, list):
            self.add(
                Problem("is empty; a training file needs at least one conversation", field="conversations")
            )
        else:
            self.add(Problem(f"must be a list, got {type(value).__name__}", field="conversations"))

    @staticmethod
    def _conversation_label(index: int, raw: Any) -> str:
        if isinstance(raw, dict):
            meta = raw.get("conversation_metadata")
            if isinstance(meta, dict) and isinstance(meta.get("conversation_id"), str):
                return meta["conversation_id"]
        return f"#{index}"

    @staticmethod
    def _pair_label(raw_conv: Any, pair_index: int) -> str:
        pair = None
        if isinstance(raw_conv, dict) and isinstance(raw_conv.get("training_pairs"), list):
            pairs = raw_conv["training_pairs"]
            if pair_index < len(pairs):
                pair = pairs[pair_index]
        label = f"#{pair_index}"
        if isinstance(pair, dict):
            if isinstance(pair.get("id"), str):
                label = f"{pair['id']} (#{pair_index})"
            if isinstance(pair.get("turn_number"), int):
                label += f" turn {pair['turn_number']}"
        return label

    def _check_conversation(self, index: int, raw: Any) -> Conversation | None:
        label = self._conversation_label(index, raw)
        if not isinstance(raw, dict):
            self.add(Problem(f"must be an object, got {type(raw).__name__}", conversation=label))
            return None
        pairs = raw.get("training_pairs")
        if isinstance(pairs, list):
            self.result.pairs += len(pairs)
        try:
            conv = Conversation.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = err["loc"]
                pair = None
                if len(loc) >= 2 and loc[0] == "training_pairs" and isinstance(loc[1], int):
                    pair = self._pair_label(raw, loc[1])
                    loc = loc[2:]
                message = err["msg"]
                if err["type"] not in ("missing",) and loc:
                    message += f" (got {_describe_input(err.get('input'))})"
                self.add(Problem(message, conversation=label, pair=pair, field=_fmt_loc(loc)))
            return None
        ok = True
        if conv.conversation_id in self._conversation_ids:
            self.add(
                Problem(
                    "duplicate conversation id",
                    conversation=label,
                    field="conversation_metadata.conversation_id",
                )
            )
            ok = False
        self._conversation_ids.add(conv.conversation_id)
        previous_turn = 0
        for i, pair in enumerate(conv.training_pairs):
            where = f"{pair.id} (#{i}) turn {pair.turn_number}"
            seen_in = self._pair_ids.get(pair.id)
            if seen_in is not None:
                self.add(
                    Problem(
                        f"duplicate pair id (already used in conversation {seen_in})",
                        conversation=label,
                        pair=where,
                        field="id",
                    )
                )
                ok = False
            else:
                self._pair_ids[pair.id] = label
            if pair.turn_number <= previous_turn:
                self.add(
                    Problem(
                        f"turn numbers must increase within a conversation; {pair.turn_number} "
                        f"follows {previous_turn}",
                        conversation=label,
                        pair=where,
                        field="turn_number",
                    )
                )
                ok = False
            previous_turn = pair.turn_number
        return conv if ok else None


def validate_dataset(path: Path, limits: DatasetLimits | None = None) -> ValidationResult:
    """Every problem of a brightrun-lora-v4 file at once; never raises for bad data."""
    scanner = DatasetScanner(path, limits=limits)
    for _ in scanner.conversations():
        pass
    if scanner.result.ok and scanner.result.conversations == 0:
        scanner.add(Problem("no conversations", field="conversations"))
    return scanner.result

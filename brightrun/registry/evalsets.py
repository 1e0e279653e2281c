"""Evaluation sets in the registry (issue 25): register a version, find one by
`NAME[@VERSION]`, list them, and look training conversations up by fingerprint.

A set's row and its conversations' fingerprints are written in one transaction: a set is
either registered whole or not at all. Its content sha256 is unique, so the same exam is
never registered twice under two names. Functions take an Engine or a Connection first, as
`repository` does.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, Table, func, select

from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.registry.models import EvaluationSet, EvaluationSetConversation, utcnow

Bind = Engine | Connection

sets_t: Table = EvaluationSet.__table__  # type: ignore[assignment]
conversations_t: Table = EvaluationSetConversation.__table__  # type: ignore[assignment]

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# Bound parameters per IN (...) query: well under SQLite's and Postgres's limits.
_LOOKUP_CHUNK = 500


class EvaluationSetNotFound(InputError):
    """No registered evaluation set answers to the given NAME[@VERSION]."""


@dataclass(frozen=True)
class EvaluationSetRow:
    id: str
    name: str
    version: int
    sha256: str
    storage_key: str
    storage_url: str
    conversation_count: int
    source_description: str
    created_by: str | None
    created_at: datetime

    @property
    def label(self) -> str:
        """How an operator names it: `'exam' (version 2)`."""
        return f"{self.name!r} (version {self.version})"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ConversationFingerprint:
    conversation_id: str
    fingerprint: str


def _row(row: object) -> EvaluationSetRow:
    data = dict(row._mapping)  # type: ignore[attr-defined]
    data["id"] = str(data["id"])
    return EvaluationSetRow(**data)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InputError(
            f"evaluation set name {name!r}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. exam-v1)"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` (the newest version) or `NAME@VERSION`."""
    name, sep, version = ref.strip().partition("@")
    check_name(name)
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InputError(f"evaluation set {ref!r}: the version after '@' must be a whole number >= 1")
    return name, int(version)


def by_sha256(bind: Bind, sha256: str) -> EvaluationSetRow | None:
    with repo._tx(bind) as conn:
        row = conn.execute(select(sets_t).where(sets_t.c.sha256 == sha256)).first()
    return _row(row) if row else None


def register(
    bind: Bind,
    *,
    name: str,
    sha256: str,
    storage_key: str,
    storage_url: str,
    conversations: Sequence[ConversationFingerprint],
    source_description: str,
    created_by: str | None,
) -> EvaluationSetRow:
    """The next version of `name`, with its conversations' fingerprints, in one transaction.

    Refuses an empty set, a set whose content is already registered (under any name), and two
    conversations of one set with the same fingerprint."""
    check_name(name)
    if not conversations:
        raise InputError(f"evaluation set {name!r} would hold no conversations; nothing was registered")
    seen: dict[str, str] = {}
    for c in conversations:
        if c.fingerprint in seen:
            raise InputError(
                f"evaluation set {name!r}: conversations {seen[c.fingerprint]} and {c.conversation_id} "
                "have the same user and assistant turns; keep one"
            )
        seen[c.fingerprint] = c.conversation_id
    with repo._tx(bind) as conn:
        existing = conn.execute(select(sets_t).where(sets_t.c.sha256 == sha256)).first()
        if existing is not None:
            found = _row(existing)
            raise InputError(
                f"these conversations are already registered as evaluation set {found.label} "
                f"(sha256 {sha256[:12]}); nothing was registered"
            )
        latest = conn.execute(select(func.max(sets_t.c.version)).where(sets_t.c.name == name)).scalar()
        set_id = uuid.uuid4()
        conn.execute(
            sets_t.insert().values(
                id=set_id,
                name=name,
                version=(latest or 0) + 1,
                sha256=sha256,
                storage_key=storage_key,
                storage_url=storage_url,
                conversation_count=len(conversations),
                source_description=source_description,
                created_by=created_by,
                created_at=utcnow(),
            )
        )
        conn.execute(
            conversations_t.insert(),
            [{"evaluation_set_id": set_id, **dataclasses.asdict(fp)} for fp in conversations],
        )
        return _row(conn.execute(select(sets_t).where(sets_t.c.id == set_id)).one())


def get(bind: Bind, ref: str) -> EvaluationSetRow:
    """A set by `NAME` (its newest version) or `NAME@VERSION`."""
    name, version = parse_ref(ref)
    stmt = select(sets_t).where(sets_t.c.name == name)
    stmt = stmt.where(sets_t.c.version == version) if version else stmt.order_by(sets_t.c.version.desc())
    with repo._tx(bind) as conn:
        row = conn.execute(stmt).first()
        if row is None:
            versions = [v for (v,) in conn.execute(select(sets_t.c.version).where(sets_t.c.name == name))]
    if row is None:
        if versions:
            raise EvaluationSetNotFound(
                f"evaluation set {name!r} has no version {version}; it has "
                + ", ".join(str(v) for v in sorted(versions))
            )
        raise EvaluationSetNotFound(
            f"no evaluation set is named {name!r}; `brightrun evalset list` shows them, "
            "`brightrun evalset create` makes one"
        )
    return _row(row)


def list_sets(bind: Bind) -> list[EvaluationSetRow]:
    with repo._tx(bind) as conn:
        rows = conn.execute(select(sets_t).order_by(sets_t.c.name, sets_t.c.version)).all()
    return [_row(r) for r in rows]


def conversations_of(bind: Bind, set_id: str) -> list[ConversationFingerprint]:
    with repo._tx(bind) as conn:
        rows = conn.execute(
            select(conversations_t.c.conversation_id, conversations_t.c.fingerprint)
            .where(conversations_t.c.evaluation_set_id == uuid.UUID(set_id))
            .order_by(conversations_t.c.conversation_id)
        ).all()
    return [ConversationFingerprint(r.conversation_id, r.fingerprint) for r in rows]


def any_registered(bind: Bind) -> bool:
    """Whether any set exists (the dataset stage skips its lookup when none does)."""
    with repo._tx(bind) as conn:
        return conn.execute(select(sets_t.c.id).limit(1)).first() is not None


def sets_holding(bind: Bind, fingerprints: Iterable[str]) -> dict[str, EvaluationSetRow]:
    """For each of `fingerprints` that some registered set holds: the oldest such set."""
    wanted = sorted(set(fingerprints))
    found: dict[str, EvaluationSetRow] = {}
    with repo._tx(bind) as conn:
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            rows = conn.execute(
                select(conversations_t.c.fingerprint, sets_t)
                .join(sets_t, sets_t.c.id == conversations_t.c.evaluation_set_id)
                .where(conversations_t.c.fingerprint.in_(chunk))
                .order_by(sets_t.c.created_at, sets_t.c.version)
            ).all()
            for r in rows:
                data = dict(r._mapping)
                fp = data.pop("fingerprint")
                if fp not in found:
                    data["id"] = str(data["id"])
                    found[fp] = EvaluationSetRow(**data)
    return found


def all_fingerprints(bind: Bind) -> frozenset[str]:
    """Every registered set's conversation fingerprints (the feedback export drops those
    conversations; exams are hundreds of conversations, not millions)."""
    with repo._tx(bind) as conn:
        return frozenset(fp for (fp,) in conn.execute(select(conversations_t.c.fingerprint).distinct()))

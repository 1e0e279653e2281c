"""This registry's id (issue 20): the tag on every pod it starts, so that its reaper
touches only its own pods when several registries (staging, production) share one RunPod
account. Made once by migration 0009; `BRIGHTRUN_REGISTRY_ID` overrides it."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from brightrun.registry.models import RegistryIdentity

_SELECT = sa.select(RegistryIdentity.registry_id).where(RegistryIdentity.id == 1)


def registry_id_of(engine: Engine, override: str | None = None) -> str:
    """The id this registry tags its pods with: `override` (the setting) when given, else the
    registry's own, made by its migration (a registry that lost its row gets a new one)."""
    if override:
        return override
    with engine.begin() as conn:
        found = conn.execute(_SELECT).scalar()
        if found:
            return str(found)
    made = str(uuid.uuid4())
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(RegistryIdentity).values(id=1, registry_id=made))
    except sa.exc.IntegrityError:  # another process made it first: theirs stands
        pass
    with engine.begin() as conn:
        return str(
            conn.execute(sa.select(RegistryIdentity.registry_id).where(RegistryIdentity.id == 1)).scalar()
        )

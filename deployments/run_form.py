"""The Prefect UI's run form for a deployment: the flow's typed parameters, shown usably.

Prefect 3 has no public way to set a deployment's parameter schema: `RunnerDeployment` keeps
it in a private attribute that Prefect's own `prefect deploy` writes too. That name lives here
once (`PREFECT_SCHEMA_ATTRIBUTE`), and tests/unit/test_run_form.py fails if Prefect renames it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("brightrun.reporting")

PREFECT_SCHEMA_ATTRIBUTE = "_parameter_openapi_schema"  # RunnerDeployment's, private in Prefect 3


def run_form_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A flow's parameter schema as the Prefect UI's run form should show it.

    An optional parameter (`str | None = None`) renders as a `str`/`None` choice stuck on
    None with 'Property is type "None"' under it; here it is a plain optional field (left
    empty, it is not sent, so the flow gets its default). Inside a section (lora, training...)
    a prefilled default would be sent back and override the preset, so the default moves
    into the field's description instead; booleans keep theirs (an untouched checkbox is
    sent as false, and no preset sets a boolean).
    """
    import copy
    import json

    out = copy.deepcopy(dict(schema))
    for prop in out.get("properties", {}).values():
        variants = prop.get("anyOf")
        if variants and {"type": "null"} in variants and "default" in prop and prop["default"] is None:
            rest = [v for v in variants if v != {"type": "null"}]
            del prop["anyOf"], prop["default"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
    for definition in out.get("definitions", {}).values():
        for field_schema in definition.get("properties", {}).values():
            if "default" not in field_schema or field_schema.get("type") == "boolean":
                continue
            default = field_schema.pop("default")
            shown = "none" if default is None else json.dumps(default)
            field_schema["description"] = f"{field_schema.get('description', '')} (default {shown})".strip()
    return out


def deployment_run_form(deployment: Any) -> dict[str, Any] | None:
    """The run-form schema a deployment will register (OpenAPI form), or None if Prefect keeps
    none where we look."""
    current = getattr(deployment, PREFECT_SCHEMA_ATTRIBUTE, None)
    return None if current is None else dict(current.model_dump_for_openapi())


def with_run_form_schema(deployment: Any) -> Any:
    """`flow.to_deployment(...)` with `run_form_schema` applied (for `serve` and registration)."""
    from prefect.utilities.callables import ParameterSchema

    current = deployment_run_form(deployment)
    if current is None:  # a Prefect without this attribute: the plain form is still usable
        log.warning("run form schema left as Prefect made it (no %s)", PREFECT_SCHEMA_ATTRIBUTE)
        return deployment
    setattr(deployment, PREFECT_SCHEMA_ATTRIBUTE, ParameterSchema(**run_form_schema(current)))
    return deployment

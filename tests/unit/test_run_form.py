"""The UI's run form (deployments/run_form.py): optional fields usable, section defaults in the
description, and the one private Prefect attribute it writes still where Prefect keeps it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prefect import flow
from prefect.deployments.runner import RunnerDeployment
from prefect.utilities.callables import ParameterSchema
from pydantic import BaseModel, Field

from deployments.run_form import (
    PREFECT_SCHEMA_ATTRIBUTE,
    deployment_run_form,
    run_form_schema,
    with_run_form_schema,
)


class Section(BaseModel):
    rank: int = Field(16, description="LoRA rank")
    merge: bool = Field(False, description="merge the adapter")


@flow
def sample_flow(dataset: str | None = None, section: Section | None = None, steps: int = 3) -> None:
    """A flow with an optional field and a section, like train_adapter."""


def test_prefect_still_keeps_the_run_form_where_we_write_it() -> None:
    """Prefect 3 has no public setter; if a release renames or drops the private attribute,
    this fails (and the form would silently fall back to 'Property is type None')."""
    assert PREFECT_SCHEMA_ATTRIBUTE in RunnerDeployment.__private_attributes__
    deployment = sample_flow.to_deployment(name="form")
    assert isinstance(getattr(deployment, PREFECT_SCHEMA_ATTRIBUTE), ParameterSchema)
    form = deployment_run_form(deployment)
    assert form is not None and set(form["properties"]) == {"dataset", "section", "steps"}


def test_the_run_form_is_applied_to_the_deployment() -> None:
    deployment = with_run_form_schema(sample_flow.to_deployment(name="form"))
    form = deployment_run_form(deployment)
    assert form is not None
    dataset = form["properties"]["dataset"]
    assert "anyOf" not in dataset and "default" not in dataset and dataset["type"] == "string"
    assert form["properties"]["steps"]["default"] == 3  # a required-typed field keeps its default
    fields = form["definitions"]["Section"]["properties"]
    assert "default" not in fields["rank"] and fields["rank"]["description"] == "LoRA rank (default 16)"
    assert fields["merge"]["default"] is False  # an untouched checkbox is sent as false anyway


def test_run_form_schema_leaves_its_input_alone() -> None:
    schema: dict[str, Any] = {
        "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
        "definitions": {},
    }
    out = run_form_schema(schema)
    assert out["properties"]["x"] == {"type": "string"}
    assert schema["properties"]["x"]["default"] is None


def test_a_deployment_without_the_attribute_is_left_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    class Bare:
        pass

    bare = Bare()
    with caplog.at_level(logging.WARNING, logger="brightrun.reporting"):
        assert with_run_form_schema(bare) is bare
    assert PREFECT_SCHEMA_ATTRIBUTE in caplog.text
    assert deployment_run_form(bare) is None

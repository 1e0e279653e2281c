"""Which export failures the Prefect task retries."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from brightrun.errors import InputError
from brightrun.registry.db import DatabaseUnavailable
from brightrun.storage import StorageError
from tasks.feedback import ExportBusy, ExportError
from tasks.feedback.task import transient_failure


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (ExportError("connection lost 3 times", transient=True), True),
        (DatabaseUnavailable("db down"), True),
        (StorageError("s3 timeout"), True),
        (ExportError("window already exported with other content"), False),
        (InputError("bad parameter"), False),
        (ExportBusy("another export holds the lock"), False),
    ],
)
def test_only_transient_failures_are_retried(error: BaseException, retry: bool) -> None:
    assert transient_failure(None, None, Failed(data=error)) is retry

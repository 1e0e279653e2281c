"""The trainer's log drops bitsandbytes' "No module named 'kernels'" warning (issue 21), and
nothing else of that logger."""

from __future__ import annotations

import logging

import pytest


def test_the_kernels_warning_is_dropped_and_other_warnings_kept(caplog: pytest.LogCaptureFixture) -> None:
    from trainer.main import _setup_logging

    _setup_logging()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'"
        )
        logger.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]

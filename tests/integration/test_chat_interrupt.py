"""Ctrl-C during a `chat` reply (issue 21): the reader leaving the stream stops the generation
and joins its thread, so nothing is left inside torch at exit (the exit-134 abort)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]


def test_closing_a_reply_stream_stops_generation_and_joins_its_thread(tiny_model: Path) -> None:
    from trainer.inference import BaseModelSpec, GenerationOptions, load_chat_model

    chat = load_chat_model(BaseModelSpec(str(tiny_model)), None, "tiny")
    chat.stop_ids = []  # no end-of-turn: left alone, this reply would run 2000 tokens
    pieces = chat.stream([{"role": "user", "content": "hello"}], GenerationOptions(max_new_tokens=2000))
    first = next(pieces)
    assert isinstance(first, str)
    (generating,) = [t for t in threading.enumerate() if t.name == "brightrun-generate"]
    assert generating.is_alive()
    started = time.monotonic()
    pieces.close()  # what chat does on KeyboardInterrupt
    print(f"stopped in {time.monotonic() - started:.2f}s")
    assert not generating.is_alive()
    assert chat.lock.acquire(blocking=False)  # the next reply can start
    chat.lock.release()

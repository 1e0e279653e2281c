"""The adapter room: everything after training, one package (issue 24's first step).

    fetch.py      a registered adapter's files, verified against its manifest, cached
    chat.py       an artifact loaded ready to talk (generate, chat, serve)
    evaluate.py   candidate against production / another adapter / the base model
    lifecycle.py  promote, roll back, and the signed webhook of each change
    merge.py      the adapter folded into its full-precision base, registered
    publish.py    the trainer's upload verified and registered (the flow's last stage)
    task.py       the Prefect tasks over the above

The manifest (built, read, checked) is `brightrun.manifest`. This is the one stage that may
load the trainer (`trainer.inference`, for loading, losses, generation and merging): it
imports it lazily, inside the functions that need torch, so the package imports on a small
worker without torch (tests/unit/test_layout_boundaries.py states the exception). The plain
functions are re-exported here; the Prefect tasks are imported from `tasks.adapters.task`
so that the pure modules never load Prefect.
"""

from __future__ import annotations

from tasks.adapters.chat import load_for_chat
from tasks.adapters.evaluate import (
    BASE,
    EvalSet,
    compare_losses,
    evaluate,
    evaluation_json,
    evaluation_markdown,
    load_eval_set,
)
from tasks.adapters.fetch import (
    AdapterCorrupt,
    LocalAdapter,
    adapter_location,
    download_adapter,
    download_verified,
    fetch_adapter,
    presigned_urls,
)
from tasks.adapters.lifecycle import notify_changes, promote, rollback
from tasks.adapters.merge import export_merged
from tasks.adapters.publish import (
    AdapterUploadError,
    StoredAdapter,
    publish,
    register_adapter,
    verify_stored_adapter,
)

__all__ = [
    "BASE",
    "AdapterCorrupt",
    "AdapterUploadError",
    "EvalSet",
    "LocalAdapter",
    "StoredAdapter",
    "adapter_location",
    "compare_losses",
    "download_adapter",
    "download_verified",
    "evaluate",
    "evaluation_json",
    "evaluation_markdown",
    "export_merged",
    "fetch_adapter",
    "load_eval_set",
    "load_for_chat",
    "notify_changes",
    "presigned_urls",
    "promote",
    "publish",
    "register_adapter",
    "rollback",
    "verify_stored_adapter",
]

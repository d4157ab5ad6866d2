"""What the connector kit needs to read the file connector's members file: no HTTP at all."""

from __future__ import annotations

import json
from pathlib import Path

from syncer.testing import FakeVendor, Fields

NO_HTTP = "the file connector writes a local file; it sends no HTTP request"


class MembersFile(FakeVendor):
    """The members file (JSONL) the suite's sync writes, read back as the destination."""

    lacks = {
        "http": NO_HTTP,
        "record_rejects": "a file takes every record; nothing refuses one",
        "batch_refusal": "a file never refuses a batch for its content",
    }

    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None  # set once the test's directory is known

    def members(self) -> dict[str, Fields]:
        if self.path is None or not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return {row["key"]: row["fields"] for row in map(json.loads, lines)}

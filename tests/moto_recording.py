"""Which requests reached moto's server: its request recorder, pointed at a test's folder.

:func:`record` (use it in a fixture) records every request moto's server answers meanwhile;
:meth:`Recording.queries` fails when anything but Query reached DynamoDB, so a Scan anywhere in
the query path fails the test that uses it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.moto_api import recorder


class Recording:
    """The DynamoDB operations moto's server received while recording, with their bodies."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self) -> list[tuple[str, dict]]:
        found = []
        if not self.path.exists():
            return found
        for line in self.path.read_text().splitlines():
            entry = json.loads(line)
            target = entry["headers"].get("X-Amz-Target", "")
            if not target.startswith("DynamoDB_"):
                continue
            body = entry["body"]
            body = base64.b64decode(body) if entry["body_encoded"] else body
            found.append((target.split(".", 1)[1], json.loads(body or "{}")))
        return found

    def clear(self) -> None:
        """Forget what was recorded so far (e.g. the setup of the tables)."""
        recorder.reset_recording()

    def operations(self) -> list[str]:
        return [operation for operation, _ in self.requests()]

    def queries(self) -> list[dict]:
        """The Query bodies; fails if anything but Query (a Scan above all) was sent."""
        operations = self.operations()
        assert "Scan" not in operations, "the query path sent a Scan"
        assert set(operations) <= {"Query"}, operations
        return [body for _, body in self.requests()]


def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recording]:
    """Record until the generator resumes: ``yield from record(tmp_path, monkeypatch)``."""
    # moto's recorder is process-wide and appends to a file: point it at this test's folder.
    monkeypatch.setattr(recorder, "_location", str(tmp_path / "moto-recording.jsonl"))
    recorder.reset_recording()
    recorder.start_recording()
    try:
        yield Recording(tmp_path / "moto-recording.jsonl")
    finally:
        recorder.stop_recording()

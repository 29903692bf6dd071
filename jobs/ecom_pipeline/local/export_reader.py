"""Reading a run-local export with the very same Query code that reads AWS."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws
from ecom_pipeline.read.query import KpiReader, QueryError


@dataclass
class ExportReader:
    """A run-local export (``OUT/category_kpis.jsonl``, ``OUT/order_kpis.jsonl``) loaded into a
    fresh emulator, so the very same Query code reads it; use as a context manager."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    _aws: Any = None

    def __enter__(self) -> KpiReader:
        missing = [n for n in EXPORT_FILES.values() if not (self.out_dir / n).is_file()]
        if missing:
            raise QueryError(
                f"{self.out_dir} is not a run-local export: {', '.join(missing)} missing "
                "(create one with `ecom-pipeline run-local BATCH_DIR --export OUT`)"
            )
        self._aws = LocalAws()
        self._aws.__enter__()
        try:
            self.counts = self._aws.import_tables(self.out_dir)
        except ValueError as error:
            self._aws.__exit__(None, None, None)
            raise QueryError(f"cannot load the export {self.out_dir}: {error}") from error
        return KpiReader(self._aws.client("dynamodb"))

    def __exit__(self, *exc_info: object) -> None:
        if self._aws is not None:
            self._aws.__exit__(None, None, None)
            self._aws = None

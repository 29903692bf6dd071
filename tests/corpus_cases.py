"""The hostile-input corpus under tests/corpus/ and the one run-local of all of it that the
corpus tests and the check tests both read (tests/e2e/conftest.py runs it once a session)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
# case -> what its batch must fail with (stage, dataset, rule, bad-row count, an example the
# notice shows), or null for a file that is merely unusual and must pass
EXPECTED: dict[str, dict | None] = json.loads((CORPUS / "expected.json").read_text())
OK_CASES = sorted(c for c, want in EXPECTED.items() if want is None)
HOSTILE_CASES = sorted(c for c, want in EXPECTED.items() if want is not None)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass(frozen=True)
class CorpusRun:
    code: int
    out: Path
    notices: dict[str, dict]  # batch id (the case) -> its notice
    seconds: float

    def failed_rules(self, case: str) -> dict[str, set[str]]:
        """The rules the pipeline's validation failed, for each dataset it checked."""
        return {
            v["dataset"]: {r["rule"] for r in (v.get("result") or {}).get("failed_rules", [])}
            for v in self.notices[case].get("validations", [])
            if v["status"] != "SKIPPED"
        }


def run_corpus(out: Path) -> CorpusRun:
    """Every case as one batch of ONE run-local invocation: the valid ones first (so the tables
    hold KPIs), then every hostile one, each of which must leave them unchanged."""
    from ecom_pipeline.cli import main

    started = time.perf_counter()
    code = main(
        ["run-local", *(str(CORPUS / c) for c in OK_CASES + HOSTILE_CASES), "--export", str(out)]
    )
    notices = {
        n["message"]["batch_id"]: n["message"] for n in read_jsonl(out / "notifications.jsonl")
    }
    return CorpusRun(code, out, notices, time.perf_counter() - started)

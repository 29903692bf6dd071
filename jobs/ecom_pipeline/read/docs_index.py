"""One Data Docs page across batches: ``s3://<bucket>/data-docs/index.html``.

Each validation run builds and uploads the GX site of that run only
(``data-docs/<batch>/<dataset>/``), so no GX page knows the other batches. This page lists every
``results/<batch>/<dataset>.json`` with its outcome and links, relative to ``data-docs/``, to the
run's GX validation page and to its GX site; it works the same when the ``data-docs/`` folder is
served from S3 or downloaded (``run-local`` exports it). Self-contained: inline CSS, no script.
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ecom_pipeline.adapters.storage import Store
from ecom_pipeline.core.contract import DATASETS
from ecom_pipeline.core.layout import DATA_DOCS, RESULTS

log = logging.getLogger(__name__)

INDEX_KEY = f"{DATA_DOCS}/index.html"
TITLE = "Data Docs — ecom-pipeline"
# GX validation pages live at validations/<suite>/<run name>/<run time>/<batch>.html.
_RUN_TIME = re.compile(r"/(\d{8}T\d{6}(?:\.\d+)?Z)/")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;
margin:0;padding:24px 32px;color:#1f2328;background:#f6f8fa}
h1{font-size:26px;margin:0 0 4px}
.summary{color:#57606a;margin:0 0 24px}
section.batch{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:0 0 20px;
padding:16px 20px}
section.batch h2{font-size:18px;margin:0 0 12px}
section.batch h2 code{font-size:17px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:8px 10px;border-top:1px solid #d8dee4;vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;border-top:0}
table{table-layout:fixed}
th:nth-child(1){width:46%}
th:nth-child(2),th:nth-child(3),th:nth-child(4){width:10%}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:700;font-size:12px;
letter-spacing:.05em;color:#fff}
.badge.passed{background:#1a7f37}
.badge.failed{background:#cf222e}
ul.failures{margin:6px 0 0;padding-left:18px}
ul.failures li{margin:4px 0}
.rule{font-weight:600}
.count{color:#cf222e;font-weight:600}
.message{display:block;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;
color:#57606a;white-space:pre-wrap;word-break:break-word}
.muted{color:#57606a}
a{color:#0969da}
"""


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _safe_relative(path: str) -> str | None:
    """``path`` as a URL relative to data-docs/, or None if it could leave that folder."""
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or "\\" in path:
        return None
    return "/".join(quote(part, safe="") for part in parts)


def docs_link(
    data_docs: str | None, *, bucket: str | None = None, docs_uri: str | None = None
) -> str | None:
    """``s3://<bucket>/data-docs/<batch>/<dataset>/validations/...html`` as a link relative to
    ``data-docs/`` (``<batch>/<dataset>/validations/...html``); None if it is elsewhere.
    ``docs_uri`` is the store's URI of ``data-docs/`` (default: that of ``bucket``)."""
    prefix = docs_uri or f"s3://{bucket}/{DATA_DOCS}/"
    if not data_docs or not data_docs.startswith(prefix):
        return None
    return _safe_relative(data_docs[len(prefix) :])


def site_link(batch_id: str, dataset: str) -> str | None:
    """The GX site index of one run, relative to ``data-docs/``."""
    return _safe_relative(f"{batch_id}/{dataset}/index.html")


def _dataset_order(dataset: str) -> tuple[int, str]:
    names = list(DATASETS)
    return (names.index(dataset) if dataset in names else len(names), dataset)


def _group_by_batch(results: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Batches in the order they first appear in ``results``; datasets in contract order."""
    batches: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        batches.setdefault(str(result.get("batch_id", "")), []).append(result)
    return [
        (batch_id, sorted(rows, key=lambda r: _dataset_order(str(r.get("dataset", "")))))
        for batch_id, rows in batches.items()
    ]


def _failure_item(rule: dict[str, Any]) -> str:
    name = rule.get("rule") or rule.get("expectation") or "rule"
    column = f" <span class='muted'>on {_text(rule['column'])}</span>" if rule.get("column") else ""
    count = rule.get("unexpected_count")
    if count is not None:
        of = rule.get("element_count")
        total = f" of {_text(of)}" if of is not None else ""
        count_text = f"<span class='count'>{_text(count)}{total} unexpected</span>"
    else:
        count_text = "<span class='count'>failed</span>"
    message = rule.get("message") or rule.get("error") or ""
    return (
        f"<li><span class='rule'>{_text(name)}</span>{column} — {count_text}"
        f"<span class='message'>{_text(message)}</span></li>"
    )


def _dataset_row(result: dict[str, Any], *, bucket: str | None, docs_uri: str | None) -> str:
    dataset = str(result.get("dataset", ""))
    batch_id = str(result.get("batch_id", ""))
    passed = result.get("success") is True
    badge = (
        "<span class='badge passed'>PASSED</span>"
        if passed
        else "<span class='badge failed'>FAILED</span>"
    )
    failures = "" if passed else _failures_list(result.get("failed_rules") or [])
    links = []
    page = docs_link(result.get("data_docs"), bucket=bucket, docs_uri=docs_uri)
    if page is not None:
        links.append(f"<a class='validation-page' href='{_text(page)}'>validation page</a>")
        site = site_link(batch_id, dataset)
        if site is not None:
            links.append(f"<a class='site-index' href='{_text(site)}'>GX site</a>")
    elif result.get("data_docs"):
        links.append(f"<span class='muted'>{_text(result['data_docs'])}</span>")
    else:
        links.append("<span class='muted'>no Data Docs</span>")
    return (
        f"<tr class='dataset {'passed' if passed else 'failed'}' data-dataset='{_text(dataset)}'>"
        f"<td><code>{_text(dataset)}</code>{failures}</td>"
        f"<td>{badge}</td>"
        f"<td class='num rows'>{_text(result.get('rows', '—'))}</td>"
        f"<td class='num rules'>{_text(result.get('rules_evaluated', '—'))}</td>"
        f"<td>{' · '.join(links)}</td></tr>"
    )


def _failures_list(failed_rules: list[dict[str, Any]]) -> str:
    if not failed_rules:
        return ""
    items = "".join(_failure_item(rule) for rule in failed_rules if isinstance(rule, dict))
    return f"<ul class='failures'>{items}</ul>"


def render_index(
    results: list[dict[str, Any]], *, bucket: str | None = None, docs_uri: str | None = None
) -> str:
    """The index page: one section per batch, in the order batches first appear in ``results``
    (give them newest first), one row per dataset. Every value is HTML-escaped."""
    batches = _group_by_batch(results)
    sections = []
    for batch_id, rows in batches:
        passed = sum(1 for r in rows if r.get("success") is True)
        body = "".join(_dataset_row(r, bucket=bucket, docs_uri=docs_uri) for r in rows)
        sections.append(
            f"<section class='batch' id='batch-{_text(quote(batch_id, safe=''))}' "
            f"data-batch='{_text(batch_id)}'>"
            f"<h2>Batch <code>{_text(batch_id)}</code> "
            f"<span class='muted'>{passed} of {len(rows)} datasets passed</span></h2>"
            "<table><thead><tr><th>dataset</th><th>result</th><th>rows checked</th>"
            "<th>rules evaluated</th><th>Great Expectations</th></tr></thead>"
            f"<tbody>{body}</tbody></table></section>"
        )
    failed = sum(1 for r in results if r.get("success") is not True)
    summary = (
        f"{len(batches)} batches, {len(results)} validated datasets, {failed} failed. "
        "Newest batch first."
        if results
        else "No validation results yet."
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_text(TITLE)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_text(TITLE)}</h1><p class='summary'>{_text(summary)}</p>"
        f"{''.join(sections)}</body></html>\n"
    )


def run_time(result: dict[str, Any]) -> str:
    """The GX run time in the result's Data Docs URL (``20250301T100000.123456Z``), or ''."""
    match = _RUN_TIME.search(str(result.get("data_docs") or ""))
    return match.group(1) if match else ""


def newest_first(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results grouped by batch, the batch with the latest validation run first (batches
    without a run time last, by batch id)."""
    latest: dict[str, str] = {}
    for result in results:
        batch_id = str(result.get("batch_id", ""))
        latest[batch_id] = max(latest.get(batch_id, ""), run_time(result))
    by_id = sorted(results, key=lambda r: str(r.get("batch_id", "")))
    return sorted(by_id, key=lambda r: latest[str(r.get("batch_id", ""))], reverse=True)


def publish_index(store: Store) -> str:
    """Render every ``results/*/*.json`` of the bucket and upload it as ``data-docs/index.html``
    (text/html); returns that key. One listing plus one small GET per result."""
    results = []
    for stored in store.list(f"{RESULTS}/"):
        if not stored.key.endswith(".json") or stored.key.count("/") != 2:
            continue
        try:
            document = store.get_json(stored.key)
        except ValueError:  # not JSON: leave it out rather than block every later index
            log.warning("skipping unreadable result %s", stored.key, exc_info=True)
            continue
        if isinstance(document, dict):
            results.append(document)
    page = render_index(newest_first(results), docs_uri=store.uri(f"{DATA_DOCS}/"))
    with tempfile.TemporaryDirectory(prefix="docs-index-") as folder:
        path = Path(folder) / "index.html"  # upload_file sets ContentType text/html from the name
        path.write_text(page, encoding="utf-8")
        store.upload_file(path, INDEX_KEY)
    return INDEX_KEY

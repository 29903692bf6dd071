"""Success and failure notices, published to SNS as JSON (subject line for e-mail readers)."""

from __future__ import annotations

import json
import logging
from typing import Any

from ecom_pipeline.aws import AwsSettings

log = logging.getLogger(__name__)
SUBJECT_LIMIT = 100  # SNS rejects longer subjects


def success_notice(
    batch_id: str,
    *,
    rows_accepted: dict[str, int],
    dates_recomputed: list[str],
    duration_s: float,
    data_docs: dict[str, str | None],
    execution_id: str | None = None,
) -> dict[str, Any]:
    return {
        "status": "SUCCEEDED",
        "batch_id": batch_id,
        "rows_accepted": rows_accepted,
        "dates_recomputed": dates_recomputed,
        "duration_s": round(duration_s, 3),
        "data_docs": data_docs,
        "execution_id": execution_id,
    }


def failure_notice(
    batch_id: str,
    *,
    stage: str,
    failed_datasets: list[dict[str, Any]],
    duration_s: float,
    execution_id: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """failed_datasets: one {"dataset", "failed_rules", "data_docs"} per failed dataset, where
    failed_rules holds {"rule", "unexpected_count", "message"}."""
    return {
        "status": "FAILED",
        "batch_id": batch_id,
        "stage": stage,
        "failed_datasets": failed_datasets,
        "error": error,
        "duration_s": round(duration_s, 3),
        "execution_id": execution_id,
    }


def subject_of(notice: dict[str, Any]) -> str:
    subject = f"ecom-pipeline {notice['status']}: batch {notice['batch_id']}"
    return subject[:SUBJECT_LIMIT]


def publish(notice: dict[str, Any], topic_arn: str, settings: AwsSettings) -> str:
    """Publish a notice; returns the SNS message id."""
    response = settings.client("sns").publish(
        TopicArn=topic_arn,
        Subject=subject_of(notice),
        Message=json.dumps(notice, default=str, ensure_ascii=False),
    )
    log.info("notice published", extra={"event": "notice", "status": notice["status"]})
    return response["MessageId"]

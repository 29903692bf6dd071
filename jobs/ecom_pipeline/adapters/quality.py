"""Running a dataset's Great Expectations suite (from ``expectations/``) on a Spark DataFrame.

GX 1.x cannot write Data Docs to S3 itself, so each run builds them into a local file context;
the caller uploads the site.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame

from ecom_pipeline.core.contract import MIN_NUM_OF_ITEM, ORDER_STATUSES, SKU_PATTERN, Dataset
from ecom_pipeline.transforms.ingest import SOURCE_FILE

# GX would otherwise try to send usage statistics to the internet on every run.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

log = logging.getLogger(__name__)
EXAMPLES = 5


class SuiteError(ValueError):
    """A suite file that Great Expectations cannot load completely."""


def load_suite_document(dataset: str) -> dict[str, Any]:
    """The suite JSON shipped in the package (source: expectations/<dataset>.json)."""
    source = resources.files("ecom_pipeline.expectations").joinpath(f"{dataset}.json")
    return json.loads(source.read_text(encoding="utf-8"))


def suite_parameters(dataset: Dataset, checkable_columns: list[str]) -> dict[str, Any]:
    """Values the suites refer to as {"$PARAMETER": name}: all from the contract."""
    return {
        "checkable_columns": checkable_columns,
        "allowed_statuses": list(ORDER_STATUSES),
        "sku_pattern": SKU_PATTERN,
        "min_num_of_item": MIN_NUM_OF_ITEM,
    }


@dataclass
class RuleFailure:
    rule: str
    expectation: str
    column: str | None
    unexpected_count: int | None
    element_count: int | None
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    file: str | None = None
    # every offending row GX returned (as many as the failure pass's result format asks for;
    # ``examples`` are the first EXAMPLES): `ecom-pipeline check` lists them all. Not reported.
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def describe(self, dataset: str) -> str:
        where = f" in {self.file}" if self.file else ""
        if self.error:
            return f"{dataset}{where}: rule '{self.rule}' could not be checked: {self.error}"
        count = (
            f"{self.unexpected_count} of {self.element_count} rows"
            if self.unexpected_count is not None
            else "the table"
        )
        text = f"{dataset}{where}: rule '{self.rule}' failed on {count}"
        if self.details:
            text += " (" + "; ".join(f"{k}: {v}" for k, v in self.details.items()) + ")"
        if self.examples:
            text += "; e.g. " + "; ".join(_format_example(e) for e in self.examples)
        return text

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "rows" and v not in (None, [], {})}


def _format_example(example: dict[str, Any]) -> str:
    parts = [str(example[SOURCE_FILE])] if example.get(SOURCE_FILE) else []
    parts += [f"{k}={v!r}" for k, v in example.items() if k != SOURCE_FILE]
    return " ".join(parts)


@dataclass
class SuiteOutcome:
    success: bool
    evaluated: int
    failures: list[RuleFailure]
    docs_dir: Path | None
    docs_page: str | None  # the validation page, relative to docs_dir


def run_suite(
    frame: DataFrame,
    dataset: Dataset,
    *,
    checkable_columns: list[str],
    run_name: str,
    project_dir: Path,
    failure_format: dict[str, Any] | None = None,
) -> SuiteOutcome:
    """Validate frame with the dataset's suite and build Data Docs under project_dir.
    ``failure_format``: the result format of the pass that looks for offending rows when a rule
    failed (default: EXAMPLES rows per rule, named by file and key)."""
    import great_expectations as gx
    from great_expectations.core import ExpectationSuite
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.validator.v1_validator import Validator

    document = load_suite_document(dataset.name)
    suite = ExpectationSuite(**document)
    if len(suite.expectations) != len(document["expectations"]):
        # GX logs and drops expectations it cannot build; a silently shorter suite checks less.
        raise SuiteError(
            f"expectations/{dataset.name}.json: GX loaded {len(suite.expectations)} of "
            f"{len(document['expectations'])} expectations (see the log for the invalid one)"
        )
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    # tqdm bars would interleave with the JSON log lines.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_or_update_spark(name="spark")
    asset = source.add_dataframe_asset(name=dataset.name)
    batch_definition = asset.add_batch_definition_whole_dataframe(f"{dataset.name}-batch")
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(
            name=f"{dataset.name}-validation", data=batch_definition, suite=suite
        )
    )
    # BOOLEAN_ONLY needs only the aggregate metrics, which GX bundles into a few Spark jobs.
    # Most batches pass and stop there. When a rule failed, a second pass looks for offending
    # rows of the failed rules only: a detailed (SUMMARY) pass over the whole suite adds jobs
    # for every rule, a full pass each when it has none. The failed rules' detailed results
    # then replace their first ones in the stored result, which the Data Docs are rebuilt from.
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    parameters = suite_parameters(dataset, checkable_columns)
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{dataset.name}-checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update-data-docs")],
            result_format=BOOLEAN_ONLY,
        )
    )
    result = checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=parameters, run_id=run_id
    )
    if not result.success:
        for key, validation in result.run_results.items():
            _add_failure_details(
                validation,
                suite,
                Validator(
                    batch_definition=batch_definition,
                    result_format=failure_format or _summary_format(dataset),
                    batch_parameters={"dataframe": frame},
                ),
                parameters,
            )
            context.validation_results_store.set(key, validation)
        context.build_data_docs()
    failures: list[RuleFailure] = []
    evaluated = 0
    for validation in result.run_results.values():
        for expectation_result in validation.results:
            evaluated += 1
            if not expectation_result.success:
                failures.append(_failure_of(expectation_result))
    docs_dir = project_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    pages = sorted((docs_dir / "validations").rglob("*.html")) if docs_dir.exists() else []
    return SuiteOutcome(
        success=bool(result.success),
        evaluated=evaluated,
        failures=failures,
        docs_dir=docs_dir if docs_dir.exists() else None,
        docs_page=pages[-1].relative_to(docs_dir).as_posix() if pages else None,
    )


BOOLEAN_ONLY: dict[str, Any] = {"result_format": "BOOLEAN_ONLY"}


def _add_failure_details(
    validation: Any, suite: Any, validator: Any, parameters: dict[str, Any]
) -> None:
    """Replace, in ``validation``, each failed rule's result by one from ``validator`` (whose
    result format looks for offending rows), checking the failed rules only."""
    from great_expectations.core import ExpectationSuite

    failed_ids = {r.expectation_config.id for r in validation.results if not r.success}
    failed = ExpectationSuite(
        name=f"{suite.name}-failed",
        # copies: an expectation belongs to one suite (a copy loses its id, hence _rule_key)
        expectations=[copy.copy(e) for e in suite.expectations if e.id in failed_ids],
    )
    detailed = validator.validate_expectation_suite(failed, parameters).results
    by_key = {_rule_key(r.expectation_config): r for r in detailed}
    replaced = [
        by_key.get(_rule_key(r.expectation_config), r) if not r.success else r
        for r in validation.results
    ]
    if len(by_key) != len(detailed) or sum(r in detailed for r in replaced) != len(failed_ids):
        raise SuiteError(f"{suite.name}: the failed rules' second pass did not match the first")
    validation.results = replaced


def _rule_key(config: Any) -> tuple[str, str]:
    return config.type, json.dumps(config.kwargs, sort_keys=True, default=str)


def _summary_format(dataset: Dataset) -> dict[str, Any]:
    """Counts and up to EXAMPLES offending rows per failed rule, named by file and key."""
    return {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": [SOURCE_FILE, dataset.key],
        "partial_unexpected_count": EXAMPLES,
    }


def _failure_of(expectation_result: Any) -> RuleFailure:
    config = expectation_result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or (
        f"{kwargs['column_A']}, {kwargs['column_B']}" if "column_A" in kwargs else None
    )
    result = expectation_result.result or {}
    info = expectation_result.exception_info or {}
    error = None
    if info.get("raised_exception"):
        error = info.get("exception_message")
    else:
        nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
        if nested:
            error = nested[0].get("exception_message")
    rows = [dict(e) for e in (result.get("partial_unexpected_index_list") or [])]
    details: dict[str, Any] = {}
    mismatched = (result.get("details") or {}).get("mismatched")
    if mismatched:
        details = {k: sorted(v) for k, v in mismatched.items() if v}
    elif "observed_value" in result and result.get("unexpected_count") is None:
        details = {"observed": result["observed_value"]}
    return RuleFailure(
        rule=(config.meta or {}).get("rule", config.type),
        expectation=config.type,
        column=column,
        unexpected_count=result.get("unexpected_count"),
        element_count=result.get("element_count"),
        examples=rows[:EXAMPLES],
        details=details,
        error=error,
        rows=rows,
    )

"""In-process AWS emulation (moto's server) for ``ecom-pipeline run-local`` and the tests.

:class:`LocalAws` starts moto's ``ThreadedMotoServer`` on 127.0.0.1 at a free port, so Spark's
Python workers (other processes) reach it through ``settings.endpoint_url`` like any endpoint.
It sets no environment variables and no logging configuration.

moto keeps its emulated AWS state in module globals, one per process, shared by every moto
server and ``mock_aws`` of that process. So entering and leaving :class:`LocalAws` both reset
that state (``/moto-api/reset``), and only one :class:`LocalAws` may be open at a time per
process; used one after the other, each starts from nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from ecom_pipeline.adapters.aws import DEFAULT_REGION, AwsSettings, make_client
from ecom_pipeline.adapters.dynamo import (
    BATCH_SIZE,
    send_batch,
    table_definitions,
    table_key,
    to_dynamo_item,
)
from ecom_pipeline.adapters.lock import lock_table_definition
from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE,
    INDEX_ONLY_ATTRIBUTES,
    LOCK_EXPIRY_ATTRIBUTE,
    LOCK_TABLE,
    ORDER_TABLE,
    index_attributes,
)
from ecom_pipeline.core.layout import INCOMING
from ecom_pipeline.core.planning import MARKERS

logger = logging.getLogger(__name__)

DEFAULT_BUCKET = "ecom-pipeline-local"
TOPIC_NAME = "ecom-pipeline-notifications"
QUEUE_NAME = "ecom-pipeline-notifications-inbox"
# The bucket's marker events, as infra/template.yaml sends them to the trigger Lambda: here they
# wait in a queue until the local pipeline hands them to the handler (LocalPipeline).
MARKER_EVENTS_QUEUE = "ecom-pipeline-marker-events"
EXPORT_FILES: dict[str, str] = {
    CATEGORY_TABLE: "category_kpis.jsonl",
    ORDER_TABLE: "order_kpis.jsonl",
}
_HOST = "127.0.0.1"


# --- The server --------------------------------------------------------------------------------


class _QuietHandler(MotoRequestHandler):
    """moto's request handler without werkzeug's one-line-per-request log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _MotoServer(ThreadedMotoServer):
    """moto's ThreadedMotoServer, quiet, stopping promptly, and failing loudly if it cannot bind.

    werkzeug answers every request with ``Connection: close``, so once the server thread is
    joined no connection thread outlives it (beyond a request still being answered).
    """

    def __init__(self, ip_address: str, port: int) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self._startup_error: BaseException | None = None

    def _server_entry(self) -> None:
        try:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(
                self._ip_address, self._port, app, threaded=True, request_handler=_QuietHandler
            )
        except BaseException as error:  # reported by start(); the thread must not hang it
            self._startup_error = error
            self._server_ready_event.set()
            return
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)

    def start(self) -> None:
        super().start()
        if self._startup_error is not None:
            self._thread.join()  # type: ignore[union-attr]
            raise RuntimeError("moto server did not start") from self._startup_error


# --- JSON export -------------------------------------------------------------------------------

_DESERIALIZER = TypeDeserializer()


def _number_text(value: Decimal) -> str:
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def _json_text(value: Any) -> str:
    """Compact JSON whose numbers are the exact decimal text (integral values have no point)."""
    if isinstance(value, Decimal):
        return _number_text(value)
    if isinstance(value, dict):
        members = (f"{json.dumps(str(k))}:{_json_text(v)}" for k, v in sorted(value.items()))
        return "{" + ",".join(members) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    if isinstance(value, set | frozenset):
        return _json_text(sorted(value))
    if isinstance(value, bytes | bytearray):
        return json.dumps(value.hex())
    if isinstance(value, Binary):
        return json.dumps(value.value.hex())
    return json.dumps(value, ensure_ascii=False)


def plain_item(item: dict[str, Any]) -> dict[str, Any]:
    """A low-level DynamoDB item as plain Python values (numbers stay ``Decimal``)."""
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


def item_json(item: dict[str, Any]) -> str:
    """One low-level DynamoDB item as one line of JSON: keys sorted, numbers as JSON numbers."""
    return _json_text(plain_item(item))


# --- LocalAws ----------------------------------------------------------------------------------


class LocalAws:
    """moto's server on 127.0.0.1, with the pipeline's bucket, tables (both KPI tables and the
    lock table), topic and an inbox queue.

    ``with LocalAws() as aws:`` gives ``aws.settings`` (an :class:`AwsSettings` pointing at the
    server), ``aws.endpoint_url``, ``aws.port``, ``aws.bucket``, ``aws.topic_arn`` and
    ``aws.queue_url`` (an SQS queue subscribed to the topic, read by :meth:`notifications`).
    """

    _active_lock = threading.Lock()
    _active: LocalAws | None = None

    def __init__(self, bucket: str = DEFAULT_BUCKET, *, region: str = DEFAULT_REGION) -> None:
        self.bucket = bucket
        self.region = region
        self._server: _MotoServer | None = None
        self._clients: dict[str, Any] = {}
        self._notices: list[dict[str, Any]] = []
        self.port: int | None = None
        self.endpoint_url: str | None = None
        self.settings: AwsSettings | None = None
        self.topic_arn: str | None = None
        self.queue_url: str | None = None
        self.marker_queue_url: str | None = None

    # -- lifecycle --

    def __enter__(self) -> LocalAws:
        with LocalAws._active_lock:
            if LocalAws._active is not None:
                raise RuntimeError(
                    "another LocalAws is open in this process; moto's state is per process"
                )
            LocalAws._active = self
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> None:
        server = _MotoServer(_HOST, 0)
        server.start()
        self._server = server
        host, self.port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{self.port}"
        self.settings = AwsSettings(region=self.region, endpoint_url=self.endpoint_url)
        self._reset_moto()
        self._notices = []

        s3 = self.client("s3")
        if self.region == "us-east-1":
            s3.create_bucket(Bucket=self.bucket)
        else:
            s3.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": self.region},
            )
        # versioned as infra/template.yaml makes it: a run takes and moves exact versions
        s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        dynamodb = self.client("dynamodb")
        for definition in table_definitions():
            dynamodb.create_table(**definition)
        dynamodb.create_table(**lock_table_definition())
        dynamodb.update_time_to_live(
            TableName=LOCK_TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": LOCK_EXPIRY_ATTRIBUTE},
        )
        self.topic_arn = self.client("sns").create_topic(Name=TOPIC_NAME)["TopicArn"]
        sqs = self.client("sqs")
        self.queue_url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.client("sns").subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)
        self.marker_queue_url = sqs.create_queue(QueueName=MARKER_EVENTS_QUEUE)["QueueUrl"]
        marker_queue_arn = sqs.get_queue_attributes(
            QueueUrl=self.marker_queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        s3.put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": marker_queue_arn,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {
                            "Key": {
                                "FilterRules": [
                                    {"Name": "prefix", "Value": f"{INCOMING}/"},
                                    {"Name": "suffix", "Value": marker},
                                ]
                            }
                        },
                    }
                    for marker in MARKERS
                ]
            },
        )
        self._drain(self.marker_queue_url)  # S3's test event
        logger.info("local AWS at %s (bucket %s)", self.endpoint_url, self.bucket)

    def _stop(self) -> None:
        try:
            if self._server is not None:
                try:
                    self._reset_moto()
                finally:
                    for client in self._clients.values():
                        client.close()
                    self._clients.clear()
                    self._server.stop()
        finally:
            self._server = None
            with LocalAws._active_lock:
                if LocalAws._active is self:
                    LocalAws._active = None

    def _reset_moto(self) -> None:
        """Forget every emulated resource of this process (moto's state is process-wide)."""
        assert self.port is not None
        connection = http.client.HTTPConnection(_HOST, self.port, timeout=30)
        try:
            connection.request("POST", "/moto-api/reset")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")
        finally:
            connection.close()

    def client(self, service: str) -> Any:
        """A client of this emulator (one per service, closed on exit)."""
        if self._server is None or self.settings is None:
            raise RuntimeError("LocalAws is not open: use it as a context manager")
        if service not in self._clients:
            self._clients[service] = make_client(self.settings, service)
        return self._clients[service]

    # -- DynamoDB --

    def export_table(self, table: str, path: Path, *, page_size: int | None = None) -> int:
        """Write every item of ``table`` to ``path`` as JSON lines sorted by key; returns the count.

        Strings stay strings; numbers are JSON numbers written exactly (integral values without a
        decimal point, so they load as ints, others load as floats). Attributes that only feed an
        index (``contract.INDEX_ONLY_ATTRIBUTES``, e.g. ``order_month``) are left out: the export
        holds the KPI items as the contract defines them.
        """
        dynamodb = self.client("dynamodb")
        schema = dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]
        order = {"HASH": 0, "RANGE": 1}
        key = [k["AttributeName"] for k in sorted(schema, key=lambda k: order[k["KeyType"]])]
        index_only = set(INDEX_ONLY_ATTRIBUTES.get(table, ()))
        items = [
            {name: value for name, value in plain_item(item).items() if name not in index_only}
            for page in dynamodb.get_paginator("scan").paginate(
                TableName=table, PaginationConfig=_pages(page_size)
            )
            for item in page["Items"]
        ]
        items.sort(key=lambda item: tuple(item[name] for name in key))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for item in items:
                out.write(_json_text(item) + "\n")
        return len(items)

    def export_tables(self, out_dir: Path) -> dict[str, int]:
        """Export both KPI tables to ``out_dir`` (see ``EXPORT_FILES``); counts by table name."""
        return {
            table: self.export_table(table, out_dir / file_name)
            for table, file_name in EXPORT_FILES.items()
        }

    def import_table(self, table: str, path: Path) -> int:
        """Put every line of an export (:meth:`export_table`) back as an item of ``table``, with
        the index-only attributes it needs; returns the count. Numbers load as exact Decimals.
        Raises ValueError naming the line when one is not a JSON object."""
        items = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_float=Decimal)
            except ValueError:
                raise ValueError(f"{path}:{number}: not JSON") from None
            try:
                items.append(_import_item(table, row))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: not a KPI item ({error})") from None
        dynamodb = self.client("dynamodb")
        for start in range(0, len(items), BATCH_SIZE):
            chunk = items[start : start + BATCH_SIZE]
            send_batch(dynamodb, table, [{"PutRequest": {"Item": item}} for item in chunk])
        return len(items)

    def import_tables(self, out_dir: Path) -> dict[str, int]:
        """Load both exports of ``out_dir`` (see ``EXPORT_FILES``); counts by table name."""
        return {
            table: self.import_table(table, out_dir / file_name)
            for table, file_name in EXPORT_FILES.items()
        }

    # -- Notifications --

    def marker_events(self) -> list[dict[str, Any]]:
        """The S3 events of markers stored since the last call (each an S3 notification, as
        the trigger Lambda receives it), oldest first."""
        return [
            event
            for body in self._drain(self.marker_queue_url)
            if "Records" in (event := json.loads(body))
        ]

    def _drain(self, queue_url: str | None) -> list[str]:
        """Every message body waiting in the queue, which is left empty."""
        sqs = self.client("sqs")
        bodies: list[str] = []
        while True:
            messages = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return bodies
            bodies += [m["Body"] for m in messages]
            sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )

    def notifications(self) -> list[dict[str, Any]]:
        """Every notice published to the topic so far, oldest first.

        Each is ``{"subject": ..., "message": ...}``; the message is parsed when it is JSON. The
        queue is drained, and what was drained is kept, so later calls return earlier notices too.
        """
        self._notices += [_notice(body) for body in self._drain(self.queue_url)]
        return [dict(notice) for notice in self._notices]

    def export_notifications(self, path: Path) -> int:
        """Write :meth:`notifications` to ``path`` as JSON lines; returns the count."""
        notices = self.notifications()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for notice in notices:
                out.write(json.dumps(notice, ensure_ascii=False, sort_keys=True) + "\n")
        return len(notices)

    # -- S3 --

    @property
    def store(self) -> BucketStore:
        """The emulated bucket, with the same transfers the jobs use."""
        if self.settings is None:
            raise RuntimeError("LocalAws is not open: use it as a context manager")
        return BucketStore(self.bucket, self.settings)


def _import_item(table: str, row: Any) -> dict[str, Any]:
    """One exported line (parsed) as a low-level item of ``table``, index attributes added."""
    if not isinstance(row, dict):
        raise TypeError("not a JSON object")
    missing = [name for name in table_key(table) if row.get(name) is None]
    if missing:
        raise ValueError(f"no value for key {missing}")
    return to_dynamo_item({**row, **index_attributes(table, row)})


def _notice(body: str) -> dict[str, Any]:
    envelope = json.loads(body)
    message = envelope.get("Message")
    with contextlib.suppress(TypeError, ValueError):  # else plain text
        message = json.loads(message)
    return {"subject": envelope.get("Subject"), "message": message}


def _pages(page_size: int | None) -> dict[str, int]:
    return {"PageSize": page_size} if page_size else {}

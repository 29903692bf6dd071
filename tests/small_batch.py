"""A small valid batch (one product, two orders on 2025-03-01, one of them returned, two items),
for the tests that run the jobs' commands on a few rows: 18.49 revenue, return rate 0.5."""

from __future__ import annotations

PRODUCTS = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Books,Novel,Acme,9.99,Media
"""
ORDERS = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,returned,2025-03-01T11:00:00,2025-03-05T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,1
"""
ITEMS = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
1,1,10,5,delivered,2025-03-01T10:00:00,,,,9.99
2,2,11,5,returned,2025-03-01T11:00:00,,,,8.50
"""


def put_files(store, prefix: str, files: dict[str, str]) -> None:
    """Each file's text under ``prefix`` in the store."""
    for name, text in files.items():
        store.put_bytes(f"{prefix}{name}", text.encode(), content_type="text/csv")


def job_flags(aws, work) -> list[str]:
    """The flags that point a job's command at the emulator's bucket and endpoint."""
    return ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url, "--work-dir", str(work)]

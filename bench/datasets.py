"""Seeded benchmark datasets made by the project's generator, cached in ``.bench-cache/``.

A dataset is keyed by its target item count, the seed, the layout (days, part files) and the
generator's version (a hash of ``ecom_pipeline/local/generator.py``): change any of them and it is
generated anew; otherwise the cached files are reused between runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ecom_pipeline.core.contract import DATASET_ORDER, dataset_of_file
from ecom_pipeline.local import generator

# The generator draws 1-4 items per order with weights 40/30/20/10 %: 2.0 items per order.
ITEMS_PER_ORDER = 2.0
COMPLETE = "_complete.json"


def generator_version() -> str:
    """A short hash of the generator's source: its output changes only when this does."""
    return hashlib.sha256(Path(generator.__file__).read_bytes()).hexdigest()[:12]


@dataclass(frozen=True)
class BenchDataset:
    size: int  # the target number of order items
    root: Path
    orders: int
    order_items: int
    products: int
    bytes: int

    def files(self) -> dict[str, list[Path]]:
        return dataset_files(self.root)


def dataset_files(root: Path) -> dict[str, list[Path]]:
    """The CSV files of each dataset under root, by the contract's file naming rules."""
    found: dict[str, list[Path]] = {name: [] for name in DATASET_ORDER}
    for path in sorted(root.rglob("*.csv")):
        name = dataset_of_file(path.relative_to(root).as_posix())
        if name is not None:
            found[name].append(path)
    return found


def cache_key(size: int, seed: int, days: int, parts: int) -> str:
    return f"items{size}-seed{seed}-days{days}-parts{parts}-gen{generator_version()}"


def ensure_dataset(
    cache_dir: Path, size: int, *, seed: int = 7, days: int = 31, parts: int = 4
) -> tuple[BenchDataset, bool]:
    """The cached dataset of about ``size`` order items, generating it if needed.

    Returns (dataset, generated_now). Generation writes to a temporary folder that is renamed
    when complete, so an interrupted run never leaves a half-written dataset in the cache.
    """
    root = cache_dir / "data" / cache_key(size, seed, days, parts)
    marker = root / COMPLETE
    generated = False
    if not marker.exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        orders = max(1, round(size / ITEMS_PER_ORDER))
        summary = generator.generate(
            partial / "batch", orders, seed=seed, days=days, parts=min(parts, orders)
        )
        (partial / COMPLETE).write_text(
            json.dumps(
                {
                    "size": size,
                    "seed": seed,
                    "days": days,
                    "parts": parts,
                    "generator_version": generator_version(),
                    "orders": summary.orders,
                    "order_items": summary.order_items,
                    "products": summary.products,
                }
            )
        )
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        generated = True
    meta = json.loads(marker.read_text())
    batch = root / "batch"
    total = sum(p.stat().st_size for paths in dataset_files(batch).values() for p in paths)
    return (
        BenchDataset(
            size=size,
            root=batch,
            orders=meta["orders"],
            order_items=meta["order_items"],
            products=meta["products"],
            bytes=total,
        ),
        generated,
    )

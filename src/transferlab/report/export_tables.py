"""Dump the store's tables as CSV (standard library) or Parquet (pyarrow, the `parquet` extra)."""

from __future__ import annotations

import csv
from pathlib import Path

from transferlab.errors import UserError
from transferlab.store import Store

TABLES = ("runs", "evals", "curve", "studies")


def export_tables(store: Store, out: Path, fmt: str = "csv") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("--parquet needs pyarrow: pip install 'transferlab[parquet]'") from None
    for name in TABLES:
        header, rows = store.table(name)
        if fmt == "csv":
            path = out / f"{name}.csv"
            with path.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)
        else:
            path = out / f"{name}.parquet"
            columns = {h: [r[i] for r in rows] for i, h in enumerate(header)}
            pq.write_table(pa.table(columns), path)
        paths.append(path)
    return paths

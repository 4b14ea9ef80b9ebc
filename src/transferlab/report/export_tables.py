"""Dump the store's tables as CSV (standard library) or Parquet (pyarrow, the `parquet` extra)."""

from __future__ import annotations

import csv
from pathlib import Path

from transferlab.errors import UserError
from transferlab.store import Store

TABLES = ("runs", "evals", "curve", "studies")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads these as a formula (CSV injection)


def safe_cell(value):
    """A text cell that a spreadsheet would run as a formula, prefixed with ' (OWASP's advice); numbers
    (a negative metric) are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def export_tables(store: Store, out: Path, fmt: str = "csv", force: bool = False) -> list[Path]:
    """The store's tables as files in ``out``; a file that exists is replaced only with ``force``."""
    if not force:
        for name in TABLES:
            if (path := out / f"{name}.{fmt}").exists():
                raise UserError(f"--{fmt}: {path} exists; pass --force to replace it")
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
                writer.writerows([safe_cell(v) for v in r] for r in rows)
        else:
            path = out / f"{name}.parquet"
            columns = {h: [r[i] for r in rows] for i, h in enumerate(header)}
            pq.write_table(pa.table(columns), path)
        paths.append(path)
    return paths

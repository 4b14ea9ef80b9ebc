"""Dump the store's tables as CSV (standard library) or Parquet (pyarrow, the `parquet` extra), and read a CSV
dump back into a store (``transferlab report DIR`` reports a folder of exported tables, as it reports the store).

    export_tables(store, Path("dump"))                 # runs.csv, evals.csv, curve.csv, studies.csv, study_plan.csv ...
    import_tables(Path("dump"), Store("/tmp/x.db"))    # the same rows in a new store
"""

from __future__ import annotations

import csv
from pathlib import Path

from transferlab.errors import UserError
from transferlab.store import Store

TABLES = ("runs", "evals", "curve", "studies", "study_plan", "study_values")  # the report needs the plan too


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


def _read_cell(value: str):
    """A CSV cell as export wrote it: empty is NULL; a text that safe_cell prefixed loses its quote. SQLite's
    column types turn the digits of INTEGER and REAL columns back into numbers (Python wrote floats with repr,
    so they come back exactly)."""
    if value == "":
        return None
    if value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def import_tables(folder: Path, store: Store) -> list[str]:
    """Load the CSV tables of ``folder`` (as export_tables wrote them; runs.csv at least) into ``store``; returns
    the tables read. A missing runs.csv, an undecodable file or a column the store lacks: one line naming it."""
    if not (folder / "runs.csv").is_file():
        raise UserError(f"{folder}: no runs.csv; expected a folder written by `transferlab export --csv DIR`")
    csv.field_size_limit(2**31 - 1)  # a run's spec and summary are long JSON cells
    read = []
    for name in TABLES:
        path = folder / f"{name}.csv"
        if not path.is_file():
            continue
        try:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{path}: not a CSV table of `transferlab export --csv` ({e})") from None
        if not rows:
            raise UserError(f"{path}: empty; expected a header row (the table's columns)")
        header, body = rows[0], rows[1:]
        if bad := next((i for i, r in enumerate(body, 2) if len(r) != len(header)), None):
            raise UserError(f"{path}:{bad}: {len(body[bad - 2])} cells, expected {len(header)} (the header's columns)")
        store.load_table(name, header, [tuple(_read_cell(v) for v in r) for r in body], str(path))
        read.append(name)
    return read

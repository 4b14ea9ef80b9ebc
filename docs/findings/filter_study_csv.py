"""Keep one study's rows of `transferlab export --csv` tables (runs, evals, curve, studies, study_plan,
study_values), so that `transferlab report docs/findings/<folder>` reports it:

    transferlab export --store runs/findings.db --csv /tmp/all
    python docs/findings/filter_study_csv.py /tmp/all fpt-digits@cpu docs/findings/fpt-digits-cpu
"""

import csv
import sys
from pathlib import Path


def main(src: str, study: str, dst: str) -> None:
    csv.field_size_limit(10**9)
    src_dir, out = Path(src), Path(dst)
    out.mkdir(parents=True, exist_ok=True)

    def read(name):
        with (src_dir / f"{name}.csv").open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return reader.fieldnames, list(reader)

    def write(name, fields, rows):
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    planned = {r["run_id"] for r in read("study_plan")[1] if r["study"] == study}
    fields, runs = read("runs")  # the study's runs and those it reused from another study (same run id)
    keep = [r for r in runs if r["study"] == study or r["run_id"] in planned]
    uids = {r["uid"] for r in keep}
    write("runs", fields, keep)
    for name in ("evals", "curve"):
        fields, rows = read(name)
        write(name, fields, [r for r in rows if r["uid"] in uids])
    fields, rows = read("studies")
    write("studies", fields, [r for r in rows if r["name"] == study])
    for name in ("study_plan", "study_values"):  # the plan and the chosen LRs: `transferlab report DIR` needs them
        fields, rows = read(name)
        write(name, fields, [r for r in rows if r["study"] == study])
    print(f"{study}: {len(keep)} runs -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])

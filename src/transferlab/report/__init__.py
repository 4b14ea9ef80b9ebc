"""The report: what a store's runs say, read only from the store.

    cells.py          Cell: the runs of one task x arm over seeds, the unit of every table and figure
    document.py       write_report: Markdown and one self-contained HTML page; cells, the summary tables
    tables.py         per-cell statistics, tests against the baseline arm, LR and expected-max tables
    analysis.py       paired comparisons, conclusions, power planning, across tasks, prediction churn
    significance.py   the tests themselves (paired, TOST, Holm, power); stats.py: CIs and expected max
    plots.py          the study figures
    export_tables.py  the store's tables as CSV or Parquet
"""

from transferlab.report.cells import Cell, cells
from transferlab.report.document import summary_table, write_report

__all__ = ["Cell", "cells", "summary_table", "write_report"]

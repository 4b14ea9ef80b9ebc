"""Aligned plain-text tables of the command line (``transferlab runs``, ``--dry-run``, ``plan-seeds``).

A module of its own with no imports, so that listing runs never loads the report's numeric stack."""


def format_table(header: list[str], rows: list[list]) -> str:
    """Rows as aligned plain-text columns under a header and a rule (the CLI's tables)."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""What the benchmark scripts print and write: progress lines, rows, markdown tables and the JSON/CSV/markdown files."""
import csv
import json
import math
import sys
from pathlib import Path


def log(message):
    print(message, file=sys.stderr, flush=True)


def status_row(variant, status, reason=None):
    """A row's identity and status; measurements are added to it."""
    return {"name": variant.name, "label": variant.label, "backend": variant.backend, "device": variant.device,
            "precision": variant.precision, "status": status, "reason": reason}


def _cell(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if spec else str(value)


def markdown_table(rows, columns):
    """rows as a markdown table; columns: [(header, key, format spec)]. Missing values print as '-'."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), spec) for _, key, spec in columns) + " |")
    return "\n".join(lines)


def short_reason(row, limit=90):
    """The row's reason cut to one short line, for tables."""
    reason = " ".join((row.get("reason") or "").split())
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def write_report(out, stem, report, table):
    """{stem}.json (the whole report), {stem}.csv (its rows), {stem}.md (the table) in `out`; returns their paths."""
    from cirn.common.files import json_ready
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(json_ready(report), indent=2) + "\n")
    rows = json_ready(report["rows"])
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    paths["md"].write_text(table + "\n")
    return paths


def run_script(main):
    """Run a benchmark script's main(): user errors as one line, Ctrl-C as exit code 130."""
    from cirn.common.errors import CirnError
    try:
        main()
    except CirnError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)

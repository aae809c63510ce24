"""The ESVA paper's published numbers (Tables 2-7), loaded from `paper_numbers.json` (package data).

The file holds every value exactly as the paper prints it (strings: "0.8943", "-0.14%", "-0"; a blank cell
is null), each with its table, row and column, and the row's line of the extracted paper text verbatim.
They are the paper's results on the real corpora, for layout and comparison only: nothing in esva computes
with them or presents them as its own results.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

DATA_FILES = ("paper_numbers.json",)  # package data; pipeline/deps.py makes it a code dep of the stages importing this
PATH = Path(__file__).with_name(DATA_FILES[0])


class PaperNumberError(KeyError):
    pass


@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_paper_numbers(path: str | Path = PATH) -> dict:
    """The whole document: `source`, `notes`, and `tables` (each: table, title, dataset, columns, rows)."""
    return _load(str(path))


def paper_table(table: int, doc: dict | None = None) -> dict:
    """One table (2-7): {"table", "title", "dataset", "columns", "rows": [{"row", "printed", "values", "note"?}]}."""
    doc = load_paper_numbers() if doc is None else doc
    for t in doc["tables"]:
        if t["table"] == table:
            return t
    raise PaperNumberError(f"the paper numbers have no table {table}")


def paper_value(table: int, row: str, column: str, doc: dict | None = None) -> str | None:
    """The value printed in `table`, `row`, `column`, as a string (None for a blank cell)."""
    t = paper_table(table, doc)
    for r in t["rows"]:
        if r["row"] == row:
            if column not in r["values"]:
                raise PaperNumberError(f"table {table} has no column {column!r} (columns: {t['columns']})")
            return r["values"][column]
    raise PaperNumberError(f"table {table} has no row {row!r}")


def paper_entries(doc: dict | None = None) -> list[dict]:
    """Every value, flat: [{"table", "row", "column", "value"}], in the paper's order."""
    doc = load_paper_numbers() if doc is None else doc
    return [{"table": t["table"], "row": r["row"], "column": c, "value": r["values"][c]}
            for t in doc["tables"] for r in t["rows"] for c in t["columns"]]

"""Result tables written twice: CSV for machines, Markdown for people.

The CSV keeps every value at full precision; the Markdown rounds each column
with its own format and carries the table's title and notes (what was
measured, on what, and how to read it), so a Markdown table can be read on
its own in the run report.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass
class Table:
  """A titled table of results.

  Attributes:
    title: one line saying what the table shows.
    columns: column names.
    rows: one sequence of values per row, in column order (str, int, float,
      None; numpy scalars are fine).
    formats: Markdown format spec per column name (e.g. '.3f'); columns not
      listed print floats with '.4g'.
    notes: sentences printed under the Markdown table (method, caveats).
  """

  title: str
  columns: Sequence[str]
  rows: List[Sequence[Any]] = dataclasses.field(default_factory=list)
  formats: Dict[str, str] = dataclasses.field(default_factory=dict)
  notes: List[str] = dataclasses.field(default_factory=list)

  def add(self, *values: Any) -> None:
    """Appends a row; raises if it does not have one value per column."""
    if len(values) != len(self.columns):
      raise ValueError(
          f"table {self.title!r} has {len(self.columns)} columns "
          f"{list(self.columns)}, got a row of {len(values)} values")
    self.rows.append(list(values))

  def column(self, name: str) -> List[Any]:
    """The values of one column, in row order."""
    return [row[list(self.columns).index(name)] for row in self.rows]

  def to_markdown(self) -> str:
    """The table as Markdown: a '### title' line, the table, the notes."""
    cells = [[_format(v, self.formats.get(c)) for c, v in zip(self.columns, row)]
             for row in self.rows]
    lines = [f"### {self.title}", "",
             "| " + " | ".join(self.columns) + " |",
             "|" + "|".join("---" for _ in self.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if self.notes:
      lines.append("")
      lines += [f"- {note}" for note in self.notes]
    return "\n".join(lines) + "\n"

  def write(self, directory: str, name: str) -> Tuple[str, str]:
    """Writes `directory/name.csv` and `directory/name.md`.

    Args:
      directory: an existing folder.
      name: file stem.

    Returns:
      The CSV and Markdown paths.
    """
    csv_path = os.path.join(directory, name + ".csv")
    md_path = os.path.join(directory, name + ".md")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(self.columns)
      writer.writerows([[_plain(v) for v in row] for row in self.rows])
    with open(md_path, "w", encoding="utf-8") as f:
      f.write(self.to_markdown())
    return csv_path, md_path


def _plain(value: Any) -> Any:
  if value is None:
    return ""
  if isinstance(value, np.generic):
    return value.item()
  return value


def _format(value: Any, spec: Optional[str]) -> str:
  value = _plain(value)
  if value == "":
    return "–"
  if isinstance(value, float):
    if math.isnan(value):
      return "–"
    return format(value, spec or ".4g")
  if isinstance(value, int) and not isinstance(value, bool) and spec:
    return format(value, spec)
  return str(value).replace("|", "\\|")


def read_csv(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
  """Reads a table written by `Table.write`.

  Args:
    path: a CSV file.

  Returns:
    `(columns, rows)`, rows as dicts of strings.
  """
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    return list(reader.fieldnames or []), list(reader)


def summary(values) -> Dict[str, float]:
  """Mean, standard deviation, median and count of a sample.

  Args:
    values: a 1-D sequence of floats; non-finite values are counted apart.

  Returns:
    {'mean', 'std', 'median', 'n', 'n_nonfinite'}; NaN statistics for an
    empty sample.
  """
  values = np.asarray(values, np.float64).reshape(-1)
  finite = values[np.isfinite(values)]
  if not finite.size:
    return dict(mean=math.nan, std=math.nan, median=math.nan, n=0,
                n_nonfinite=int(values.size))
  return dict(mean=float(finite.mean()), std=float(finite.std()),
              median=float(np.median(finite)), n=int(finite.size),
              n_nonfinite=int(values.size - finite.size))

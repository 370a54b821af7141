"""One Markdown report per run folder, gathering every task's results.

    RUN/report.md   sections per task and dataset: what ran (size, images,
                    key fingerprint, time), each table, each figure

Tables are the tasks' own Markdown files, included verbatim; figures are
linked by relative path, so the report renders wherever the run folder is
copied.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import List, Tuple

from etcjax import files
from etcjax.evaluation import outputs

REPORT_FILE = "report.md"
TASK_ORDER = ("brute_force", "compressibility", "visual", "attacks",
              "key_recovery", "accuracy")
# Tables and figures first in a section, in this order; the rest follow
# alphabetically.
PREFERRED = ("ratios", "paper_table_iv", "file_sizes", "visual_information",
             "ssim_psnr", "jigsaw", "brute_force", "learned", "accuracy",
             "rate_distortion", "breaking_point", "table", "settings")
_META_SHOWN = ("size", "images", "test_images", "public_images",
               "jigsaw_images", "schemes", "ciphertexts", "pairs",
               "attacks", "codecs", "key_fingerprint", "model", "export",
               "finished", "seconds")


def _sections(run_dir: str) -> List[Tuple[str, str]]:
  """(title, folder) of every completed task folder, in report order."""
  found = []
  tasks = [t for t in TASK_ORDER if os.path.isdir(os.path.join(run_dir, t))]
  tasks += sorted(t for t in os.listdir(run_dir)
                  if t not in tasks and not t.startswith(".")
                  and os.path.isdir(os.path.join(run_dir, t)))
  for task in tasks:
    folder = os.path.join(run_dir, task)
    if os.path.exists(os.path.join(folder, outputs.META_FILE)):
      found.append((task, folder))
    for name in sorted(os.listdir(folder)):
      sub = os.path.join(folder, name)
      if (not name.startswith(".") and os.path.isdir(sub)
          and os.path.exists(os.path.join(sub, outputs.META_FILE))):
        found.append((f"{task} / {name}", sub))
  return found


def _ordered(names: List[str], suffix: str) -> List[str]:
  stems = sorted(n[:-len(suffix)] for n in names if n.endswith(suffix))
  first = [s for s in PREFERRED if s in stems]
  return [s + suffix for s in first + [s for s in stems if s not in first]]


def build(run_dir: str) -> str:
  """The report's Markdown text for a run folder.

  Args:
    run_dir: a folder written by `python -m etcjax.evaluate <task> --out=`.

  Returns:
    Markdown.

  Raises:
    FileNotFoundError: the folder does not exist or holds no results.
  """
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"run folder {run_dir} does not exist")
  sections = _sections(run_dir)
  if not sections:
    raise FileNotFoundError(
        f"{run_dir} holds no completed evaluation results (folders with "
        f"{outputs.META_FILE}); run `python -m etcjax.evaluate <task> "
        f"--out={run_dir}` first")
  now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  lines = ["# etcjax evaluation report", "",
           f"Run folder `{os.path.abspath(run_dir)}`, report written {now}.", "",
           "## Contents", ""]
  lines += [f"- [{title}](#{_anchor(title)})" for title, _ in sections]
  for title, folder in sections:
    with open(os.path.join(folder, outputs.META_FILE), encoding="utf-8") as f:
      meta = json.load(f)
    lines += ["", f"## {title}", ""]
    shown = [f"{k}: {meta[k]}" for k in _META_SHOWN if k in meta]
    lines += ["*" + "; ".join(str(s) for s in shown) + "*", ""]
    files = os.listdir(folder)
    for name in _ordered(files, ".md"):
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        lines += [f.read().rstrip(), ""]
      csv_name = name[:-3] + ".csv"
      if csv_name in files:
        lines += [f"([{csv_name}]({_rel(run_dir, folder, csv_name)}))", ""]
    for name in _ordered(files, ".png"):
      lines += [f"![{name}]({_rel(run_dir, folder, name)})", ""]
  return "\n".join(lines).rstrip() + "\n"


def _rel(run_dir: str, folder: str, name: str) -> str:
  return os.path.relpath(os.path.join(folder, name), run_dir).replace(os.sep, "/")


def _anchor(title: str) -> str:
  # GitHub-style heading anchors.
  keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
  return keep.replace(" ", "-")


def write(run_dir: str, overwrite: bool = False) -> str:
  """Writes `run_dir/report.md` (atomically).

  Args:
    run_dir: the run folder.
    overwrite: replace an existing report.

  Returns:
    The report's path.
  """
  path = os.path.join(run_dir, REPORT_FILE)
  text = build(run_dir)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(
        f"{path} exists; pass --overwrite to write it again")
  files.atomic_write(path, text.encode("utf-8"))
  return path

"""Tables, atomic task folders and the run report."""

import csv
import json
import os

import numpy as np
import pytest

from etcjax.evaluation import figures
from etcjax.evaluation import outputs
from etcjax.evaluation import report
from etcjax.evaluation import tables


def _table():
  table = tables.Table("Sizes", ["codec", "MiB", "ratio"],
                       formats={"MiB": ".2f", "ratio": ".4f"},
                       notes=["a note"])
  table.add("JPEG | QF85", 68.7049, np.float64(1.00441))
  table.add("raw", 178.2, None)
  return table


def test_table_markdown_and_csv(tmp_path):
  table = _table()
  md = table.to_markdown()
  assert "### Sizes" in md
  assert "| JPEG \\| QF85 | 68.70 | 1.0044 |" in md
  assert "| raw | 178.20 | – |" in md
  assert md.rstrip().endswith("- a note")
  csv_path, md_path = table.write(str(tmp_path), "sizes")
  with open(csv_path, newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["codec", "MiB", "ratio"]
  assert rows[1] == ["JPEG | QF85", "68.7049", "1.00441"]
  assert rows[2] == ["raw", "178.2", ""]
  with pytest.raises(ValueError, match="3 columns"):
    table.add("too", "few")


def test_summary_counts_non_finite_values_apart():
  s = tables.summary([1.0, 3.0, np.inf, np.nan])
  assert (s["mean"], s["median"], s["n"], s["n_nonfinite"]) == (2.0, 2.0, 2, 2)
  assert np.isnan(tables.summary([])["mean"])


def test_task_output_is_atomic_and_refuses_to_overwrite(tmp_path):
  out = outputs.TaskOutput(str(tmp_path), "visual", "cifar10",
                           meta={"key_fingerprint": "abcd"})
  with pytest.raises(RuntimeError):
    with out as folder:
      _table().write(folder, "t")
      raise RuntimeError("crash mid-way")
  assert not os.path.exists(out.path)
  assert os.listdir(tmp_path / "visual") == []  # No partial folder left.
  with out as folder:
    _table().write(folder, "t")
  meta = json.load(open(os.path.join(out.path, outputs.META_FILE)))
  assert meta["task"] == "visual" and meta["dataset"] == "cifar10"
  with pytest.raises(FileExistsError, match="--overwrite"):
    outputs.TaskOutput(str(tmp_path), "visual", "cifar10")
  again = outputs.TaskOutput(str(tmp_path), "visual", "cifar10", overwrite=True)
  with again as folder:
    pass
  assert os.listdir(again.path) == [outputs.META_FILE]


def test_report_gathers_tables_and_figures(tmp_path):
  with pytest.raises(FileNotFoundError, match="no completed"):
    report.build(str(tmp_path))
  out = outputs.TaskOutput(str(tmp_path), "compressibility", "cifar10",
                           meta={"size": "smoke", "images": 300})
  with out as folder:
    _table().write(folder, "ratios")
    figures.box_plot({"etc": {"a": np.arange(5.0)}},
                     os.path.join(folder, "box.png"), "SSIM", "title")
  path = report.write(str(tmp_path))
  text = open(path).read()
  assert "## compressibility / cifar10" in text
  assert "| JPEG \\| QF85 | 68.70 | 1.0044 |" in text
  assert "![box.png](compressibility/cifar10/box.png)" in text
  assert "size: smoke; images: 300" in text
  with pytest.raises(FileExistsError, match="--overwrite"):
    report.write(str(tmp_path))
  report.write(str(tmp_path), overwrite=True)


def test_image_grid_marks_inapplicable_cells(tmp_path):
  image = np.zeros((8, 8, 3), np.uint8)
  path = figures.image_grid([[image, None], [image, image[..., :1]]],
                            ["etc", "pe"], ["plain", "jigsaw"],
                            str(tmp_path / "grid.png"))
  assert os.path.getsize(path) > 0
  with pytest.raises(ValueError, match="labels"):
    figures.image_grid([[image]], ["a", "b"], ["c"], str(tmp_path / "x.png"))


def test_task_output_times_work_done_before_entering(tmp_path, monkeypatch):
  # adapt compare computes everything, then enters to write: its meta must
  # not say it took 0 seconds.
  now = [100.0]
  monkeypatch.setattr(outputs.time, "time", lambda: now[0])
  out = outputs.TaskOutput(str(tmp_path), "task", "data")
  now[0] = 130.0  # the work
  with out as folder:
    open(os.path.join(folder, "t.md"), "w").close()
    now[0] = 142.5
  with open(os.path.join(out.path, outputs.META_FILE)) as f:
    assert json.load(f)["seconds"] == 42.5

"""Visual information of encrypted images (the paper's Fig. 7).

How much an encrypted image, looked at without the key, resembles its plain
image: LPIPS (v0.1, AlexNet) and SSIM between every plain test image and its
encrypted version, as box plots and a table per scheme. Encrypted images of
grayscale-based EtC are compared as `visual_metrics.as_rgb` shows them.
"""

from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

import numpy as np
import tqdm

from etcjax import encryption
from etcjax.evaluation import figures
from etcjax.evaluation import outputs
from etcjax.evaluation import sources
from etcjax.evaluation import tables
from etcjax.evaluation import visual_metrics

DEFAULT_SCHEMES = ("pe", "ele", "le", "etc", "etc_gray")
SIZES = {
    "smoke": {"cifar10": 200, "imagenette": 16},
    "full": {"cifar10": None, "imagenette": None},
}


def run(dataset: str, key: bytes, out_dir: str, *, size: str = "smoke",
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        data_dir: Optional[str] = None, imagenette_dir: Optional[str] = None,
        overwrite: bool = False, limit: Optional[int] = None,
        progress: bool = True) -> str:
  """Runs the visual-information task on one dataset.

  Args:
    dataset: 'cifar10' or 'imagenette'.
    key: the key images are encrypted with (only its fingerprint is kept).
    out_dir: the run folder; results go to `out_dir/visual/<dataset>/`.
    size: 'smoke' or 'full' (image counts in `SIZES`).
    schemes: schemes to measure.
    data_dir: tfds data_dir (cifar10).
    imagenette_dir: Imagenette folder (imagenette).
    overwrite: replace existing results.
    limit: override the size's image count.
    progress: show progress bars.

  Returns:
    The result folder.
  """
  sources.check_dataset(dataset)
  sources.check_size(size, SIZES)
  sources.check_limit(limit)
  for scheme in schemes:
    encryption.get_scheme(scheme)
  output = outputs.TaskOutput(out_dir, "visual", dataset, overwrite, meta=dict(
      size=size, schemes=list(schemes),
      key_fingerprint=encryption.fingerprint(key), lpips="v0.1 alexnet"))
  split = sources.DATASETS[dataset][0]
  test = sources.load(dataset, split, data_dir=data_dir,
                      imagenette_dir=imagenette_dir,
                      limit=limit or SIZES[size][dataset], progress=progress)
  lpips = visual_metrics.lpips_model("alexnet")
  output.meta.update(images=len(test), split=split)
  with output as folder:
    table = tables.Table(
        f"{dataset}: visual information of encrypted images ({len(test):,} "
        f"{split} images)",
        ["scheme", "block size", "LPIPS mean", "LPIPS std", "LPIPS median",
         "SSIM mean", "SSIM std", "SSIM median"],
        formats={c: ".3f" for c in ("LPIPS mean", "LPIPS std", "LPIPS median",
                                    "SSIM mean", "SSIM std", "SSIM median")},
        notes=["Plain vs encrypted image, no attack. LPIPS v0.1 with AlexNet "
               "(0: identical; higher: less alike); SSIM (1: identical). "
               "The paper's Fig. 7 shows these as box plots for PE, ELE and "
               "EtC.",
               "etc_gray images are compared after reading their Y, Cb, Cr "
               "planes as an RGB image."])
    boxes = {"LPIPS": {}, "SSIM": {}}
    with open(os.path.join(folder, "per_image.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["scheme", "image_index", "lpips", "ssim"])
      for scheme in tqdm.tqdm(schemes, desc=f"visual information {dataset}",
                              disable=not progress):
        spec = encryption.get_scheme(scheme)
        encrypted = visual_metrics.as_rgb(sources.encrypt(test, key, scheme),
                                          spec.representation)
        lp = lpips(test.images, encrypted)
        ss = visual_metrics.ssim(test.images, encrypted)
        boxes["LPIPS"][scheme], boxes["SSIM"][scheme] = lp, ss
        a, b = tables.summary(lp), tables.summary(ss)
        table.add(scheme, spec.default_block_size, a["mean"], a["std"],
                  a["median"], b["mean"], b["std"], b["median"])
        writer.writerows([scheme, int(i), f"{x:.6f}", f"{y:.6f}"]
                         for i, x, y in zip(test.indices, lp, ss))
    table.write(folder, "visual_information")
    figures.box_plot(boxes, os.path.join(folder, "visual_information.png"),
                     "plain vs encrypted",
                     f"{dataset}: LPIPS (higher: less alike) and SSIM (lower: "
                     "less alike) of encrypted images")
  return output.path

"""The key_recovery task: what an adversary holding N ciphertexts of one key recovers.

For one dataset, every evaluated image is encrypted with ONE key (as for
training). For each scheme and each N, the ciphertext-only attack
(`attacks.same_key`) sees N of the ciphertexts (evenly spaced, so every
class is represented) and public plain images (the training split); the
known-plaintext attack (`attacks.known_plaintext`) sees N plain/encrypted
pairs. Each recovered effective key then decrypts the WHOLE evaluated set,
scored against the truth by `key_recovery_scoring`. Writes

    RUN/key_recovery/<dataset>/
      table.{csv,md}          one row per (scheme, attack, N)
      breaking_point.{csv,md} per scheme and attack: the smallest N that
                              recovers the content / the key
      recovery_*.png          SSIM (as decrypted, up to the mirror) and
                              exact blocks against N
      examples_<i>.png        decryptions of two images at every N
      meta.json
    RUN/key_recovery/<dataset>-settings/   the same for the settings a user
                              can choose (block sizes, steps), `--settings`

No key, plan or recovered permutation is written: only scores and the
example decryptions. Finished (scheme, attack, N) pieces are kept in a
resume store, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tqdm

from etcjax import encryption
from etcjax.evaluation import figures
from etcjax.evaluation import key_recovery_scoring
from etcjax.evaluation import outputs
from etcjax.evaluation import requests
from etcjax.evaluation import resume
from etcjax.evaluation import sources
from etcjax.evaluation import tables
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import known_plaintext
from etcjax.evaluation.attacks import same_key

TASK = "key_recovery"
CIPHERTEXT_ONLY = "ciphertext_only"
KNOWN_PLAINTEXT = "known_plaintext"
ATTACKS = (CIPHERTEXT_ONLY, KNOWN_PLAINTEXT)
DEFAULT_SCHEMES = ("etc", "etc_gray", "block_common", "le", "ele", "pe",
                   "pe_per_image")
ALL = "all"
DEFAULT_CIPHERTEXTS = (1, 2, 5, 10, 20, 50, 100, 1000, ALL)
DEFAULT_PAIRS = (1, 2, 5, 10)

# Readings of a row (share of exactly decrypted blocks; mean SSIM).
KEY_RECOVERED = 0.9
CONTENT_SSIM = 0.5
PARTIAL_SSIM = 0.2


@dataclasses.dataclass(frozen=True)
class Setting:
  """A choice a data owner can make: scheme, block size, steps."""

  name: str
  scheme: str
  block_size: Optional[int] = None
  steps: Optional[Tuple[str, ...]] = None


# What a user can pick: block sizes (32x32 and 224x224 images are
# multiples of 4, 8, 16 and 32; B=32 leaves CIFAR-10 one block), grayscale
# EtC and subsets of EtC's steps.
SETTINGS = (
    Setting("etc B=4", "etc", 4), Setting("etc B=8", "etc", 8),
    Setting("etc B=16", "etc", 16), Setting("etc B=32", "etc", 32),
    Setting("etc_gray B=4", "etc_gray", 4),
    Setting("etc_gray B=8", "etc_gray", 8),
    Setting("etc_gray B=16", "etc_gray", 16),
    Setting("etc scramble only", "etc", 16, ("scramble",)),
    Setting("etc scramble+rotate_flip", "etc", 16, ("scramble", "rotate_flip")),
    Setting("etc no scramble", "etc", 16, ("rotate_flip", "negpos", "channel")),
    Setting("block_common B=8", "block_common", 8),
    Setting("block_common B=16", "block_common", 16),
)


@dataclasses.dataclass(frozen=True)
class Size:
  test_images: Dict[str, Optional[int]]
  public_images: Dict[str, Optional[int]]


SIZES = {
    "smoke": Size({"cifar10": 200, "imagenette": 24},
                  {"cifar10": 1000, "imagenette": 100}),
    "full": Size({"cifar10": None, "imagenette": None},
                 {"cifar10": 5000, "imagenette": 1000}),
}


def parse_counts(text: Union[str, Sequence]) -> List[Union[int, str]]:
  """'1,2,5,all' -> [1, 2, 5, 'all'] (positive integers or 'all')."""
  items = text.split(",") if isinstance(text, str) else list(text)
  out = []
  for item in items:
    item = str(item).strip()
    if not item:
      continue
    if item == ALL:
      out.append(ALL)
      continue
    try:
      value = int(item)
    except ValueError:
      raise requests.RequestError(
          f"ciphertext counts are positive integers or 'all', got {item!r}"
      ) from None
    if value < 1:
      raise requests.RequestError(f"ciphertext counts must be positive, got {value}")
    out.append(value)
  if not out:
    raise requests.RequestError("no ciphertext counts given (e.g. 1,10,100,all)")
  return out


def _counts(requested, available: int) -> List[int]:
  counts = sorted({available if c == ALL else min(int(c), available)
                   for c in requested})
  return counts


def verdict(blocks_exact: float, ssim: float,
            ssim_up_to_mirror: Optional[float] = None) -> str:
  """Reading of one row."""
  if not np.isfinite(ssim):
    return ""
  if blocks_exact >= KEY_RECOVERED:
    return "BROKEN: key recovered"
  if ssim >= CONTENT_SSIM:
    return "BROKEN: content recovered"
  if ssim_up_to_mirror is not None and ssim_up_to_mirror >= CONTENT_SSIM:
    return "BROKEN: content recovered, mirrored"
  if max(ssim, ssim_up_to_mirror or 0.0) >= PARTIAL_SSIM:
    return "partial"
  return "resisted"


def _table(dataset: str, settings: bool) -> tables.Table:
  columns = (["setting", "block_size", "steps"] if settings else []) + [
      "scheme", "attack", "ciphertexts", "edge_images", "neighbours",
      "blocks_exact", "values_exact", "ssim", "ssim_up_to_mirror", "seconds",
      "verdict"]
  return tables.Table(
      f"{dataset}: same-key key recovery from N ciphertexts (or N known "
      "pairs), scored over every evaluated image",
      columns,
      formats={"neighbours": ".3f", "blocks_exact": ".3f",
               "values_exact": ".3f", "ssim": ".3f",
               "ssim_up_to_mirror": ".3f", "seconds": ".1f"},
      notes=[
          "Every image is encrypted with ONE key, as for training. "
          "ciphertext_only: the attack sees N ciphertexts (evenly spaced over "
          "the evaluated set) and public plain images of the training split, "
          "never the key; known_plaintext: N plain/encrypted pairs. The "
          "recovered effective key then decrypts every evaluated image.",
          "neighbours: share of adjacent plain blocks adjacent again after "
          "decryption (best global symmetry; '–' for schemes without block "
          "scrambling); blocks_exact: share of B x B blocks (pixels for PE) "
          "decrypted exactly; values_exact: share of the key's value "
          "positions and masks recovered; ssim: mean SSIM of the decryptions "
          "against the plain images; ssim_up_to_mirror: the same, of the "
          "decryptions or of their left-right mirror images, whichever "
          "scores higher (one global choice, measured on up to 500 evenly "
          "spaced images); edge_images: ciphertexts used for the "
          "pooled block-edge statistics (capped by a compute budget).",
          f"Verdict: blocks_exact >= {KEY_RECOVERED} 'BROKEN: key "
          f"recovered'; else SSIM >= {CONTENT_SSIM} 'BROKEN: content "
          f"recovered' ('mirrored' when only ssim_up_to_mirror reaches it: "
          "a left-right mirror of the whole image is invisible to the "
          f"adversary's statistics); >= {PARTIAL_SSIM} partial; else "
          "resisted.",
          "pe_per_image (a key per image) is the control: pooling cannot "
          "help there."])


def _breaking_table(dataset: str, rows: List[dict]) -> tables.Table:
  table = tables.Table(
      f"{dataset}: ciphertexts (or known pairs) that suffice to break each "
      "scheme under one key",
      ["scheme", "attack", "content recovered at N", "key recovered at N",
       "largest N tried", "best ssim", "best blocks_exact"],
      formats={"best ssim": ".3f", "best blocks_exact": ".3f"},
      notes=["Smallest N tried whose decryption of the whole evaluated set "
             f"reaches mean SSIM >= {CONTENT_SSIM}, up to a global mirror "
             "(content) / "
             f">= {KEY_RECOVERED} exactly decrypted blocks (key); '–': not "
             "reached at any N tried."])
  keyed: Dict[Tuple[str, str], List[dict]] = {}
  for row in rows:
    keyed.setdefault((row["label"], row["attack"]), []).append(row)
  for (label, attack), group in keyed.items():
    group = sorted((r for r in group if np.isfinite(r["ssim"])),
                   key=lambda r: r["ciphertexts"])
    if not group:
      continue
    content = next((r["ciphertexts"] for r in group
                    if max(r["ssim"], r.get("ssim_up_to_mirror") or 0.0)
                    >= CONTENT_SSIM
                    or r["blocks_exact"] >= KEY_RECOVERED), None)
    keyn = next((r["ciphertexts"] for r in group
                 if r["blocks_exact"] >= KEY_RECOVERED), None)
    table.add(label, attack, content, keyn, group[-1]["ciphertexts"],
              max(r["ssim"] for r in group),
              max(r["blocks_exact"] for r in group))
  return table


def run(dataset: str, key: bytes, out_dir: str, *, size: str = "smoke",
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        ciphertexts: Sequence = DEFAULT_CIPHERTEXTS,
        pairs: Sequence = DEFAULT_PAIRS,
        attacks: Sequence[str] = ATTACKS, settings: bool = False,
        data_dir: Optional[str] = None, imagenette_dir: Optional[str] = None,
        overwrite: bool = False, test_limit: Optional[int] = None,
        seed: int = 0, progress: bool = True) -> str:
  """Runs the key_recovery task on one dataset.

  Args:
    dataset: 'cifar10' or 'imagenette'.
    key: the secret key (only its fingerprint is recorded).
    out_dir: the run folder.
    size: 'smoke' or 'full' (`SIZES`).
    schemes: schemes to attack (ignored with `settings`).
    ciphertexts: N values for the ciphertext-only attack (ints or 'all').
    pairs: k values for the known-plaintext attack.
    attacks: a subset of `ATTACKS`.
    settings: attack the user-selectable `SETTINGS` instead of `schemes`,
      into `<dataset>-settings/`.
    data_dir, imagenette_dir: where the data is.
    overwrite: replace existing results (and discard a resume store).
    test_limit: evaluated images (default: the size's).
    seed: seed of the attacks' random choices.
    progress: show progress bars.

  Returns:
    The result folder.
  """
  sources.check_dataset(dataset)
  sources.check_size(size, SIZES)
  sources.check_limit(test_limit)
  ciphertexts = parse_counts(ciphertexts)
  pairs = parse_counts(pairs)
  unknown = set(attacks) - set(ATTACKS)
  if unknown or not attacks:
    raise requests.RequestError(f"unknown attacks {sorted(unknown)}; known: {list(ATTACKS)}")
  if settings:
    chosen = list(SETTINGS)
  else:
    if not schemes:
      raise requests.RequestError(f"no schemes given; known: {sorted(encryption.SCHEMES)}")
    for scheme in schemes:
      encryption.get_scheme(scheme)
    chosen = [Setting(s, s) for s in schemes]
  preset = SIZES[size]
  name = f"{dataset}-settings" if settings else dataset
  output = outputs.TaskOutput(
      out_dir, TASK, name, overwrite,
      meta=dict(size=size, schemes=[s.name for s in chosen],
                ciphertexts=[str(c) for c in ciphertexts],
                pairs=[str(c) for c in pairs], attacks=list(attacks),
                seed=seed, key_fingerprint=encryption.fingerprint(key)))
  eval_split, public_split = sources.DATASETS[dataset]
  test = sources.load(dataset, eval_split, data_dir=data_dir,
                      imagenette_dir=imagenette_dir,
                      limit=test_limit or preset.test_images[dataset],
                      progress=progress)
  public = sources.load(dataset, public_split, data_dir=data_dir,
                        imagenette_dir=imagenette_dir,
                        limit=preset.public_images[dataset], progress=progress)
  shape = test.images.shape[1:]
  plan_args = []
  for setting in chosen:  # Geometry errors before any work.
    try:
      encryption.make_plan(
          key, "pe" if setting.scheme == "pe_per_image" else setting.scheme,
          shape, setting.block_size, setting.steps)
      plan_args.append(setting)
    except (encryption.SchemeParameterError,
            encryption.InvalidStepsError) as e:  # This dataset's shape.
      if not settings:
        raise
      print(f"skipping setting {setting.name!r} on {dataset}: {e}")
  chosen = plan_args
  examples = [int(i) for i in sources.subset(len(test), 2)]
  output.meta.update(test_images=len(test), public_images=len(public),
                     eval_split=eval_split, public_split=public_split)
  store = resume.ResumeStore(output.path, output.meta, overwrite)
  if store.resumed and progress:
    print(f"resuming: {len(store.resumed)} finished pieces in {store.path}")

  jobs = []
  for setting in chosen:
    for attack in attacks:
      counts = ciphertexts if attack == CIPHERTEXT_ONLY else pairs
      for n in _counts(counts, len(test)):
        jobs.append((setting, attack, n))
  rows, grids = [], {i: {} for i in examples}
  encrypted_cache: Dict[str, np.ndarray] = {}
  with output as folder:
    for setting, attack, n in tqdm.tqdm(jobs, desc=f"key recovery on {dataset}",
                                        disable=not progress):
      unit = _unit(setting, attack, n)
      if not store.has(unit):
        if setting.name not in encrypted_cache:
          encrypted_cache.clear()  # One scheme's ciphertexts at a time.
          encrypted_cache[setting.name] = (
              _encrypt_steps(test, key, setting) if setting.steps else
              sources.encrypt(test, key, setting.scheme, setting.block_size))
        encrypted = encrypted_cache[setting.name]
        arrays, info = _attack(setting, attack, n, test, public, encrypted,
                               key, examples, seed, progress)
        store.save(unit, arrays, info)
      arrays, info = store.load(unit)
      rows.append(info)
      for example in examples:
        if f"grid_{example}" in arrays:
          grids[example].setdefault(setting.name, {})[
              (attack, n)] = arrays[f"grid_{example}"]
    for setting in chosen:
      few = sources.Images(test.dataset, test.split, test.images[examples],
                           test.labels[examples], test.indices[examples],
                           test.label_names)
      shown = (_encrypt_steps(few, key, setting) if setting.steps else
               sources.encrypt(few, key, setting.scheme, setting.block_size))
      shown = visual_metrics.as_rgb(shown, _representation(setting))
      for j, example in enumerate(examples):
        grids[example].setdefault(setting.name, {})["encrypted_grid"] = shown[j]
    table = _table(dataset, settings)
    for r in rows:
      prefix = ([r["label"], r["block_size"], r["steps"]] if settings else [])
      table.add(*prefix, r["scheme"], r["attack"], r["ciphertexts"],
                r["edge_images"], r["neighbours"], r["blocks_exact"],
                r["values_exact"], r["ssim"], r.get("ssim_up_to_mirror"),
                r["seconds"],
                r["verdict"])
    table.write(folder, "settings" if settings else "table")
    _breaking_table(dataset, rows).write(folder, "breaking_point")
    _figures(folder, dataset, rows, grids, test, [s.name for s in chosen],
             attacks)
  store.clear()
  return output.path


def _representation(setting: Setting) -> str:
  return encryption.get_scheme(setting.scheme).representation


def _encrypt_steps(test, key, setting) -> np.ndarray:
  parts = []
  for start in range(0, len(test), 2048):
    parts.append(encryption.encrypt(test.images[start:start + 2048], key,
                                    setting.scheme, setting.block_size,
                                    steps=setting.steps))
  return np.concatenate(parts)


def _unit(setting: Setting, attack: str, n: int) -> str:
  label = "".join(ch if ch.isalnum() else "_" for ch in setting.name)
  return f"{label}__{attack}__{n}"


_MEMO: Dict[tuple, dict] = {}  # Scores of perfect keys, per setting.


def _attack(setting, attack, n, test, public, encrypted, key, examples, seed,
            progress) -> Tuple[Dict[str, np.ndarray], dict]:
  """One (setting, attack, N) piece: attack, decrypt everything, score."""
  scheme = setting.scheme
  shape = test.images.shape[1:]
  info = dict(label=setting.name, scheme=scheme, attack=attack,
              ciphertexts=int(n),
              block_size=setting.block_size or encryption.get_scheme(
                  scheme).default_block_size,
              steps="+".join(setting.steps) if setting.steps else "all")
  rows = sources.subset(len(test), n)
  if attack == CIPHERTEXT_ONLY:
    recovered = same_key.recover_key(
        encrypted[rows], scheme=scheme, image_shape=shape,
        public_plain=public.images, block_size=setting.block_size,
        steps=setting.steps, seed=seed, progress=progress)
  else:
    recovered = known_plaintext.recover_key(
        test.images[rows], encrypted[rows], scheme=scheme, image_shape=shape,
        block_size=setting.block_size, steps=setting.steps, seed=seed)
  truth = encryption.make_plan(
      key, "pe" if scheme == "pe_per_image" else scheme, shape,
      setting.block_size, setting.steps)
  per_image = scheme == "pe_per_image"
  result = key_recovery_scoring.score(
      truth, recovered, test.images, encrypted,
      key=key if per_image else None,
      image_ids=test.indices if per_image else None,
      memo=_MEMO.setdefault((setting.name, test.dataset, test.split,
                             len(test), encryption.fingerprint(key)), {}))
  ssim = float(result.ssim.mean())
  info.update(edge_images=recovered.edge_images,
              neighbours=result.neighbours, blocks_exact=result.blocks_exact,
              values_exact=result.values_exact, ssim=ssim,
              ssim_up_to_mirror=result.ssim_up_to_mirror,
              seconds=round(recovered.seconds, 2),
              verdict=verdict(result.blocks_exact, ssim,
                              result.ssim_up_to_mirror))
  arrays = {}
  for example in examples:
    arrays[f"grid_{example}"] = same_key.decrypt(
        recovered, encrypted[example:example + 1])[0]
  return arrays, info


def _figures(folder, dataset, rows, grids, test, labels, attacks) -> None:
  for metric, name in (("ssim", "recovery_ssim"),
                       ("ssim_up_to_mirror", "recovery_ssim_up_to_mirror"),
                       ("blocks_exact", "recovery_blocks")):
    curves, panels = {}, {}
    for attack in attacks:
      panel = []
      for label in labels:
        points = sorted((r["ciphertexts"], r[metric]) for r in rows
                        if r["label"] == label and r["attack"] == attack
                        and r.get(metric) is not None
                        and np.isfinite(r[metric]))
        if points:
          curve = f"{label} ({attack})"
          curves[curve] = ([float(np.log10(p[0])) for p in points],
                           [p[1] for p in points])
          panel.append(curve)
      if panel:
        panels[attack] = panel
    if curves:
      figures.line_plot(curves, os.path.join(folder, f"{name}.png"),
                        "log10 N (ciphertexts or known pairs)", metric,
                        f"{dataset}: {metric} of the whole set decrypted with "
                        "the key recovered from N", panels)
  for example, per_setting in grids.items():
    columns = sorted({c for d in per_setting.values() for c in d
                      if c != "encrypted_grid"},
                     key=lambda c: (ATTACKS.index(c[0]), c[1]))
    if not columns:
      continue
    grid_rows = [[test.images[example], per_setting.get(label, {}).get(
        "encrypted_grid")] + [per_setting.get(label, {}).get(c) for c in columns]
                 for label in labels]
    figures.image_grid(
        grid_rows, labels, ["plain", "encrypted"] + [
            f"{'CO' if a == CIPHERTEXT_ONLY else 'KP'} N={n}" for a, n in columns],
        os.path.join(folder, f"examples_{int(test.indices[example])}.png"),
        f"{dataset} {test.split} image {int(test.indices[example])}: "
        "decrypted with the key recovered from N (CO: ciphertext only, KP: "
        "known pairs)")

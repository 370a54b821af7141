"""The attacks task: every attack on every scheme, scored against the truth.

For one dataset: encrypt the test images with the secret key, run each
applicable attack (`etcjax.evaluation.attacks`), and score every
reconstruction against its plain image with SSIM and PSNR. Writes

    ssim_psnr.{csv,md}     mean/std/median per (scheme, attack), with the
                           paper's CIFAR-10 means and a verdict
    jigsaw.{csv,md}        block accuracy of the jigsaw solver
    brute_force.{csv,md}   key-space sizes
    learned.{csv,md}       training of the GAN/ITN attacks (size, losses)
    per_image.csv          every score of every image
    ssim_box.png, psnr_box.png   box plots per scheme
    examples_<i>.png       image grids (plain, encrypted, each attack) like
                           the paper's Fig. 6

The adversary's data: the training split cut in two halves by parity of
the index; plain images of one (the data distribution) and images of the
other encrypted with the secret key (what a cloud sees).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tqdm

from etcjax import encryption
from etcjax.evaluation import attacks as attacks_lib
from etcjax.evaluation import figures
from etcjax.evaluation import outputs
from etcjax.evaluation import requests
from etcjax.evaluation import resume
from etcjax.evaluation import sources
from etcjax.evaluation import tables
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import brute_force
from etcjax.evaluation.attacks import fitting
from etcjax.evaluation.attacks import jigsaw
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model

ENCRYPTED = "encrypted"  # The "no attack" row: the encrypted image itself.
# The jigsaw solver's assembly under the global transform closest to the
# plain image: what it recovers up to the ambiguity its prior cannot settle.
JIGSAW_ORACLE = "jigsaw_up_to_global"
DEFAULT_SCHEMES = ("etc", "etc_gray", "block_common", "le", "ele", "pe")
DEFAULT_ATTACKS = ("brute_force", "fr", "fr_advanced", "gan", "itn", "jigsaw")

# Mean SSIM on CIFAR-10 in the paper (MaungMaung & Kiya 2022, Fig. 8).
PAPER_SSIM_CIFAR10 = {
    "etc": {ENCRYPTED: 0.047, "fr": 0.042, "gan": 0.018, "itn": 0.025},
    "le": {ENCRYPTED: 0.037, "fr": 0.101, "gan": 0.864, "itn": 0.281},
    "pe": {ENCRYPTED: 0.041, "fr": 0.303, "gan": 0.109, "itn": 0.017},
}

# Verdict thresholds on mean SSIM against the plain images (heuristic).
BROKEN_SSIM = 0.5
LEAK_SSIM = 0.2
# And on the jigsaw's share of correct neighbour pairs (random placement
# scores about 2 / blocks).
JIGSAW_BROKEN_NEIGHBOURS = 0.9
JIGSAW_LEAK_NEIGHBOURS = 0.25


@dataclasses.dataclass(frozen=True)
class SuiteSize:
  """How much data and training an attacks run uses.

  Attributes:
    test_images: attacked images per dataset (None: the whole split).
    public_images: adversary's training-split images per dataset (None:
      all), halved into plain and encrypted.
    jigsaw_images: per dataset and scheme, images the jigsaw solver
      attacks (None: all attacked images): on a CPU it takes seconds per
      224x224 EtC image (196 pieces) and most of a minute per grayscale-
      based EtC one (2352 pieces).
    training: size of the learned attacks.
  """

  test_images: Dict[str, Optional[int]]
  public_images: Dict[str, Optional[int]]
  jigsaw_images: Dict[str, Dict[str, Optional[int]]]
  training: threat_model.TrainingSize


SIZES = {
    # CI: a few hundred images, learned attacks for a few dozen steps.
    "smoke": SuiteSize(
        test_images={"cifar10": 200, "imagenette": 12},
        public_images={"cifar10": 1000, "imagenette": 100},
        jigsaw_images={"cifar10": {"etc": 200, "etc_gray": 200},
                       "imagenette": {"etc": 3, "etc_gray": 2}},
        training=threat_model.TrainingSize(steps=30, batch_size=16, width=8,
                                           learning_rate=1e-3, num_keys=8,
                                           levels=2)),
    # The study: whole test sets; GAN/ITN at this size are GPU/TPU work
    # (hours per scheme on a CPU), so CPU runs pass --attacks without them
    # or a smaller --train_steps.
    "full": SuiteSize(
        test_images={"cifar10": None, "imagenette": None},
        public_images={"cifar10": None, "imagenette": None},
        jigsaw_images={"cifar10": {"etc": None, "etc_gray": None},
                       "imagenette": {"etc": 300, "etc_gray": 20}},
        training=threat_model.TrainingSize(steps=20000, batch_size=64,
                                           width=64, learning_rate=2e-4,
                                           num_keys=1024, levels=3)),
}


def check_request(schemes: Sequence[str], attack_names: Sequence[str]) -> None:
  """Raises on unknown names, or an attack that applies to none of the schemes."""
  if not schemes:
    raise requests.RequestError(f"no schemes given; known schemes: {sorted(encryption.SCHEMES)}")
  for scheme in schemes:
    encryption.get_scheme(scheme)
  for name in attack_names:
    attack = attacks_lib.get_attack(name)
    if not any(attack.applies_to(s) for s in schemes):
      attacks_lib.check_applicable(name, schemes[0])


def verdict(mean_ssim: float, above_mean_image: float) -> str:
  """Plain-language reading of an attack's SSIMs against the plain images.

  Args:
    mean_ssim: mean SSIM of the reconstructions.
    above_mean_image: share of images whose reconstruction scores a higher
      SSIM than the test set's mean image does on the same image (a guess
      that knows nothing of the image).

  Returns:
    'BROKEN: ...', 'partial: ...', 'resisted' or 'resisted (chance level)'
    ('' for NaN).
  """
  if not np.isfinite(mean_ssim):
    return ""
  if above_mean_image < 0.5:
    # Smooth datasets give any smooth guess a high SSIM (Imagenette's mean
    # image scores about 0.3): that is no leak of the image.
    return "resisted (chance level)" if mean_ssim >= LEAK_SSIM else "resisted"
  if mean_ssim >= BROKEN_SSIM:
    return "BROKEN: content recovered"
  if mean_ssim >= LEAK_SSIM:
    return "partial: structure leaks"
  return "resisted"


def jigsaw_verdict(neighbours: float) -> str:
  """Reading of a jigsaw result from its share of correct neighbour pairs.

  SSIM undersells a reassembly that is right up to a mirror image or has
  regions shifted against each other; the share of adjacent blocks put
  back side by side says how much of the image is reassembled.

  Args:
    neighbours: mean share of correct neighbour pairs (jigsaw table).
  """
  if neighbours >= JIGSAW_BROKEN_NEIGHBOURS:
    return "BROKEN: content recovered (up to a global transform)"
  if neighbours >= JIGSAW_LEAK_NEIGHBOURS:
    return "partial: regions reassembled"
  return "resisted"


def _split_public(images: sources.Images):
  even = images.images[0::2]
  odd = sources.Images(images.dataset, images.split, images.images[1::2],
                       images.labels[1::2], images.indices[1::2],
                       images.label_names)
  return even, odd


def run(dataset: str, key: bytes, out_dir: str, *, size: str = "smoke",
        schemes: Sequence[str] = DEFAULT_SCHEMES,
        attack_names: Sequence[str] = DEFAULT_ATTACKS,
        data_dir: Optional[str] = None, imagenette_dir: Optional[str] = None,
        overwrite: bool = False, seed: int = 0,
        test_limit: Optional[int] = None,
        jigsaw_limit: Union[None, int, Dict[str, int]] = None,
        training: Optional[threat_model.TrainingSize] = None,
        tag: Optional[str] = None, progress: bool = True) -> str:
  """Runs the attacks task on one dataset.

  Args:
    dataset: 'cifar10' or 'imagenette'.
    key: the secret key (only its fingerprint is recorded).
    out_dir: the run folder; results go to `out_dir/attacks/<dataset>/`.
    size: 'smoke' or 'full' (`SIZES`).
    schemes: schemes to attack.
    attack_names: attacks to run; each must apply to at least one scheme
      (combinations that do not apply are shown as n/a).
    data_dir: tfds data_dir (cifar10).
    imagenette_dir: Imagenette folder (imagenette).
    overwrite: replace existing results.
    seed: seed of the attacks' random choices.
    test_limit: override the size's number of attacked images.
    jigsaw_limit: override the size's number of images the jigsaw solver
      attacks: one count for every scheme, or {scheme: count} (schemes
      not named keep the size's).
    training: override the size's learned-attack training.
    tag: results go to `out_dir/attacks/<dataset>-<tag>/` instead, so that
      runs of different attacks, schemes or sizes on one dataset (e.g. the
      learned attacks on fewer images) sit side by side in one run folder.
    progress: show progress bars.

  Returns:
    The result folder.
  """
  sources.check_dataset(dataset)
  sources.check_size(size, SIZES)
  check_request(schemes, attack_names)
  sources.check_limit(test_limit)
  for limit in (jigsaw_limit.values() if isinstance(jigsaw_limit, dict)
                else [jigsaw_limit]):
    sources.check_limit(limit, "a jigsaw image limit")
  if tag is not None and not re.fullmatch(r"[A-Za-z0-9_]+", tag):
    raise requests.RequestError(
        f"a tag names a folder: letters, digits and _ only, got {tag!r}")
  preset = SIZES[size]
  training = training or preset.training
  if any(attacks_lib.get_attack(n).learned for n in attack_names):
    fitting.check_batch(training.batch_size)
  test_limit = test_limit or preset.test_images[dataset]
  if not isinstance(jigsaw_limit, dict):
    jigsaw_limit = {s: jigsaw_limit for s in schemes}
  elif set(jigsaw_limit) - set(schemes):
    raise requests.RequestError(
        f"jigsaw limits for schemes {sorted(set(jigsaw_limit) - set(schemes))} "
        f"that are not attacked; attacked schemes: {list(schemes)}")
  jigsaw_limits = {s: jigsaw_limit.get(s) or preset.jigsaw_images[dataset].get(s)
                   for s in schemes}
  output = outputs.TaskOutput(
      out_dir, "attacks", f"{dataset}-{tag}" if tag else dataset, overwrite,
      meta=dict(size=size, schemes=list(schemes), attacks=list(attack_names),
                seed=seed, key_fingerprint=encryption.fingerprint(key),
                training=dataclasses.asdict(training)))
  output.meta.update(dataset=dataset, tag=tag)
  eval_split, public_split = sources.DATASETS[dataset]
  test = sources.load(dataset, eval_split, data_dir=data_dir,
                      imagenette_dir=imagenette_dir, limit=test_limit,
                      progress=progress)
  public = sources.load(dataset, public_split, data_dir=data_dir,
                        imagenette_dir=imagenette_dir,
                        limit=preset.public_images[dataset], progress=progress)
  public_plain, public_encrypt = _split_public(public)
  prior = priors.ImagePrior.fit(public_plain)
  shape = test.images.shape[1:]
  for scheme in schemes:  # Fail on geometry before any work.
    encryption.make_plan(key, "pe" if scheme == "pe_per_image" else scheme, shape)
  # Example images (for the grids) are attacked by every attack.
  smallest = min([l for l in jigsaw_limits.values() if l] or [len(test)])
  examples = [int(i) for i in sources.subset(len(test), smallest)[:2]]
  jigsaw_rows = {s: np.union1d(sources.subset(len(test), l), examples)
                 for s, l in jigsaw_limits.items()}
  reconstructing = [a for a in attack_names if attacks_lib.ATTACKS[a].reconstructs]
  output.meta.update(test_images=len(test), public_images=len(public),
                     eval_split=eval_split,
                     jigsaw_images={s: len(r) for s, r in jigsaw_rows.items()
                                    if s in jigsaw.JIGSAW_SCHEMES})

  # Finished (scheme, attack) pieces survive a crash: a rerun resumes.
  store = resume.ResumeStore(output.path, output.meta, overwrite)
  if store.resumed and progress:
    print(f"resuming: {len(store.resumed)} finished pieces in {store.path}")

  with output as folder:
    scores: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
    grids = {i: {} for i in examples}
    jigsaw_table = _jigsaw_table(dataset)
    learned_table = _learned_table(dataset)
    with open(os.path.join(folder, "per_image.csv"), "w", newline="") as f:
      per_image = csv.writer(f)
      per_image.writerow(["scheme", "attack", "image_index", "ssim", "psnr"])
      for scheme in tqdm.tqdm(schemes, desc=f"attacks on {dataset}",
                              disable=not progress):
        scores[scheme] = {}
        names = [ENCRYPTED] + [n for n in reconstructing
                               if attacks_lib.ATTACKS[n].applies_to(scheme)]
        piece = _Piece(store, scheme, test, examples)
        if not all(store.has(piece.unit(n)) for n in names):
          plan = encryption.make_plan(
              key, "pe" if scheme == "pe_per_image" else scheme, shape)
          encrypted = sources.encrypt(test, key, scheme)
          context = threat_model.AttackContext(
              scheme=scheme, block_size=plan.block_size, steps=None,
              image_shape=shape, encrypted_shape=plan.encrypted_shape,
              representation=plan.representation, encrypted=encrypted,
              public_plain=public_plain,
              public_encrypted=sources.encrypt(public_encrypt, key, scheme),
              training=training, seed=seed, progress=progress)
        for name in names:
          if store.has(piece.unit(name)):
            pass
          elif name == ENCRYPTED:
            piece.save(name, visual_metrics.as_rgb(encrypted,
                                                   plan.representation),
                       np.arange(len(test)))
          elif attacks_lib.ATTACKS[name].learned:
            # One piece: the network trains on the public images, once,
            # with checkpoints to resume an interrupted training.
            images, extras = attacks_lib.reconstruct(
                name, dataclasses.replace(
                    context, checkpoint_dir=store.scratch(piece.unit(name))),
                prior)
            row_table = _learned_table(dataset)
            _add_learned(row_table, scheme, name, extras["history"], training)
            piece.save(name, images, np.arange(len(test)),
                       {"learned_row": row_table.rows[0]})
          else:
            # Image by image: saved in chunks, so that an interrupted
            # hours-long piece resumes where it stopped.
            rows = (jigsaw_rows[scheme] if name == "jigsaw"
                    else np.arange(len(test)))
            attack = functools.partial(_attack_rows, name, context, encrypted,
                                       prior, key, plan, piece)
            arrays = piece.run_in_chunks(name, rows, CHUNK_IMAGES[name], attack)
            info = {}
            if name == "jigsaw":
              row_table = _jigsaw_table(dataset)
              _add_jigsaw(row_table, scheme, plan, arrays)
              info["jigsaw_row"] = row_table.rows[0]
              piece.save_arrays(JIGSAW_ORACLE, _scores_of(arrays, ORACLE_PREFIX))
            # Saved last: its presence says the whole attack is done.
            piece.save_arrays(name, _scores_of(arrays), info)
          for result in ([name, JIGSAW_ORACLE] if name == "jigsaw"
                         else [name]):
            arrays, info = store.load(piece.unit(result))
            rows = arrays["rows"]
            scores[scheme][result] = {"rows": rows, "ssim": arrays["ssim"],
                                      "psnr": arrays["psnr"]}
            for i, s, p in zip(rows, arrays["ssim"], arrays["psnr"]):
              per_image.writerow([scheme, result, int(test.indices[i]),
                                  f"{s:.6f}", f"{p:.4f}"])
            for example in examples:
              if f"grid_{example}" in arrays:
                grids[example].setdefault(scheme, {})[result] = arrays[
                    f"grid_{example}"]
            if "jigsaw_row" in info:
              jigsaw_table.add(*info["jigsaw_row"])
            if "learned_row" in info:
              learned_table.add(*info["learned_row"])
    baseline = mean_image_ssim(test.images)
    references = chance_levels(test.images, baseline)
    output.meta["reference_ssim"] = references
    neighbours = dict(zip(jigsaw_table.column("scheme"),
                          jigsaw_table.column("correct neighbours")))
    _summary_table(dataset, scores, reconstructing, references, baseline,
                   neighbours).write(folder, "ssim_psnr")
    if jigsaw_table.rows:
      jigsaw_table.write(folder, "jigsaw")
    if learned_table.rows:
      learned_table.write(folder, "learned")
    if "brute_force" in attack_names:
      brute_force.table(schemes, [(dataset, shape)]).write(folder, "brute_force")
    _figures(folder, dataset, scores, grids, test, schemes, reconstructing)
  store.clear()
  return output.path


class _Piece:
  """Scores one scheme's attack results and saves them to the resume store."""

  def __init__(self, store: resume.ResumeStore, scheme: str,
               test: sources.Images, examples: Sequence[int]):
    self._store = store
    self._scheme = scheme
    self._test = test
    self._examples = examples

  def unit(self, name: str) -> str:
    return f"{self._scheme}__{name}"

  def scores(self, images: np.ndarray, rows: np.ndarray) -> Dict[str, np.ndarray]:
    """SSIM, PSNR and the example images of reconstructions of test `rows`.

    Only these are kept, not the reconstructions (Imagenette's would be
    gigabytes).
    """
    plain = self.plain(rows)
    arrays = {"rows": np.asarray(rows),
              "ssim": visual_metrics.ssim(plain, images),
              "psnr": visual_metrics.psnr(plain, images)}
    for example in self._examples:
      hit = np.flatnonzero(rows == example)
      if hit.size:
        arrays[f"grid_{example}"] = images[hit[0]]
    return arrays

  def plain(self, rows: np.ndarray) -> np.ndarray:
    """uint8 `[n, H, W, 3]`: the plain test images `rows`."""
    return self._test.images[rows]

  def save(self, name: str, images: np.ndarray, rows: np.ndarray,
           info: Optional[Dict] = None) -> None:
    """Scores reconstructions `images` of test images `rows`; saves them."""
    self.save_arrays(name, self.scores(images, rows), info)

  def save_arrays(self, name: str, arrays: Dict[str, np.ndarray],
                  info: Optional[Dict] = None) -> None:
    self._store.save(self.unit(name), arrays, _json_row(info or {}))

  def run_in_chunks(self, name: str, rows: np.ndarray, chunk: int,
                    attack: Callable[[np.ndarray], Dict[str, np.ndarray]]
                    ) -> Dict[str, np.ndarray]:
    """Runs `attack` on consecutive chunks of `rows`, saving each chunk.

    Args:
      name: the attack.
      rows: test images to attack.
      chunk: images per chunk.
      attack: rows `[n]` -> per-image arrays `[n, ...]` (and 'grid_*'
        example images).

    Returns:
      The chunks' arrays, concatenated (example images: as found).
    """
    parts = []
    for k, start in enumerate(range(0, len(rows), chunk)):
      unit = f"{self.unit(name)}.part{k:05d}"
      if not self._store.has(unit):
        self._store.save(unit, attack(rows[start:start + chunk]), {})
      parts.append(self._store.load(unit)[0])
    combined = {}
    for part in parts:
      for key, value in part.items():
        if "grid_" in key:
          combined.setdefault(key, value)
        else:
          combined.setdefault(key, []).append(value)
    return {k: v if "grid_" in k else np.concatenate(v)
            for k, v in combined.items()}


# Images per saved chunk of the image-by-image attacks: at most minutes of
# work lost to an interruption (the jigsaw solver takes about a minute per
# 224x224 grayscale-EtC image on a CPU).
CHUNK_IMAGES = {"fr": 1000, "fr_advanced": 1000, "jigsaw": 32}
ORACLE_PREFIX = "oracle:"  # Arrays of the jigsaw oracle within a chunk.


def _attack_rows(name, context, encrypted, prior, key, plan, piece, rows
                 ) -> Dict[str, np.ndarray]:
  """Attacks test images `rows`; their scores (and jigsaw accuracies)."""
  sub = dataclasses.replace(context, encrypted=encrypted[rows])
  images, extras = attacks_lib.reconstruct(name, sub, prior)
  arrays = piece.scores(images, rows)
  if name == "jigsaw":
    accuracy, oracle = _score_jigsaw(key, context.scheme, context.image_shape,
                                     extras["assemblies"], piece, rows, plan)
    arrays.update(accuracy)
    arrays.update({ORACLE_PREFIX + k: v
                   for k, v in piece.scores(oracle, rows).items()})
  return arrays


def _scores_of(arrays: Dict[str, np.ndarray], prefix: str = ""
               ) -> Dict[str, np.ndarray]:
  """The score arrays (rows, ssim, psnr, grid_*) stored under `prefix`."""
  out = {}
  for key, value in arrays.items():
    if key.startswith(prefix):
      short = key[len(prefix):]
      if short in ("rows", "ssim", "psnr") or short.startswith("grid_"):
        out[short] = value
  return out


def _json_row(info: Dict) -> Dict:
  # Table rows hold numpy scalars; the store keeps JSON.
  return {k: [v.item() if isinstance(v, np.generic) else v for v in row]
          for k, row in info.items()}


def _result_names(attack_names: Sequence[str]) -> List[str]:
  """Rows of a scheme's results: no attack, each attack (and the oracle)."""
  names = [ENCRYPTED]
  for name in attack_names:
    names.append(name)
    if name == "jigsaw":
      names.append(JIGSAW_ORACLE)
  return names


def mean_image_ssim(images: np.ndarray) -> np.ndarray:
  """Per-image SSIM of the set's mean image, a guess using no information.

  Args:
    images: uint8 `[N, H, W, 3]` plain test images.

  Returns:
    float `[N]`.
  """
  mean = np.broadcast_to(np.round(images.mean(axis=0)).astype(np.uint8),
                         images.shape)
  return visual_metrics.ssim(images, mean)


def chance_levels(images: np.ndarray,
                  mean_image: Optional[np.ndarray] = None) -> Dict[str, float]:
  """Mean SSIM of guesses that use no information from the encrypted image.

  A reconstruction scores something only above these: SSIM against each
  image of another image of the set (the next one), and of the set's mean
  image (what a network that ignores its input learns at best).

  Args:
    images: uint8 `[N, H, W, 3]` plain test images, N >= 2.
    mean_image: `mean_image_ssim(images)` if already computed.

  Returns:
    {'unrelated image': ..., 'mean image': ...}.
  """
  if mean_image is None:
    mean_image = mean_image_ssim(images)
  return {
      "unrelated image": float(visual_metrics.ssim(
          images, np.roll(images, 1, axis=0)).mean()),
      "mean image": float(mean_image.mean()),
  }


def _summary_table(dataset, scores, attack_names, references: Dict[str, float],
                   baseline: np.ndarray,
                   jigsaw_neighbours: Dict[str, float]) -> tables.Table:
  table = tables.Table(
      f"{dataset}: SSIM and PSNR of reconstructions against the plain images",
      ["scheme", "attack", "images", "SSIM mean", "SSIM std", "SSIM median",
       "PSNR mean (dB)", "above mean image", "paper SSIM mean", "verdict"],
      formats={"SSIM mean": ".3f", "SSIM std": ".3f", "SSIM median": ".3f",
               "above mean image": ".3f",
               "PSNR mean (dB)": ".2f", "paper SSIM mean": ".3f"},
      notes=[f"'{ENCRYPTED}' scores the encrypted image itself (no attack); "
             "n/a: the attack does not apply to the scheme.",
             f"'{JIGSAW_ORACLE}' is not an attack of its own: the jigsaw "
             "assembly under the global rotation/flip/inversion/colour order "
             "closest to the plain image, i.e. what the solver recovers up to "
             "the ambiguity its prior does not settle.",
             "Above mean image: share of images whose result scores a "
             "higher SSIM than the test set's mean image on the same image.",
             f"Verdict from mean SSIM: >= {BROKEN_SSIM} BROKEN (content "
             f"recovered), >= {LEAK_SSIM} partial leak, else resisted; but "
             "resisted (chance level) when the result beats the mean image "
             "on fewer than half of the images. Jigsaw rows: from the share "
             f"of correct neighbour pairs, >= {JIGSAW_BROKEN_NEIGHBOURS} "
             f"BROKEN, >= {JIGSAW_LEAK_NEIGHBOURS} partial (see the jigsaw "
             "table). Look at the example grids too.",
             "Chance levels on these test images (guesses that use nothing "
             "of the encrypted image): mean SSIM of another test image "
             f"{references['unrelated image']:.3f}, of the test set's mean "
             f"image {references['mean image']:.3f}.",
             "Paper: MaungMaung & Kiya 2022, Fig. 8 (CIFAR-10 only)."])
  for scheme, per_attack in scores.items():
    paper = PAPER_SSIM_CIFAR10.get(scheme, {}) if dataset == "cifar10" else {}
    for name in _result_names(attack_names):
      if name not in per_attack:
        table.add(scheme, name, 0, None, None, None, None, None,
                  paper.get(name), "n/a")
        continue
      result = per_attack[name]
      ssim = tables.summary(result["ssim"])
      psnr = tables.summary(result["psnr"])
      above = float(np.mean(result["ssim"] > baseline[result["rows"]]))
      if name in ("jigsaw", JIGSAW_ORACLE) and scheme in jigsaw_neighbours:
        reading = jigsaw_verdict(jigsaw_neighbours[scheme])
      else:
        reading = verdict(ssim["mean"], above)
      table.add(scheme, name, ssim["n"], ssim["mean"], ssim["std"],
                ssim["median"], psnr["mean"], above, paper.get(name), reading)
  return table


def _jigsaw_table(dataset) -> tables.Table:
  return tables.Table(
      f"{dataset}: jigsaw puzzle solver on block-scrambled images",
      ["scheme", "images", "blocks per image", "blocks in right place",
       "right place up to global rotation/flip", "correct neighbours",
       "exactly restored blocks", "images fully restored", "SSIM mean",
       "SSIM mean up to global transform"],
      formats={c: ".3f" for c in (
          "blocks in right place", "right place up to global rotation/flip",
          "correct neighbours", "exactly restored blocks",
          "images fully restored", "SSIM mean",
          "SSIM mean up to global transform")},
      notes=["Blocks in right place: the solver's output as is (it picks the "
             "global rotation/flip and colours with its prior). Up to global "
             "rotation/flip: the best of the global symmetries, chosen with "
             "the truth (what a perfect prior would reach). Correct "
             "neighbours: adjacent blocks that were adjacent in the same "
             "relative position (Cho et al.'s neighbour comparison), up to "
             "global symmetry. Exactly restored: right place, orientation, "
             "inversion and colour order.",
             "The solver's output is right only up to one global transform "
             "of the whole image (rotation/flip, inversion, colour order), "
             "which the adversary's simple prior often gets wrong (a "
             "mirrored image shows its content as well); 'up to global "
             "transform' scores the variant closest to the plain image.",
             "For etc_gray the puzzle is the [H, 3W] grayscale image of 8x8 "
             "blocks from the Y, Cb and Cr planes."])


def _score_jigsaw(key, scheme, shape, assemblies, piece, rows, plan
                  ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """Per-image jigsaw accuracies, and the oracle's RGB images."""
  truth = jigsaw.source_blocks(plan)
  # An identity plan (no steps) maps plain images to the encrypted
  # representation's layout (the YCbCr planes for etc_gray).
  identity = encryption.representation_plan(scheme, shape, plan.block_size)
  plain_rep = np.asarray(encryption.apply(identity, piece.plain(rows)))
  symmetries, transforms = jigsaw.variants_of(
      scheme, encryption.get_scheme(scheme).steps, plan.encrypted_shape[-1])
  accuracy = jigsaw.score(assemblies, truth, plain_rep, plan.block_size,
                          symmetries)
  # What a perfect prior would pick: the global variant closest to the
  # plain image.
  oracle = []
  for assembly, target in zip(assemblies, plain_rep):
    options = jigsaw.global_variants(assembly, symmetries, transforms,
                                     assembly.grid.shape)
    errors = [np.mean((o.image.astype(np.float64) - target) ** 2)
              for o in options]
    oracle.append(options[int(np.argmin(errors))].image)
  return (dataclasses.asdict(accuracy),
          visual_metrics.as_rgb(np.stack(oracle), plan.representation))


def _add_jigsaw(table, scheme, plan, arrays) -> None:
  """Adds a scheme's row to the jigsaw table from its per-image arrays."""
  table.add(scheme, len(arrays["rows"]), len(jigsaw.source_blocks(plan)),
            arrays["position"].mean(), arrays["position_up_to_global"].mean(),
            arrays["neighbours"].mean(), arrays["exact_blocks"].mean(),
            float(np.mean(arrays["exact_blocks"] == 1.0)),
            float(arrays["ssim"].mean()),
            float(arrays[ORACLE_PREFIX + "ssim"].mean()))


def _learned_table(dataset) -> tables.Table:
  return tables.Table(
      f"{dataset}: training of the learned attacks",
      ["scheme", "attack", "steps", "batch size", "width", "levels",
       "pixel cells", "learning rate", "first loss",
       "last loss (mean of last 10%)"],
      formats={"learning rate": "g", "first loss": ".4f",
               "last loss (mean of last 10%)": ".4f"},
      notes=["GAN: generator loss (LSGAN + 10 x cycle L1); ITN: L1 in [-1, 1] "
             "units. Few steps (smoke size) give untrained networks: their "
             "scores then say nothing about the attack's strength."])


def _add_learned(table, scheme, name, history, training) -> None:
  losses = [h["generator"] if isinstance(h, dict) else h for h in history]
  tail = losses[-max(1, len(losses) // 10):]
  cells = training.space_to_depth
  table.add(scheme, name, len(losses), training.batch_size, training.width,
            training.levels, f"{cells}x{cells}", training.learning_rate,
            losses[0], float(np.mean(tail)))


def _figures(folder, dataset, scores, grids, test, schemes, attack_names) -> None:
  for metric, label, limits in (("ssim", "SSIM against plain", (-0.5, 1.0)),
                                ("psnr", "PSNR against plain (dB)", None)):
    groups = {scheme: {name: per[metric] for name, per in scores[scheme].items()}
              for scheme in schemes}
    figures.box_plot(groups, os.path.join(folder, f"{metric}_box.png"), label,
                     f"{dataset}: {label} of encrypted images and attack "
                     "results", ylim=limits)
  columns = ["plain"] + _result_names(attack_names)
  for example, per_scheme in grids.items():
    rows = [[test.images[example]] + [per_scheme.get(scheme, {}).get(c)
                                      for c in columns[1:]]
            for scheme in schemes]
    figures.image_grid(
        rows, list(schemes), columns,
        os.path.join(folder, f"examples_{int(test.indices[example])}.png"),
        f"{dataset} {test.split} image {int(test.indices[example])}")

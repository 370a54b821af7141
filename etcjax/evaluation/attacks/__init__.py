"""Attacks on encrypted images, under one threat model (`threat_model`).

    from etcjax.evaluation import attacks
    images, extras = attacks.reconstruct('fr', context)

Reconstruction attacks return uint8 `[N, H, W, 3]` guesses of the plain
images; `brute_force` only sizes the key space. Each attack declares the
schemes it applies to; asking for another raises a ValueError that says
why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

from etcjax import encryption
from etcjax.evaluation import requests
from etcjax.evaluation import visual_metrics
from etcjax.evaluation.attacks import fr_attack
from etcjax.evaluation.attacks import gan_attack
from etcjax.evaluation.attacks import itn_attack
from etcjax.evaluation.attacks import jigsaw
from etcjax.evaluation.attacks import priors
from etcjax.evaluation.attacks import threat_model


@dataclasses.dataclass(frozen=True)
class Attack:
  """A registered attack.

  Attributes:
    name: registry name.
    label: column label in tables and figures.
    schemes: schemes it applies to (None: every scheme).
    why_not: why it does not apply to other schemes.
    learned: whether it trains networks (GAN, ITN).
    reconstructs: whether it outputs images (all but brute force).
    description: one line.
  """

  name: str
  label: str
  schemes: Optional[Tuple[str, ...]]
  why_not: str
  learned: bool
  reconstructs: bool
  description: str

  def applies_to(self, scheme: str) -> bool:
    """Whether the attack applies to a scheme."""
    return self.schemes is None or scheme in self.schemes


ATTACKS: Dict[str, Attack] = {a.name: a for a in (
    Attack("brute_force", "brute force", None, "", False, False,
           "size of the key/transform space (no reconstruction)"),
    Attack("fr", "FR", None, "", False, True,
           "FR-Attack: invert values so their leading bit is 0"),
    Attack("fr_advanced", "FR advanced", fr_attack.ADVANCED_SCHEMES,
           "it searches colour order and inversion per pixel (PE) or per "
           "block (EtC); the other schemes shuffle values within blocks or "
           "work on 4-bit or YCbCr representations",
           False, True,
           "FR-Attack choosing colour order and inversion per unit by "
           "smoothness, global ambiguity by the data prior"),
    Attack("gan", "GAN", None, "", True, True,
           "CycleGAN trained on unpaired encrypted and plain halves of the "
           "training set"),
    Attack("itn", "ITN", None, "", True, True,
           "inverse transformation network trained on pairs made with many "
           "attacker keys"),
    Attack("jigsaw", "jigsaw", jigsaw.JIGSAW_SCHEMES,
           "it reassembles blocks moved as a whole; the other schemes do not "
           "scramble whole blocks (LE, PE) or shuffle values within blocks "
           "(ELE, block_common)",
           False, True,
           "jigsaw puzzle solver over block positions, rotations/flips, "
           "inversion and colour order"),
)}


def get_attack(name: str) -> Attack:
  """Returns a registered attack, or raises listing the known ones."""
  try:
    return ATTACKS[name]
  except KeyError:
    raise requests.RequestError(
        f"unknown attack {name!r}; known attacks: {list(ATTACKS)}") from None


def check_applicable(name: str, scheme: str) -> Attack:
  """Returns the attack if it applies to the scheme, else raises why not."""
  attack = get_attack(name)
  encryption.get_scheme(scheme)
  if not attack.applies_to(scheme):
    raise requests.RequestError(
        f"attack {name!r} does not apply to scheme {scheme!r}: "
        f"{attack.why_not}; it applies to {list(attack.schemes)}")
  return attack


def reconstruct(name: str, context: threat_model.AttackContext,
                prior: Optional[priors.ImagePrior] = None
                ) -> Tuple[np.ndarray, Dict[str, Any]]:
  """Runs a reconstruction attack.

  Args:
    name: a reconstructing attack in `ATTACKS`.
    context: what the adversary has.
    prior: the adversary's prior of the data distribution (fitted to
      `context.public_plain` when None and needed).

  Returns:
    `(images, extras)`: uint8 `[N, H, W, 3]` reconstructions of the
    attacked images, and attack-specific results ('assemblies' for the
    jigsaw attack, 'history' of training losses for GAN and ITN).
  """
  attack = check_applicable(name, context.scheme)
  if not attack.reconstructs:
    raise ValueError(f"attack {name!r} does not reconstruct images")
  if name == "fr":
    return fr_attack.basic(context), {}
  if name == "fr_advanced":
    return fr_attack.advanced(context, prior), {}
  if name == "jigsaw":
    assemblies = jigsaw.run(context, prior)
    images = visual_metrics.as_rgb(np.stack([a.image for a in assemblies]),
                                   context.representation)
    return images, {"assemblies": assemblies}
  if name == "gan":
    images, history = gan_attack.run(context)
    return images, {"history": history}
  images, history = itn_attack.run(context)
  return images, {"history": history}

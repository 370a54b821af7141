"""What the adversary has: the threat model shared by every attack.

The adversary knows the encryption algorithm (scheme, block size, which
steps are on, image size) and the data distribution (plain images from the
same source: one half of the training set), and sees images encrypted with
the secret key (the test images it attacks, and for the GAN attack the
encrypted other half of the training set). It never has the key or pairs of
plain and encrypted images made with it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from etcjax import encryption
from etcjax.evaluation import requests


@dataclasses.dataclass(frozen=True)
class TrainingSize:
  """How long learned attacks (GAN, ITN) train.

  Attributes:
    steps: optimizer steps.
    batch_size: images per step.
    width: channels of the networks' first level (doubling per level).
    learning_rate: Adam learning rate.
    num_keys: ITN: how many random attacker keys make its training pairs.
    levels: resolution levels of the networks.
    space_to_depth: S, the networks work on S x S pixel cells (1: on
      pixels); 2 trains 8x faster on a CPU (`networks`). Image sides must
      be multiples of S * 2^(levels - 1).
  """

  steps: int
  batch_size: int
  width: int
  learning_rate: float = 2e-4
  num_keys: int = 64
  levels: int = 3
  space_to_depth: int = 2

  def check_fits(self, image_shape: Sequence[int]) -> None:
    """Raises ValueError unless the networks fit `(H, W, ...)` images."""
    unit = self.space_to_depth * 2**(self.levels - 1)
    h, w = image_shape[:2]
    if h % unit or w % unit:
      raise requests.RequestError(
          f"the learned attacks' networks ({self.levels} levels on "
          f"{self.space_to_depth}x{self.space_to_depth} pixel cells) need "
          f"image sides that are multiples of {unit}, got {h}x{w}; use fewer "
          "levels or a smaller space_to_depth")


@dataclasses.dataclass(frozen=True)
class AttackContext:
  """Everything an attack may use.

  Attributes:
    scheme: the scheme name.
    block_size: its block size.
    steps: the scheme's steps that are on (None: all).
    image_shape: `(H, W, 3)` of plain images.
    encrypted_shape: `(H', W', C')` of encrypted images.
    representation: the scheme's representation (`encryption.plans`).
    encrypted: uint8 `[N] + encrypted_shape`, the images under attack
      (encrypted with the secret key).
    public_plain: uint8 `[M, H, W, 3]`, plain images of the data
      distribution (not the attacked ones).
    public_encrypted: uint8 `[M'] + encrypted_shape`, other images of the
      distribution encrypted with the secret key (what a cloud sees).
    training: size of learned attacks.
    seed: seed of every random choice of the attack.
    progress: show progress bars.
    checkpoint_dir: where learned attacks save their training to resume
      it after an interruption (None: no saves).
  """

  scheme: str
  block_size: int
  steps: Optional[Tuple[str, ...]]
  image_shape: Tuple[int, int, int]
  encrypted_shape: Tuple[int, int, int]
  representation: str
  encrypted: np.ndarray
  public_plain: np.ndarray
  public_encrypted: np.ndarray
  training: TrainingSize
  seed: int = 0
  progress: bool = True
  checkpoint_dir: Optional[str] = None

  def steps_on(self) -> Sequence[str]:
    """The scheme's steps that are applied."""
    spec = encryption.get_scheme(self.scheme)
    return spec.steps if self.steps is None else tuple(self.steps)

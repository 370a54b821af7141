"""Fine-tuning starts from a vit_jax .npz checkpoint (written here: none
can be downloaded on test machines)."""

import jax
import numpy as np
import pytest

from etcjax import models
from etcjax.training import export
from etcjax.training import train
from training import tiny_runs


@pytest.mark.slow  # ~35 s: compiles ViT train and eval steps.
def test_vit_starts_from_pretrained_npz(tmp_path):
  folder = tiny_runs.make_image_folder(str(tmp_path / "data"), per_class=4)
  _, pretrained = models.create("ViT-Ti_16", 4, 32, rng=123)
  # vit_jax checkpoints hold params only, with a trained (non-zero) head.
  params = jax.tree.map(np.asarray, pretrained["params"])
  params["head"]["kernel"] = np.full_like(params["head"]["kernel"], 0.01)
  npz = str(tmp_path / "ViT-Ti_16.npz")
  models.save_npz(npz, params)

  config = tiny_runs.tiny_config(folder)
  config.model, config.model_kwargs = "ViT-Ti_16", {}
  config.pretrained_path = npz
  config.total_steps = 2
  config.augment.update(mixup_alpha=0.0, cutmix_alpha=0.0)
  # A learning rate this small leaves the loaded parameters in place.
  config.optim.update(name="sgd", schedule="constant", learning_rate=1e-12)
  train.train_and_evaluate(config, str(tmp_path / "work"))
  _, variables, _ = export.load(str(tmp_path / "work" / "export"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7),
               jax.device_get(variables["params"]), params)
  # A fresh initialisation is different (the check above can fail).
  _, fresh = models.create("ViT-Ti_16", 4, 32, rng=0)
  assert not np.allclose(fresh["params"]["embedding"]["kernel"],
                         params["embedding"]["kernel"])


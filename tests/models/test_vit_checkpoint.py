"""ViT: published parameter tree, pretrained loading, reference numerics."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etcjax import models
from etcjax.models import checkpoint


def _shapes(name, num_classes, image_size, **overrides):
  module = models.build(name, num_classes, **overrides)
  return module, jax.eval_shape(
      functools.partial(models.init_variables, module, image_size),
      jax.random.PRNGKey(0))


def write_fake_vit_npz(path, name="ViT-Ti_16", num_classes=21843,
                       image_size=224, representation_size=None, seed=0,
                       **overrides):
  """Writes a vit_jax-format checkpoint with random values; returns its dict."""
  _, shapes = _shapes(name, num_classes, image_size,
                      representation_size=representation_size, **overrides)
  rng = np.random.default_rng(seed)
  flat = {k: rng.normal(0, 0.1, v.shape).astype(np.float32)
          for k, v in checkpoint.flatten(shapes["params"]).items()}
  np.savez(path, **flat)
  return flat


@pytest.mark.parametrize("name,num_classes,size,expected", [
    ("ViT-B_16", 10, 224, 85_806_346),      # the paper's 85.8 M
    ("ViT-Ti_16", 10, 224, 5_526_346),
    ("ViT-S_16", 10, 224, 21_669_514),
    ("ViT-B_32", 10, 224, 87_462_922),    # B/16 + larger patch kernel, 7x7 grid
    ("ViT-L_16", 10, 224, 303_311_882),
    ("ConvMixer-256/8", 10, 32, 706_570),   # the paper's 0.71 M
    ("ConvMixer-384/8", 10, 224, 1_470_346),  # the paper's 1.47 M
])
def test_pinned_parameter_counts(name, num_classes, size, expected):
  _, shapes = _shapes(name, num_classes, size)
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"])) == expected


def test_parameter_names_are_the_published_ones():
  _, shapes = _shapes("ViT-B_16", 21843, 224, representation_size=768)
  names = set(checkpoint.flatten(shapes["params"]))
  for expected in [
      "embedding/kernel", "embedding/bias", "cls",
      "Transformer/posembed_input/pos_embedding",
      "Transformer/encoderblock_0/LayerNorm_0/scale",
      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel",
      "Transformer/encoderblock_11/LayerNorm_2/bias",
      "Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel",
      "Transformer/encoder_norm/scale", "pre_logits/kernel", "head/kernel"]:
    assert expected in names, expected
  assert checkpoint.flatten(shapes["params"])[
      "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
  ].shape == (768, 12, 64)


def test_every_tensor_lands_in_its_place(tmp_path):
  path = str(tmp_path / "ViT-Ti_16.npz")
  flat = write_fake_vit_npz(path, num_classes=10, image_size=32, num_layers=2)
  module, variables = models.create("ViT-Ti_16", 10, 32, num_layers=2)
  loaded = models.load_pretrained(path, variables, "ViT-Ti_16")
  for k, v in checkpoint.flatten(loaded["params"]).items():
    np.testing.assert_array_equal(v, flat[k], err_msg=k)
  direct = {"params": checkpoint.unflatten({k: jnp.asarray(v) for k, v in flat.items()})}
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1, maxval=1)
  np.testing.assert_array_equal(module.apply(loaded, x), module.apply(direct, x))


def test_fine_tuning_load_drops_pre_logits_resets_head_resamples_posemb(tmp_path):
  path = str(tmp_path / "in21k.npz")
  flat = write_fake_vit_npz(path, num_classes=21843, image_size=224,
                            representation_size=192, num_layers=1)
  _, variables = models.create("ViT-Ti_16", 10, 32, num_layers=1)
  loaded = checkpoint.flatten(
      models.load_pretrained(path, variables, "ViT-Ti_16")["params"])
  assert not any(k.startswith("pre_logits") for k in loaded)
  np.testing.assert_array_equal(loaded["head/kernel"], np.zeros((192, 10)))
  posemb = loaded[checkpoint.POSEMB_KEY]
  assert posemb.shape == (1, 1 + 4, 192)
  np.testing.assert_array_equal(posemb[0, 0], flat[checkpoint.POSEMB_KEY][0, 0])


def test_resample_posemb_is_identity_on_same_grid_and_linear_otherwise():
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
  np.testing.assert_allclose(checkpoint.resample_posemb(posemb, (14, 14)), posemb,
                             atol=1e-6)
  # A grid that is linear in the coordinates stays linear after resampling.
  yy, xx = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
  grid = np.stack([yy, xx], -1).reshape(1, 16, 2)
  up = checkpoint.resample_posemb(np.concatenate([np.zeros((1, 1, 2)), grid], 1),
                                  (7, 7))[0, 1:].reshape(7, 7, 2)
  np.testing.assert_allclose(up[:, 0, 0], np.linspace(0, 3, 7), atol=1e-6)
  assert checkpoint.resample_posemb(posemb, (24, 24)).shape == (1, 577, 8)


def test_mismatched_checkpoint_names_every_key(tmp_path):
  path = str(tmp_path / "bad.npz")
  flat = write_fake_vit_npz(path, num_classes=10, image_size=32, num_layers=1)
  del flat["Transformer/encoder_norm/scale"]
  flat["Transformer/encoderblock_9/LayerNorm_0/scale"] = np.ones(192)
  flat["embedding/kernel"] = np.ones((8, 8, 3, 192), np.float32)
  np.savez(path, **flat)
  _, variables = models.create("ViT-Ti_16", 10, 32, num_layers=1)
  with pytest.raises(models.CheckpointMismatchError) as e:
    models.load_pretrained(path, variables, "ViT-Ti_16")
  message = str(e.value)
  assert "missing from checkpoint: Transformer/encoder_norm/scale" in message
  assert "unexpected in checkpoint: Transformer/encoderblock_9/LayerNorm_0/scale" in message
  assert "embedding/kernel: checkpoint (8, 8, 3, 192) vs model (16, 16, 3, 192)" in message
  with pytest.raises(FileNotFoundError, match="does not exist"):
    models.load_pretrained(str(tmp_path / "nope.npz"), variables, "ViT-Ti_16")


def _reference_vit(p, images, patch, heads, layers):
  """An independent NumPy ViT forward pass (float64)."""
  g = lambda k: np.asarray(p[k], np.float64)
  n, h, w, c = images.shape
  x = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, -1, patch * patch * c)
  x = x @ g("embedding/kernel").reshape(-1, g("embedding/kernel").shape[-1]) + g("embedding/bias")
  x = np.concatenate([np.broadcast_to(g("cls"), (n, 1, x.shape[-1])), x], 1)
  x = x + g("Transformer/posembed_input/pos_embedding")

  def ln(v, pre):
    mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-6) * g(pre + "/scale") + g(pre + "/bias")

  erf = np.vectorize(math.erf)
  for i in range(layers):
    b = f"Transformer/encoderblock_{i}/"
    a = b + "MultiHeadDotProductAttention_1/"
    y = ln(x, b + "LayerNorm_0")
    q, k, v = (np.einsum("nld,dhk->nlhk", y, g(a + f"{t}/kernel")) + g(a + f"{t}/bias")
               for t in ("query", "key", "value"))
    logits = np.einsum("nqhk,nlhk->nhql", q, k) / np.sqrt(q.shape[-1])
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = np.einsum("nhql,nlhk->nqhk", att, v)
    x = x + np.einsum("nqhk,hkd->nqd", y, g(a + "out/kernel")) + g(a + "out/bias")
    y = ln(x, b + "LayerNorm_2")
    y = y @ g(b + "MlpBlock_3/Dense_0/kernel") + g(b + "MlpBlock_3/Dense_0/bias")
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = x + y @ g(b + "MlpBlock_3/Dense_1/kernel") + g(b + "MlpBlock_3/Dense_1/bias")
  x = ln(x, "Transformer/encoder_norm")[:, 0]
  x = np.tanh(x @ g("pre_logits/kernel") + g("pre_logits/bias"))
  return x @ g("head/kernel") + g("head/bias")


def test_reference_logits(tmp_path):
  path = str(tmp_path / "ref.npz")
  flat = write_fake_vit_npz(path, num_classes=7, image_size=32,
                            representation_size=24, num_layers=2, seed=5)
  module, variables = models.create("ViT-Ti_16", 7, 32, num_layers=2,
                                    representation_size=24)
  loaded = models.load_pretrained(path, variables, "ViT-Ti_16")
  images = np.random.default_rng(6).uniform(-1, 1, (2, 32, 32, 3))
  expected = _reference_vit(flat, images, 16, 3, 2)
  np.testing.assert_allclose(module.apply(loaded, jnp.asarray(images, jnp.float32)),
                             expected, rtol=2e-4, atol=2e-4)


def test_bad_inputs_and_names():
  module, variables = models.create("ViT-Ti_16", 10, 32, num_layers=1)
  with pytest.raises(ValueError, match="divisible by its patch size 16"):
    module.apply(variables, jnp.zeros((1, 40, 40, 3)))
  with pytest.raises(ValueError, match="3-channel"):
    module.apply(variables, jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="known models: .*ConvMixer-256/8"):
    models.create("ViT-X_16", 10, 32)

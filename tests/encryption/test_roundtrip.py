"""decrypt(encrypt(x)) == x for every scheme; jit, eager, numpy and sharding."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from etcjax import encryption

# A few shapes per block size keep the number of compilations small.
SIZES = {
    16: [(16, 16), (32, 48)],
    8: [(8, 16), (24, 16)],
    4: [(4, 8), (12, 8)],
    1: [(1, 1), (5, 7)]
}
# etc_gray's RGB round trip is off by at most 1 (YCbCr rounding; see
# test_baselines for the measurement over all colours); all others are exact.
TOLERANCE = {"etc_gray": 1}


@pytest.mark.parametrize("scheme", sorted(encryption.SCHEMES))
@settings(max_examples=20, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 3),
       which=st.integers(0, 1),
       data=st.data())
def test_round_trip(scheme, key, seed, n, which, data):
  spec = encryption.get_scheme(scheme)
  b = spec.default_block_size
  if scheme in ("etc", "block_common"):
    b = data.draw(st.sampled_from([4, 8, 16]), label="block_size")
  h, w = SIZES[b][which]
  images = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), np.uint8)
  ids = np.arange(n) * 7 + seed % 5 if scheme == "pe_per_image" else None
  enc = encryption.encrypt(images, key, scheme, block_size=b, image_ids=ids)
  assert isinstance(enc, np.ndarray) and enc.dtype == np.uint8
  back = encryption.decrypt(enc, key, scheme, block_size=b, image_ids=ids)
  assert back.shape == images.shape and back.dtype == np.uint8
  error = np.abs(back.astype(np.int16) - images).max()
  assert error <= TOLERANCE.get(scheme, 0)


@pytest.mark.parametrize("scheme", sorted(encryption.SCHEMES))
def test_encrypted_images_hide_the_plain_ones(scheme):
  # 16 blocks of 16x16: with a fresh key, a block keeps its place and draws
  # the identity transform with probability ~1/96 (~1% that 1 of 4 blocks
  # of a 32x32 image does, 25% equal pixels); 3 of 16 (the 0.2 below)
  # never happen in practice.
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
  ids = np.arange(2) if scheme == "pe_per_image" else None
  enc = encryption.encrypt(images,
                           encryption.generate_key(),
                           scheme,
                           image_ids=ids)
  if scheme == "etc_gray":
    assert enc.shape == (2, 64, 192, 1)
  else:
    assert np.mean(enc == images) < 0.2


def test_numpy_in_numpy_out_jax_in_jax_out():
  key = encryption.generate_key()
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
  from_numpy = encryption.encrypt(images, key)
  from_jax = encryption.encrypt(jnp.asarray(images), key)
  assert isinstance(from_numpy, np.ndarray) and isinstance(from_jax, jax.Array)
  np.testing.assert_array_equal(from_numpy, np.asarray(from_jax))


@pytest.mark.parametrize("scheme", sorted(encryption.SCHEMES))
def test_jit_equals_eager_and_works_inside_other_jitted_functions(scheme):
  key = encryption.generate_key()
  images = np.random.default_rng(2).integers(0, 256, (3, 16, 32, 3), np.uint8)
  ids = np.arange(3) if scheme == "pe_per_image" else None
  spec = encryption.get_scheme(scheme)
  plan = encryption.make_plan(key, scheme, (16, 32, 3), image_ids=ids)
  jitted = np.asarray(encryption.apply(plan, images))
  with jax.disable_jit():
    eager = np.asarray(encryption.apply(plan, images))
    eager_back = np.asarray(encryption.invert(plan, eager))
  np.testing.assert_array_equal(jitted, eager)
  np.testing.assert_array_equal(eager_back,
                                np.asarray(encryption.invert(plan, jitted)))

  @jax.jit
  def train_step_input(plan, images):
    # Encrypt on device, then the model's input normalisation.
    return encryption.apply(plan, images).astype(jnp.float32) / 127.5 - 1.0

  out = train_step_input(plan, jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(out), jitted / 127.5 - 1.0, atol=1e-6)
  assert spec.representation == plan.representation


def test_apply_with_a_plan_of_another_key_does_not_recompile():
  images = np.zeros((2, 16, 16, 3), np.uint8)
  plans = [
      encryption.make_plan(encryption.generate_key(), "etc", (16, 16, 3))
      for _ in range(3)
  ]
  encryption.apply(plans[0], images)
  from etcjax.encryption import plans as plans_lib
  before = plans_lib._encrypt_flat._cache_size()
  for plan in plans[1:]:
    encryption.apply(plan, images)
  assert plans_lib._encrypt_flat._cache_size() == before


_SHARDED = textwrap.dedent("""
  import json
  import numpy as np
  import jax
  jax.config.update("jax_num_cpu_devices", 8)
  from jax.sharding import NamedSharding, PartitionSpec as P
  from etcjax import encryption

  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",))
  batch = NamedSharding(mesh, P("data"))
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), np.uint8)
  result = {}
  for scheme in ("etc", "le", "pe_per_image", "etc_gray"):
    ids = np.arange(16) if scheme == "pe_per_image" else None
    plan = encryption.make_plan(encryption.generate_key(), scheme, (32, 32, 3),
                                image_ids=ids)
    single = np.asarray(encryption.apply(plan, images))
    sharded_in = jax.device_put(images, batch)
    enc = encryption.apply(plan, sharded_in)
    back = encryption.invert(plan, enc)
    step = jax.jit(lambda p, x: encryption.invert(p, encryption.apply(p, x)),
                   out_shardings=batch)
    result[scheme] = dict(
        equal=bool((np.asarray(enc) == single).all()),
        enc_sharded=enc.sharding.is_equivalent_to(batch, enc.ndim),
        back_sharded=back.sharding.is_equivalent_to(batch, back.ndim),
        shards=len(enc.addressable_shards),
        round_trip=int(np.abs(np.asarray(back, np.int16) - images).max()),
        in_jit=int(np.abs(np.asarray(step(plan, sharded_in), np.int16)
                          - images).max()))
  print(json.dumps(result))
""")


def test_on_8_devices_a_sharded_batch_stays_sharded_and_matches_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = subprocess.run([sys.executable, "-c", _SHARDED],
                       env=env,
                       capture_output=True,
                       text=True,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  for scheme, r in result.items():
    tolerance = 1 if scheme == "etc_gray" else 0
    assert r["equal"] and r["enc_sharded"] and r["back_sharded"], (scheme, r)
    assert r["shards"] == 8, (scheme, r)
    assert r["round_trip"] <= tolerance and r["in_jit"] <= tolerance, (scheme,
                                                                       r)

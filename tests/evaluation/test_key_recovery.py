"""Same-key key recovery: the attacks, their referee, and the task."""

import inspect
import json
import os

import numpy as np
import pytest
from scipy import ndimage

from etcjax import encryption
from etcjax import evaluate
from etcjax.evaluation import key_recovery
from etcjax.evaluation import key_recovery_scoring
from etcjax.evaluation import sources
from etcjax.evaluation.attacks import known_plaintext
from etcjax.evaluation.attacks import same_key

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def smooth_images(n, side=64, seed=0):
  """Smooth random colour images with a layout (bright, reddish top left).

  The layout lets the adversary's prior settle the global transform, as
  skies and grounds do in photos.
  """
  rng = np.random.default_rng(seed)
  # Like photos: one luminance field shared by the channels, weaker colour.
  noise = rng.normal(size=(n, side, side, 4))
  smooth = ndimage.gaussian_filter(noise, sigma=(0, 5, 5, 0))
  smooth /= smooth.std()
  y, x = np.mgrid[0:side, 0:side] / side
  layout = np.stack([70 * (1 - y), 40 * (1 - x), -50 * y], axis=-1)
  images = 110 + 35 * smooth[..., :1] + 12 * smooth[..., 1:] + layout
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _attack(scheme, n, images=None, public=None, **kw):
  images = smooth_images(n, seed=1) if images is None else images
  public = smooth_images(200, seed=2) if public is None else public
  shape = images.shape[1:]
  ids = np.arange(len(images)) if scheme == "pe_per_image" else None
  encrypted = encryption.encrypt(images, KEY, scheme, image_ids=ids)
  recovered = same_key.recover_key(encrypted, scheme=scheme,
                                   image_shape=shape, public_plain=public, **kw)
  truth = encryption.make_plan(
      KEY, "pe" if scheme == "pe_per_image" else scheme, shape)
  result = key_recovery_scoring.score(
      truth, recovered, images, encrypted,
      key=KEY if ids is not None else None, image_ids=ids)
  return recovered, result


@pytest.mark.parametrize("module", [same_key, known_plaintext])
def test_attacks_cannot_receive_a_key_or_plan(module):
  params = inspect.signature(module.recover_key).parameters
  forbidden = {"key", "plan", "truth", "secret", "key_file", "image_ids"}
  assert not forbidden & set(params), sorted(params)
  # Everything but the data is keyword-only public facts.
  for name, p in params.items():
    if p.kind != p.KEYWORD_ONLY:
      assert name in ("ciphertexts", "plain", "encrypted"), name
  images = smooth_images(2)
  with pytest.raises(TypeError):
    module.recover_key(images, images, scheme="etc", image_shape=(64, 64, 3),
                       plan=encryption.make_plan(KEY, "etc", (64, 64, 3)))


def test_same_key_module_does_not_import_key_material():
  # The attack modules work without any function that derives plans.
  for module in (same_key, known_plaintext):
    source = inspect.getsource(module)
    for name in ("make_plan", "load_key", "generate_key", "KeyStream"):
      assert name not in source, (module.__name__, name)


def test_etc_recovered_from_pooled_ciphertexts():
  recovered, result = _attack("etc", 60)
  assert recovered.plan.fingerprint == same_key.RECOVERED
  assert result.neighbours == 1.0
  assert result.blocks_exact > 0.95
  assert result.ssim.mean() > 0.95


def test_pe_recovered_but_per_image_keys_resist():
  _, pe = _attack("pe", 40)
  _, control = _attack("pe_per_image", 40)
  assert pe.values_exact > 0.95 and pe.ssim.mean() > 0.95
  # The control: pooling over images with different keys gives nothing
  # (1/6 of the colour orders right by chance).
  assert control.values_exact < 0.3
  assert control.ssim.mean() < 0.2


def test_le_content_recovered_from_pooled_blocks():
  _, result = _attack("le", 40)
  assert result.ssim.mean() > 0.8


def test_ele_block_solver_scales_past_256_blocks():
  # 72x72 images hold 324 ELE blocks of 4x4 (the solver used to stop at
  # 256); pooled over 150 ciphertexts most neighbours are found again.
  images = smooth_images(150, side=72, seed=1)
  public = smooth_images(200, side=72, seed=2)
  recovered, result = _attack("ele", 0, images=images, public=public)
  assert result.neighbours > 0.4, result.neighbours
  assert recovered.edge_images == len(images)


def _random_correlations(k, n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(k):
    x = rng.normal(size=(200, n)) @ rng.normal(size=(n, n))
    out.append(np.corrcoef(x, rowvar=False))
  return np.stack(out)


def test_batched_assignment_is_scipys_faq():
  # The batched Frank-Wolfe steps find what scipy's FAQ finds problem by
  # problem, random starts included.
  from scipy import optimize
  a = _random_correlations(6, 14, seed=0)
  b = _random_correlations(1, 14, seed=1)[0]
  batched = same_key._faq_batch(a, b, seed=3, restarts=2)
  for k in range(len(a)):
    rng = np.random.default_rng(3)
    best = None
    for p0 in ["barycenter", "randomized", "randomized"]:
      res = optimize.quadratic_assignment(
          a[k], b, method="faq",
          options=dict(maximize=True, P0=p0, rng=rng, maxiter=60))
      if best is None or res.fun > best[0]:
        best = (res.fun, res.col_ind)
    np.testing.assert_array_equal(batched[k], best[1])
  # One problem or a batch of them: the same matching and signs.
  match, signs = same_key.match_signed_permutation(a, b, seed=0, restarts=1)
  for k in (0, 4):
    one = same_key.match_signed_permutation(a[k], b, seed=0, restarts=1)
    np.testing.assert_array_equal(one[0], match[k])
    np.testing.assert_array_equal(one[1], signs[k])


def test_pooled_edges_without_the_whole_gram_matrix():
  # Too many pieces for the Gram matrix: the rows the solver asks for are
  # computed on demand, and give the same costs.
  pieces = _blocks_of(smooth_images(5, side=32, seed=6), 4)
  photometric = same_key._photometric(3, True, True)
  whole = same_key.PooledEdges(pieces, 127.5, photometric)
  lazy = same_key.PooledEdges(pieces, 127.5, photometric, max_gram_bytes=0)
  assert not whole.lazy and lazy.lazy
  for piece, sym, photo in [(0, 0, 0), (17, 3, 5), (63, 6, 11)]:
    for side in ("right", "left", "below", "above"):
      np.testing.assert_allclose(
          lazy.costs(piece, sym, photo, side, range(8)),
          whole.costs(piece, sym, photo, side, range(8)), rtol=1e-4,
          atol=1e-2)


def _blocks_of(images, b):
  n, h, w, c = images.shape
  return images.reshape(n, h // b, b, w // b, b, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(n, -1, b, b, c)


def test_known_plaintext_one_pair_breaks_etc():
  images = smooth_images(20, seed=3)
  encrypted = encryption.encrypt(images, KEY, "etc")
  recovered = known_plaintext.recover_key(
      images[:1], encrypted[:1], scheme="etc", image_shape=(64, 64, 3))
  result = key_recovery_scoring.score(
      encryption.make_plan(KEY, "etc", (64, 64, 3)), recovered, images,
      encrypted)
  assert result.blocks_exact == 1.0 and result.values_exact == 1.0


@pytest.mark.parametrize("scheme", ["block_common", "le", "pe"])
def test_known_plaintext_value_maps(scheme):
  images = smooth_images(12, seed=4)
  encrypted = encryption.encrypt(images, KEY, scheme)
  recovered = known_plaintext.recover_key(
      images[:3], encrypted[:3], scheme=scheme, image_shape=(64, 64, 3))
  result = key_recovery_scoring.score(
      encryption.make_plan(KEY, scheme, (64, 64, 3)), recovered, images,
      encrypted)
  assert result.values_exact > 0.99


def test_scoring_a_wrong_key_scores_low():
  # The referee can fail: the key recovered from other-key ciphertexts
  # does not decrypt these.
  images = smooth_images(30, seed=5)
  public = smooth_images(200, seed=2)
  other = encryption.encrypt(images, OTHER_KEY, "etc")
  recovered = same_key.recover_key(other, scheme="etc",
                                   image_shape=(64, 64, 3), public_plain=public)
  result = key_recovery_scoring.score(
      encryption.make_plan(KEY, "etc", (64, 64, 3)), recovered, images,
      encryption.encrypt(images, KEY, "etc"))
  assert result.blocks_exact < 0.2
  assert result.neighbours < 0.5


def test_bad_inputs_are_refused_clearly():
  images = smooth_images(3)
  with pytest.raises(ValueError, match="ciphertexts must be"):
    same_key.recover_key(images[..., :1], scheme="etc",
                         image_shape=(64, 64, 3), public_plain=images)
  with pytest.raises(ValueError, match="public_plain"):
    same_key.recover_key(images, scheme="etc", image_shape=(64, 64, 3),
                         public_plain=images[:1])
  with pytest.raises(ValueError, match="one per plain image"):
    known_plaintext.recover_key(images[:2], images[:1], scheme="etc",
                                image_shape=(64, 64, 3))
  with pytest.raises(ValueError, match="positive"):
    key_recovery.parse_counts("0,5")
  with pytest.raises(ValueError, match="integers or 'all'"):
    key_recovery.parse_counts("5,many")


def test_real_cifar10_etc_and_pe_at_small_n(tfds_data_dir):
  test = sources.load("cifar10", "test", data_dir=tfds_data_dir, limit=100,
                      progress=False)
  public = sources.load("cifar10", "train", data_dir=tfds_data_dir,
                        limit=500, progress=False)
  # Pooled over 100 ciphertexts the block puzzles are solved (the global
  # left-right mirror may stay unsettled); PE falls with 20.
  for scheme, n in (("etc", 100), ("etc_gray", 100), ("pe", 20)):
    _, result = _attack(scheme, None, images=test.images[:n],
                        public=public.images)
    if scheme != "pe":
      assert result.neighbours > 0.8, (scheme, result.neighbours)
    assert result.ssim_up_to_mirror > 0.8, (scheme, result.ssim_up_to_mirror)
  # One ciphertext is far from enough for EtC's 2x2 blocks of CIFAR-10.
  _, single = _attack("etc", None, images=test.images[:1],
                      public=public.images)
  assert single.ssim_up_to_mirror < 0.5


def test_task_writes_tables_without_key_and_resumes(tfds_data_dir, tmp_path):
  out = str(tmp_path / "run")
  path = key_recovery.run(
      "cifar10", KEY, out, schemes=["etc", "pe_per_image"],
      ciphertexts="1,all", pairs="1", data_dir=tfds_data_dir, test_limit=24,
      progress=False)
  names = set(os.listdir(path))
  assert {"table.csv", "table.md", "breaking_point.csv", "meta.json",
          "recovery_ssim.png"} <= names
  assert any(n.startswith("examples_") for n in names)
  with open(os.path.join(path, "table.csv")) as f:
    header = f.readline().strip().split(",")
    rows = f.read().splitlines()
  for column in ("scheme", "attack", "ciphertexts", "neighbours",
                 "blocks_exact", "ssim", "seconds"):
    assert column in header
  assert len(rows) == 2 * 3  # 2 schemes x (N = 1, 24; k = 1)
  etc_all = [r for r in rows if r.startswith("etc,ciphertext_only,24")]
  assert etc_all and "BROKEN" in etc_all[0]
  control = [r for r in rows if r.startswith("pe_per_image,ciphertext_only,24")]
  assert "resisted" in control[0]
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  assert meta["key_fingerprint"] == encryption.fingerprint(KEY)
  for name in names:
    with open(os.path.join(path, name), "rb") as f:
      data = f.read()
    assert KEY not in data and KEY.hex().encode() not in data
  assert not os.path.exists(os.path.join(out, "key_recovery",
                                         ".cifar10.resume"))
  with pytest.raises(FileExistsError, match="overwrite"):
    key_recovery.run("cifar10", KEY, out, schemes=["etc"],
                     ciphertexts="1", pairs="1", data_dir=tfds_data_dir,
                     test_limit=24, progress=False)


def test_task_resumes_finished_pieces(tfds_data_dir, tmp_path, monkeypatch):
  out = str(tmp_path / "run")
  calls = []
  real = key_recovery._attack

  def failing(setting, attack, n, *args, **kw):
    calls.append((setting.name, attack, n))
    if len(calls) == 2:
      raise RuntimeError("interrupted")
    return real(setting, attack, n, *args, **kw)

  monkeypatch.setattr(key_recovery, "_attack", failing)
  kw = dict(schemes=["pe"], ciphertexts="1,2", pairs="1",
            data_dir=tfds_data_dir, test_limit=16, progress=False)
  with pytest.raises(RuntimeError):
    key_recovery.run("cifar10", KEY, out, **kw)
  assert not os.path.exists(os.path.join(out, "key_recovery", "cifar10"))
  calls.clear()
  monkeypatch.setattr(key_recovery, "_attack", real)
  seen = []
  monkeypatch.setattr(key_recovery, "_attack",
                      lambda s, a, n, *args, **k: seen.append(n) or real(
                          s, a, n, *args, **k))
  key_recovery.run("cifar10", KEY, out, **kw)
  assert len(seen) == 2  # The first piece was not attacked again.


def test_cli_refuses_bad_counts_and_writes_nothing(tmp_path, capsys):
  code = evaluate.main(["key_recovery", "--ciphertexts=0,5",
                        f"--out={tmp_path}", "--no_progress"])
  assert code == 1
  assert "ciphertext counts must be positive, got 0" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "key_recovery" / "cifar10")

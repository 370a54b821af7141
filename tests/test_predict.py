"""Export -> predict round trip: encryption with the key, wrong-key refusal."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from etcjax import encryption
from etcjax import predict
from etcjax.training import train
from training import tiny_runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(export dir, key file, image folder) of a tiny EtC run."""
  root = tmp_path_factory.mktemp("predict")
  folder = tiny_runs.make_image_folder(str(root / "data"))
  key_file = str(root / "owner.key")
  encryption.save_key(key_file, encryption.generate_key())
  config = tiny_runs.tiny_config(folder, scheme="etc", block_size=8,
                                 key_file=key_file)
  config.total_steps = 4
  train.train_and_evaluate(config, str(root / "work"))
  return str(root / "work" / "export"), key_file, folder


def _test_images(folder):
  files = predict.find_images([os.path.join(folder, "test")])
  return files, predict.read_images(files, (32, 32, 3), False, False)


def test_plain_images_with_key_equal_encrypted_images(trained):
  export_dir, key_file, folder = trained
  classifier = predict.Classifier(export_dir)
  key = encryption.load_key(key_file)
  _, images = _test_images(folder)
  labels, probs = classifier.classify(images, key=key)
  assert probs.shape == (64, 4) and labels.shape == (64,)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  enc = encryption.encrypt(images, key, "etc", 8)
  labels2, probs2 = classifier.classify(enc, encrypted=True)
  np.testing.assert_array_equal(labels, labels2)
  np.testing.assert_allclose(probs, probs2, rtol=1e-6)
  # The model sees encrypted images: plain images passed as if encrypted
  # give other outputs.
  _, probs3 = classifier.classify(images, encrypted=True)
  assert not np.allclose(probs, probs3)


def test_wrong_or_missing_key_is_refused(trained):
  export_dir, _, folder = trained
  classifier = predict.Classifier(export_dir)
  _, images = _test_images(folder)
  with pytest.raises(encryption.KeyMismatchError, match="wrong key"):
    classifier.classify(images, key=encryption.generate_key())
  with pytest.raises(ValueError, match="pass the key"):
    classifier.classify(images)


def test_cli_prints_labels_and_refuses_wrong_key(trained, tmp_path, capsys):
  export_dir, key_file, folder = trained
  files, _ = _test_images(folder)
  assert predict.main([f"--export={export_dir}", f"--key_file={key_file}",
                       "--json", files[0], files[-1]]) == 0
  rows = json.loads(capsys.readouterr().out)
  assert [r["path"] for r in rows] == [files[0], files[-1]]
  assert all(r["label"] in tiny_runs.CLASSES for r in rows)
  assert all(0 <= r["probability"] <= 1 for r in rows)

  wrong = str(tmp_path / "wrong.key")
  encryption.save_key(wrong, encryption.generate_key())
  assert predict.main([f"--export={export_dir}", f"--key_file={wrong}",
                       files[0]]) == 1
  err = capsys.readouterr().err
  assert "wrong key" in err and "fingerprint" in err
  assert encryption.load_key(wrong).hex() not in err


def test_cli_image_size_errors_and_resize(trained, tmp_path, capsys):
  export_dir, key_file, _ = trained
  big = str(tmp_path / "big.png")
  Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(big)
  assert predict.main([f"--export={export_dir}", f"--key_file={key_file}",
                       big]) == 1
  assert "is 40x48, the model needs 32x32" in capsys.readouterr().err
  assert predict.main([f"--export={export_dir}", f"--key_file={key_file}",
                       "--resize", big]) == 0
  assert predict.main([f"--export={export_dir}", "--encrypted", "--resize",
                       big]) == 1
  assert "is 40x48" in capsys.readouterr().err


def test_incomplete_export_is_refused(trained, tmp_path, capsys):
  assert predict.main([f"--export={tmp_path}", "x.png"]) == 1
  assert "not a complete etcjax export" in capsys.readouterr().err


def test_plain_model_refuses_key_and_encrypted_flag():
  classifier = predict.Classifier.__new__(predict.Classifier)
  classifier.info = {"scheme": None, "image_shape": [32, 32, 3],
                     "input_shape": [32, 32, 3]}
  images = np.zeros((2, 32, 32, 3), np.uint8)
  assert classifier.model_inputs(images) is images
  with pytest.raises(ValueError, match="trained on plain images"):
    classifier.model_inputs(images, key=encryption.generate_key())
  with pytest.raises(ValueError, match="trained on plain images"):
    classifier.model_inputs(images, encrypted=True)
  with pytest.raises(ValueError, match=r"uint8 \[N, 32, 32, 3\]"):
    classifier.model_inputs(np.zeros((2, 16, 16, 3), np.uint8))


def test_cli_old_key_flag_warns_and_usage_errors_exit_2(trained, capsys):
  export_dir, key_file, folder = trained
  files, _ = _test_images(folder)
  assert predict.main([f"--export={export_dir}", f"--key={key_file}",
                       files[0]]) == 0
  assert "--key is deprecated, use --key_file" in capsys.readouterr().err
  assert predict.main([f"--export={export_dir}", f"--key_file={key_file}",
                       "--encrypted", files[0]]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "not both" in err
  assert predict.main([f"--export={export_dir}", "--no_such_flag",
                       files[0]]) == 2


def test_cli_takes_relative_paths(trained, tmp_path, monkeypatch, capsys):
  export_dir, key_file, folder = trained
  files, _ = _test_images(folder)
  monkeypatch.chdir(os.path.dirname(export_dir))
  assert predict.main(["--export=export", f"--key_file={key_file}",
                       os.path.relpath(files[0])]) == 0
  assert os.path.abspath(files[0]) in capsys.readouterr().out

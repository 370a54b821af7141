"""The attacks and visual-information tasks on real data, and the CLI."""

import json
import os

import numpy as np
import pytest

from etcjax import evaluate
from etcjax.evaluation import attack_suite
from etcjax.evaluation import tables
from etcjax.evaluation import visual_information
from etcjax.evaluation.attacks import threat_model

KEY = bytes(range(32))


def test_attack_suite_smoke_on_cifar10(tfds_data_dir, tmp_path):
  path = attack_suite.run(
      "cifar10", KEY, str(tmp_path), size="smoke",
      schemes=["etc", "le", "pe"],
      attack_names=["brute_force", "fr", "fr_advanced", "jigsaw"],
      data_dir=tfds_data_dir, test_limit=48, jigsaw_limit=48, progress=False)
  names = set(os.listdir(path))
  assert {"ssim_psnr.csv", "ssim_psnr.md", "jigsaw.md", "brute_force.md",
          "ssim_box.png", "psnr_box.png", "per_image.csv",
          "meta.json"} <= names
  assert any(n.startswith("examples_") for n in names)
  columns, rows = tables.read_csv(os.path.join(path, "ssim_psnr.csv"))
  by = {(r["scheme"], r["attack"]): r for r in rows}
  assert by[("le", "jigsaw")]["verdict"] == "n/a"
  assert by[("pe", "fr_advanced")]["images"] == "48"
  # Folding undoes PE's inversions: more structure than the encrypted image.
  assert float(by[("pe", "fr")]["SSIM mean"]) > float(
      by[("pe", "encrypted")]["SSIM mean"]) + 0.1
  _, jig = tables.read_csv(os.path.join(path, "jigsaw.csv"))
  etc = [r for r in jig if r["scheme"] == "etc"][0]
  # 4 blocks of 16x16: the solver gets CIFAR-10 EtC right up to a global
  # transform almost always.
  assert float(etc["right place up to global rotation/flip"]) > 0.8
  meta = json.load(open(os.path.join(path, "meta.json")))
  assert meta["key_fingerprint"] and KEY.hex() not in json.dumps(meta)
  # Natural images share more with their set's mean than with each other.
  chance = meta["reference_ssim"]
  assert 0 < chance["unrelated image"] < chance["mean image"] < 0.3
  assert "Chance levels" in open(os.path.join(path, "ssim_psnr.md")).read()
  # The solved 4-block puzzles beat the mean image; the encrypted images
  # do not.
  oracle = by[("etc", "jigsaw_up_to_global")]
  assert float(oracle["above mean image"]) > 0.8
  assert oracle["verdict"].startswith(("BROKEN", "partial"))
  assert float(by[("etc", "encrypted")]["above mean image"]) < 0.5


def test_verdict_needs_more_than_the_mean_image_does():
  assert attack_suite.verdict(0.6, 0.9) == "BROKEN: content recovered"
  assert attack_suite.verdict(0.3, 0.9) == "partial: structure leaks"
  assert attack_suite.verdict(0.3, 0.4) == "resisted (chance level)"
  assert attack_suite.verdict(0.6, 0.2) == "resisted (chance level)"
  assert attack_suite.verdict(0.1, 0.9) == "resisted"
  assert attack_suite.verdict(float("nan"), 0.0) == ""
  assert attack_suite.jigsaw_verdict(0.95).startswith("BROKEN")
  assert attack_suite.jigsaw_verdict(0.5).startswith("partial")
  assert attack_suite.jigsaw_verdict(0.05) == "resisted"


def test_chance_levels_of_identical_and_of_noise_images():
  same = np.full((3, 16, 16, 3), 90, np.uint8)
  assert attack_suite.chance_levels(same) == pytest.approx(
      {"unrelated image": 1.0, "mean image": 1.0})
  noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
  levels = attack_suite.chance_levels(noise)
  assert abs(levels["unrelated image"]) < 0.05


def test_visual_information_smoke_on_cifar10(tfds_data_dir, tmp_path):
  path = visual_information.run("cifar10", KEY, str(tmp_path), limit=32,
                                schemes=["pe", "etc"], data_dir=tfds_data_dir,
                                progress=False)
  _, rows = tables.read_csv(os.path.join(path, "visual_information.csv"))
  assert [r["scheme"] for r in rows] == ["pe", "etc"]
  for r in rows:
    assert 0 < float(r["LPIPS mean"]) and float(r["SSIM mean"]) < 0.3
  assert os.path.exists(os.path.join(path, "visual_information.png"))


def test_attack_suite_tag_and_per_scheme_jigsaw_limits(tfds_data_dir,
                                                      tmp_path):
  path = attack_suite.run(
      "cifar10", KEY, str(tmp_path), size="smoke", schemes=["etc", "pe"],
      attack_names=["fr", "jigsaw"], data_dir=tfds_data_dir, test_limit=12,
      jigsaw_limit={"etc": 5}, tag="small", progress=False)
  assert path == os.path.join(str(tmp_path), "attacks", "cifar10-small")
  meta = json.load(open(os.path.join(path, "meta.json")))
  assert meta["dataset"] == "cifar10" and meta["tag"] == "small"
  # 5 evenly spaced images plus the example images every attack runs on.
  assert meta["jigsaw_images"] == {"etc": 5}
  with pytest.raises(ValueError, match=r"schemes \['le'\] that are not attacked"):
    attack_suite.run("cifar10", KEY, str(tmp_path), schemes=["etc"],
                     attack_names=["jigsaw"], jigsaw_limit={"le": 3},
                     data_dir=tfds_data_dir, progress=False)
  with pytest.raises(ValueError, match="letters, digits and _"):
    attack_suite.run("cifar10", KEY, str(tmp_path), schemes=["etc"],
                     attack_names=["fr"], tag="../up", progress=False)
  # Before any data is read: nothing is written.
  bad_batch = threat_model.TrainingSize(steps=1, batch_size=0, width=8)
  with pytest.raises(ValueError, match=r"batch size \(0, --train_batch\)"):
    attack_suite.run("cifar10", KEY, str(tmp_path / "none"), schemes=["etc"],
                     attack_names=["itn"], training=bad_batch, progress=False)
  assert not os.path.exists(tmp_path / "none")


def test_attack_suite_resumes_after_a_crash(tfds_data_dir, tmp_path,
                                            monkeypatch):
  args = dict(size="smoke", schemes=["etc", "pe"],
              attack_names=["fr", "jigsaw"], data_dir=tfds_data_dir,
              test_limit=12, jigsaw_limit=4, progress=False)
  # The reference runs each attack in one chunk; the crashing run in
  # chunks of 5 (FR) and 2 (jigsaw) images, which must not change a result.
  reference = attack_suite.run("cifar10", KEY, str(tmp_path / "ref"), **args)
  monkeypatch.setattr(attack_suite, "CHUNK_IMAGES",
                      {"fr": 5, "fr_advanced": 5, "jigsaw": 2})

  calls = []
  real = attack_suite.attacks_lib.reconstruct

  def crash_in_pe_fr(name, context, prior):
    calls.append((context.scheme, name, len(context.encrypted)))
    if calls.count(("pe", "fr", 5)) == 2:  # Its second chunk.
      raise RuntimeError("power cut")
    return real(name, context, prior)

  run_dir = str(tmp_path / "run")
  monkeypatch.setattr(attack_suite.attacks_lib, "reconstruct", crash_in_pe_fr)
  with pytest.raises(RuntimeError, match="power cut"):
    attack_suite.run("cifar10", KEY, run_dir, **args)
  assert not os.path.exists(os.path.join(run_dir, "attacks", "cifar10"))
  store = os.path.join(run_dir, "attacks", ".cifar10.resume")
  saved = os.listdir(store)
  assert "etc__jigsaw.npz" in saved and "pe__fr.part00000.npz" in saved
  assert "pe__fr.npz" not in saved

  # Other settings do not mix with the unfinished run's pieces.
  with pytest.raises(FileExistsError, match="test_images differ"):
    attack_suite.run("cifar10", KEY, run_dir, **dict(args, test_limit=10))

  calls.clear()
  monkeypatch.setattr(
      attack_suite.attacks_lib, "reconstruct",
      lambda *a: calls.append((a[1].scheme, a[0], len(a[1].encrypted)))
      or real(*a))
  path = attack_suite.run("cifar10", KEY, run_dir, **args)
  # etc's attacks and pe's first FR chunk were not run again.
  assert calls == [("pe", "fr", 5), ("pe", "fr", 2)]
  assert not os.path.exists(store)
  for name in ("per_image.csv", "ssim_psnr.csv", "jigsaw.csv"):
    with open(os.path.join(path, name)) as got, \
        open(os.path.join(reference, name)) as want:
      assert got.read() == want.read(), name


@pytest.mark.parametrize("argv, message", [
    (["attacks", "--attacks=sudoku"], "unknown attack 'sudoku'; known attacks"),
    (["attacks", "--attacks=jigsaw", "--schemes=pe,le"],
     "'jigsaw' does not apply to scheme 'pe'"),
    (["attacks", "--schemes=rot13"], "unknown scheme 'rot13'; known schemes"),
    (["visual", "--datasets=mnist"], "unknown dataset 'mnist'"),
    (["compressibility", "--datasets=imagenette"], "needs --imagenette_dir"),
    (["compressibility", "--codecs=webp"], "unknown codecs"),
    (["compressibility", "--limit=0"], "limit must be positive"),
    (["brute_force", "--image_sizes=30"], "not a multiple of the block size"),
    (["report"], "no completed evaluation results"),
])
def test_cli_reports_bad_input_clearly(tmp_path, capsys, argv, message):
  assert evaluate.main(argv + [f"--out={tmp_path}"]) == 1
  assert message in capsys.readouterr().err
  assert not [p for p in os.listdir(tmp_path) if p != "report.md"]


def test_cli_missing_tfds_data_dir(tmp_path, capsys):
  code = evaluate.main(["visual", f"--out={tmp_path}",
                        f"--data_dir={tmp_path / 'nowhere'}", "--no_progress"])
  assert code == 1
  assert "not prepared" in capsys.readouterr().err


def test_cli_brute_force_and_report(tmp_path, capsys):
  assert evaluate.main(["brute_force", f"--out={tmp_path}"]) == 0
  assert evaluate.main(["report", f"--out={tmp_path}"]) == 0
  text = open(tmp_path / "report.md").read()
  assert "Brute force" in text and "FEASIBLE" in text
  assert evaluate.main(["brute_force", f"--out={tmp_path}"]) == 1
  assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["attacks", "--size=huge"], ["attacks", "--jigsaw_limit=etc:many"]])
def test_cli_usage_errors_exit_2(tmp_path, argv, capsys):
  assert evaluate.main(argv + [f"--out={tmp_path}"]) == 2
  assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_all_smoke_with_every_attack(data_dir, tfds_data_dir,
                                         imagenette_dir, tmp_path):
  code = evaluate.main([
      "all", "--size=smoke", f"--out={tmp_path}", f"--data_dir={tfds_data_dir}",
      f"--imagenette_dir={imagenette_dir}", "--datasets=cifar10,imagenette",
      "--no_progress"])
  assert code == 0
  text = open(tmp_path / "report.md").read()
  for section in ("compressibility / cifar10", "visual / imagenette",
                  "attacks / cifar10", "attacks / imagenette", "brute_force",
                  "key_recovery / cifar10", "key_recovery / imagenette"):
    assert section in text
  _, rows = tables.read_csv(str(tmp_path / "attacks" / "cifar10" / "ssim_psnr.csv"))
  attacks = {r["attack"] for r in rows if r["verdict"] != "n/a"}
  assert {"fr", "fr_advanced", "gan", "itn", "jigsaw"} <= attacks


def test_cli_training_overrides_keep_the_rest_of_the_preset():
  args = evaluate._parser().parse_args([  # pylint: disable=protected-access
      "attacks", "--out=x", "--size=full", "--train_steps=5",
      "--train_lr=1e-3", "--train_keys=7"])
  training = evaluate._training(args)  # pylint: disable=protected-access
  preset = attack_suite.SIZES["full"].training
  assert (training.steps, training.learning_rate, training.num_keys) == (
      5, 1e-3, 7)
  assert (training.batch_size, training.width) == (preset.batch_size,
                                                    preset.width)
  args = evaluate._parser().parse_args(["attacks", "--out=x"])  # pylint: disable=protected-access
  assert evaluate._training(args) is None  # pylint: disable=protected-access

"""benchmarks/accelerator.py runs end to end on CPU at its tiny size."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import accelerator  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run(tmp_path, data_dir, *args):
  out = tmp_path / "report.json"
  env = dict(os.environ, ETCJAX_DATA_DIR=data_dir, PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--compute_dtype=bfloat16", "--min_seconds=0.2",
       "--pipeline_batches=1", "--parity_steps=2", f"--out={out}", *args],
      capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout, json.loads(out.read_text())


def _check_row(row):
  assert row["tiny"] and row["compute_dtype"] == "bfloat16"
  assert row["step_ms"] > 0 and row["images_per_s"] > 0
  assert row["flops_per_step"] > 0
  # CPU: no peak in the table, said so instead of a made-up MFU.
  assert row["mfu"] is None and "unknown peak" in row["mfu_note"]
  assert 0 < row["encrypt_share"] < 1
  assert row["etc_used"] == "gather" and row["etc_blocks_ms"] > 0
  assert row["pipeline_images_per_s"] > 0  # the real CIFAR/Imagenette data
  assert len(row["parity_device_losses"]) == 2
  assert len(row["parity_device_grad_norms"]) == 2
  # bfloat16 against float32: close, and really a different computation.
  assert row["parity_ok"] and row["parity_max_rel_diff"] <= 5e-2
  # ViT's head starts at zero (vit_jax), so its first losses are ln(10) up to
  # float32 rounding in any compute dtype; ConvMixer's are not. The gradient
  # norms go through the body in both.
  if not row["case"].startswith("vit"):
    assert row["parity_device_losses"] != row["parity_cpu_losses"]
  assert row["parity_device_grad_norms"] != row["parity_cpu_grad_norms"]
  assert min(row["parity_cpu_grad_norms"]) > 0


def test_convmixer_cifar10_report(tmp_path, data_dir):
  stdout, report = _run(tmp_path, data_dir, "--cases",
                        "convmixer_256_8_cifar10")
  assert report["backend"] == "cpu"
  (row,) = report["cases"]
  _check_row(row)
  assert "convmixer_256_8_cifar10" in stdout and "MFU n/a" in stdout
  assert not (tmp_path / "report.json.tmp").exists()


@pytest.mark.slow
def test_all_cases_report(tmp_path, data_dir):
  _, report = _run(tmp_path, data_dir)
  assert [r["case"] for r in report["cases"]] == list(accelerator.CASES)
  for row in report["cases"]:
    _check_row(row)


@pytest.mark.slow
def test_full_size_bfloat16_parity(tmp_path, data_dir):
  # The README's CPU check of the paper's models in bfloat16 (numerics, not
  # speed), on the CIFAR-10 ConvMixer. It checks the whole gradient's norm:
  # wrong bias gradients alone hardly move it at this size (they did not
  # before bias.py), tests/training/test_steps.py checks each parameter.
  _, report = _run(tmp_path, data_dir, "--full", "--batch_size=8", "--cases",
                   "convmixer_256_8_cifar10")
  (row,) = report["cases"]
  assert not row["tiny"] and row["batch_size"] == 8
  assert row["model"] == "ConvMixer-256/8" and not row["model_kwargs"]
  assert row["image_size"] == 32
  assert row["parity_ok"], (row["parity_device_grad_norms"],
                            row["parity_cpu_grad_norms"])
  assert row["parity_device_grad_norms"] != row["parity_cpu_grad_norms"]


def test_peak_table():
  assert accelerator.peak_flops("TPU v4") == 275e12
  assert accelerator.peak_flops("TPU v5 lite") == 197e12
  assert accelerator.peak_flops("TPU v5p") == 459e12
  assert accelerator.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert accelerator.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
  assert accelerator.peak_flops("cpu") is None


def test_bad_batch_size_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_info:
    accelerator.main(["--batch_size=0"])
  assert exit_info.value.code == 2
  assert "--batch_size=0 must be a positive multiple of the number of " \
      "devices" in capsys.readouterr().err

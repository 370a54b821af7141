#!/usr/bin/env python3
r"""Runs `python -m etcjax.main` on a Cloud TPU VM: one host or a pod slice.

    # Single host (v4-8), data copied from GCS to every worker:
    python launch/tpu_vm.py --name=etcjax-v4 --zone=us-central2-b \
        --accelerator=v4-8 --data=gs://my-bucket/cifar10_etc \
        --config=configs/vit_etc.py --workdir=gs://my-bucket/runs/vit_etc \
        -- --config.dataset=encrypted

    # Pod slice (v4-32: 4 hosts), same command on every worker:
    python launch/tpu_vm.py --name=etcjax-pod --zone=us-central2-b \
        --accelerator=v4-32 --data=gs://my-bucket/tensorflow_datasets \
        --data_mode=direct --config=configs/vit_plain.py \
        --workdir=gs://my-bucket/runs/vit_plain

    # Paper-length learned attacks (etcjax.evaluate on worker 0; the GAN
    # and ITN batches are split over the host's chips):
    python launch/tpu_vm.py --name=etcjax-eval --zone=us-central2-b \
        --accelerator=v4-8 --data=gs://my-bucket/tensorflow_datasets \
        --key_file=eval.key --entry=evaluate --workdir='$HOME/eval' \
        -- attacks --datasets=cifar10 --size=full --attacks=gan,itn

Steps (`--steps`, default all but delete): create (the TPU VM), upload
(this checkout, as a tarball, to every worker), install (jax[tpu] + etcjax
on every worker), data (copy or gcsfuse-mount `--data` on every worker, or
`direct`: read gs:// from the trainer), key (optional `--key_file` for
on-the-fly encryption), run (the training command on all workers at
once; `--entry=evaluate`: the evaluation on worker 0, with `--data` as
its --data_dir and `--workdir` as its --out), delete. `--dry_run` prints
every command and runs none.

Flags are spelled as in the etcjax CLIs (`--key_file`, `--data_mode`,
`--dry_run`, ...); the older hyphenated spellings still work and warn.
The commands run on the workers use the current flags of `etcjax.main`
and `etcjax.evaluate` (tests/test_launch.py parses them with those CLIs'
own parsers).

The workdir must be on GCS for pod slices: checkpoints, summaries and the
export are written by all hosts to one place. Preemptible (`--spot`) runs
resume from the latest checkpoint when `run` is started again.

Security: `--key_file` copies the secret key onto the cloud VMs, which
defeats the purpose of EtC against the cloud. Use it for research runs
only; otherwise encrypt the dataset locally (`python -m etcjax.encrypt`),
upload the encrypted dataset and train with --config.dataset=encrypted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from typing import List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The flag helpers come from the checkout this script uploads, so the
# machine that drives gcloud needs no etcjax install.
sys.path.insert(0, REPO_ROOT)
from etcjax import command_line  # pylint: disable=g-import-not-at-top,wrong-import-position

# Keep in step with setup.py: TPU workers need the same jax as the package.
JAX_VERSION = "0.10.2"
# TPU VM base images per accelerator generation.
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
STEPS = ("create", "upload", "install", "data", "key", "run", "delete")
DEFAULT_STEPS = ("create", "upload", "install", "data", "key", "run")
REMOTE_SRC = "$HOME/etcjax"
REMOTE_DATA = "$HOME/etcjax_data"
REMOTE_KEY = "$HOME/.etcjax/owner.key"
# etcjax.evaluate tasks that take no --data_dir / no --key_file (the others
# take both); a remote command with a flag its task refuses would fail on
# the VM after the create, upload and install steps.
EVALUATE_NO_DATA = ("brute_force", "report", "adapted_key_recovery")
EVALUATE_NO_KEY = ("brute_force", "report")
# Old spelling -> current one (the etcjax CLIs use underscores).
OLD_FLAGS = {"--runtime-version": "--runtime_version",
             "--tmp-dir": "--tmp_dir", "--data-mode": "--data_mode",
             "--key-file": "--key_file", "--dry-run": "--dry_run"}


def runtime_version(accelerator: str) -> str:
  """The TPU VM image for an accelerator type such as 'v4-8'.

  Args:
    accelerator: '<generation>-<cores or chips>', e.g. 'v4-32',
      'v5litepod-8'.

  Returns:
    The `--version` of `gcloud compute tpus tpu-vm create`.
  """
  generation = accelerator.rsplit("-", 1)[0]
  if generation not in RUNTIME_VERSIONS or not accelerator.rsplit("-", 1)[-1].isdigit():
    raise ValueError(
        f"unknown accelerator type {accelerator!r}; expected e.g. v4-8, "
        f"v4-32, v5litepod-8 (generations {sorted(RUNTIME_VERSIONS)}), or "
        "pass --runtime_version")
  return RUNTIME_VERSIONS[generation]


class Commands:
  """Builds the gcloud commands of one TPU VM."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self._where = [f"--zone={args.zone}"] + (
        [f"--project={args.project}"] if args.project else [])

  def ssh_all(self, remote: str, worker: str = "all") -> List[str]:
    """Runs a shell command on every worker of the TPU VM (or on one)."""
    return (["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.args.name]
            + self._where + [f"--worker={worker}", f"--command={remote}"])

  def scp_all(self, local: str, remote: str) -> List[str]:
    """Copies a local file to every worker."""
    return (["gcloud", "compute", "tpus", "tpu-vm", "scp", local,
             f"{self.args.name}:{remote}"] + self._where + ["--worker=all"])

  def create(self) -> List[List[str]]:
    a = self.args
    cmd = (["gcloud", "compute", "tpus", "tpu-vm", "create", a.name]
           + self._where + [f"--accelerator-type={a.accelerator}",
                            f"--version={a.runtime_version or runtime_version(a.accelerator)}"])
    if a.spot:
      cmd.append("--spot")
    return [cmd]

  def upload(self) -> List[List[str]]:
    tarball = os.path.join(self.args.tmp_dir, "etcjax_src.tar.gz")
    return [
        ["tar", "czf", tarball, "-C", self.args.source, "--exclude=.git",
         "--exclude=__pycache__", "--exclude=*.egg-info", "."],
        self.scp_all(tarball, "etcjax_src.tar.gz"),
        self.ssh_all(f"rm -rf {REMOTE_SRC} && mkdir -p {REMOTE_SRC} && "
                     f"tar xzf $HOME/etcjax_src.tar.gz -C {REMOTE_SRC}"),
    ]

  def install(self) -> List[List[str]]:
    return [self.ssh_all(
        "python3 -m pip install --upgrade pip && "
        f"python3 -m pip install 'jax[tpu]=={JAX_VERSION}' && "
        f"python3 -m pip install -e {REMOTE_SRC}")]

  def data(self) -> List[List[str]]:
    a = self.args
    if not a.data or a.data_mode == "direct":
      return []
    if a.data_mode == "copy":
      return [self.ssh_all(f"mkdir -p {REMOTE_DATA} && gcloud storage cp -r "
                           f"{shlex.quote(a.data.rstrip('/'))}/* {REMOTE_DATA}/")]
    bucket, _, prefix = a.data[len("gs://"):].partition("/")
    only_dir = f" --only-dir={shlex.quote(prefix)}" if prefix else ""
    return [self.ssh_all(
        "(command -v gcsfuse || (sudo apt-get update && sudo apt-get install "
        "-y gcsfuse)) && "
        f"mkdir -p {REMOTE_DATA} && gcsfuse --implicit-dirs{only_dir} "
        f"{shlex.quote(bucket)} {REMOTE_DATA}")]

  def key(self) -> List[List[str]]:
    if not self.args.key_file:
      return []
    return [
        self.ssh_all("mkdir -p $HOME/.etcjax && chmod 700 $HOME/.etcjax"),
        self.scp_all(self.args.key_file, ".etcjax/owner.key"),
        self.ssh_all(f"chmod 600 {REMOTE_KEY}"),
    ]

  def run(self) -> List[List[str]]:
    a = self.args
    if a.entry == "evaluate":
      return self._evaluate()
    flags = [f"--config={a.config}", f"--workdir={a.workdir}", "--distributed"]
    if a.data:
      flags.append("--config.data_dir=" + (
          a.data if a.data_mode == "direct" else REMOTE_DATA))
    if a.key_file:
      flags.append(f"--config.encryption.key_file={REMOTE_KEY}")
    return [self.ssh_all(self._background(
        f"cd {REMOTE_SRC} && python3 -m etcjax.main {_quote(flags + a.extra)}",
        "$HOME/etcjax_main.log"))]

  def _evaluate(self) -> List[List[str]]:
    # One process on one host: the learned attacks split their batches over
    # that host's chips (etcjax.evaluation.attacks.fitting).
    a = self.args
    flags = list(a.extra) + [f"--out={a.workdir}"]
    if a.data:
      flags.append("--data_dir=" + (
          a.data if a.data_mode == "direct" else REMOTE_DATA))
    if a.key_file:
      flags.append(f"--key_file={REMOTE_KEY}")
    return [self.ssh_all(self._background(
        f"cd {REMOTE_SRC} && python3 -m etcjax.evaluate {_quote(flags)}",
        "$HOME/etcjax_evaluate.log"), worker="0")]

  def _background(self, command: str, log: str) -> str:
    if not self.args.detach:
      return command
    return (f"cd {REMOTE_SRC} && nohup sh -c {shlex.quote(command)} "
            f"> {log} 2>&1 &")

  def delete(self) -> List[List[str]]:
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", self.args.name]
            + self._where + ["--quiet"]]


def _quote(flags: Sequence[str]) -> str:
  # Quote everything but the $HOME references, which the worker expands.
  return " ".join(f if "$HOME" in f else shlex.quote(f) for f in flags)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses the command line (arguments after `--` go to the entry point)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: List[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, extra = argv[:i], argv[i + 1:]
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="TPU VM name")
  p.add_argument("--zone", required=True, help="e.g. us-central2-b")
  p.add_argument("--project", default=None, help="GCP project (gcloud default)")
  p.add_argument("--accelerator", default="v4-8",
                 help="accelerator type: v4-8 / v5litepod-8 (one host) or a "
                 "pod slice such as v4-32 (default v4-8)")
  p.add_argument("--runtime_version", default=None,
                 help="TPU VM image (default: by accelerator generation)")
  p.add_argument("--spot", action="store_true", help="preemptible (spot) VM")
  p.add_argument("--source", default=REPO_ROOT,
                 help="etcjax checkout to upload (default: this one)")
  p.add_argument("--tmp_dir", default="/tmp", help="where to build the tarball")
  p.add_argument("--data", default=None,
                 help="gs:// folder passed as --config.data_dir (tfds "
                 "data_dir, image folder or encrypted dataset)")
  p.add_argument("--data_mode", choices=("copy", "mount", "direct"),
                 default="copy",
                 help="copy to each worker's disk, gcsfuse-mount, or let the "
                 "trainer read gs:// directly (tfds data_dir)")
  p.add_argument("--key_file", default=None,
                 help="research runs only: copy this key file to the workers "
                 "for on-the-fly encryption (puts the key on the cloud)")
  p.add_argument("--entry", choices=("main", "evaluate"), default="main",
                 help="main: train (python -m etcjax.main) on every worker; "
                 "evaluate: python -m etcjax.evaluate on worker 0 of a "
                 "single-host VM, with the arguments after `--`")
  p.add_argument("--config", default="configs/vit_etc.py",
                 help="config file (relative to the checkout) [:variant]")
  p.add_argument("--workdir", default=None,
                 help="run directory, gs:// for pod slices; for --entry="
                 "evaluate a folder on worker 0 (passed as --out)")
  p.add_argument("--steps", default=",".join(DEFAULT_STEPS),
                 help=f"comma-separated subset of {','.join(STEPS)}")
  p.add_argument("--detach", action="store_true",
                 help="start the job in the background (log in "
                 "~/etcjax_main.log or ~/etcjax_evaluate.log on the "
                 "workers) instead of waiting")
  p.add_argument("--dry_run", action="store_true",
                 help="print every command instead of running it")
  for old, new in OLD_FLAGS.items():
    command_line.add_alias(p, old, new)
  args = p.parse_args(argv)
  args.extra = extra
  args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
  unknown = set(args.steps) - set(STEPS)
  if unknown:
    p.error(f"unknown --steps {sorted(unknown)}; expected a subset of {STEPS}")
  if args.data and not args.data.startswith("gs://"):
    p.error(f"--data must be a gs:// folder, got {args.data!r}")
  if "run" in args.steps and not args.workdir:
    p.error("--workdir is required for the run step")
  single_host = args.accelerator.split("-")[-1] in ("1", "4", "8")
  if args.entry == "evaluate" and not single_host:
    p.error(f"--entry=evaluate runs one process on one host; {args.accelerator} "
            "is a pod slice: use a single-host accelerator such as v4-8")
  if (args.entry == "evaluate" and args.workdir
      and args.workdir.startswith("gs://")):
    p.error("--entry=evaluate writes its tables and figures to a folder on "
            f"worker 0, not to GCS: got --workdir={args.workdir}; copy them "
            "out afterwards (gcloud compute tpus tpu-vm scp --recurse)")
  if "run" in args.steps and args.workdir and not args.workdir.startswith(
      "gs://") and not single_host:
    p.error(f"a pod slice ({args.accelerator}) needs a shared gs:// --workdir, "
            f"got {args.workdir!r}")
  if args.entry == "evaluate" and "run" in args.steps:
    task = args.extra[0] if args.extra else None
    if task in EVALUATE_NO_DATA and args.data:
      p.error(f"etcjax.evaluate {task} reads no dataset (no --data_dir); "
              "drop --data")
    if task in EVALUATE_NO_KEY and args.key_file:
      p.error(f"etcjax.evaluate {task} takes no --key_file; drop --key_file "
              "(it would copy the key to the VM for nothing)")
  if args.key_file and not os.path.exists(args.key_file) and not args.dry_run:
    p.error(f"--key_file {args.key_file} does not exist")
  if not args.runtime_version:
    try:
      runtime_version(args.accelerator)
    except ValueError as e:
      p.error(str(e))
  return args


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  commands = Commands(args)
  if args.key_file:
    print("WARNING: --key_file puts the secret key on the cloud VMs "
          "(research runs only).", file=sys.stderr)
  for step in STEPS:  # Fixed order, whatever the order given.
    if step not in args.steps:
      continue
    for cmd in getattr(commands, step)():
      print("+ " + shlex.join(cmd), flush=True)
      if not args.dry_run:
        subprocess.run(cmd, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

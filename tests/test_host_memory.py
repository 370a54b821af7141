"""glibc's huge-page tunable: when the faces restart with it, and that it
takes effect (malloc'd memory backed by transparent huge pages)."""

import os
import subprocess
import sys
import textwrap

import pytest

from etcjax import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = (2, 36)


def test_environment_adds_the_tunable_and_keeps_the_rest():
  env = {"PATH": "/bin"}
  new = host_memory.environment(env, GLIBC, "madvise")
  assert new == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert env == {"PATH": "/bin"}  # not modified
  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert host_memory.environment(other, GLIBC, "madvise")[
      "GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("env,glibc,mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # user's
    ({"ETCJAX_HUGE_PAGES": "0"}, GLIBC, "madvise"),  # opted out
    ({}, (2, 34), "madvise"),  # glibc without the tunable
    ({}, GLIBC, "always"),  # every mapping is already eligible
    ({}, GLIBC, "never"),  # the kernel gives none
])
def test_environment_is_none_where_it_would_not_help(env, glibc, mode):
  assert host_memory.environment(env, glibc, mode) is None


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert host_memory.thp_mode(str(path)) == "madvise"
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None


_CHILD = textwrap.dedent("""
    import ctypes, os, sys
    print("start", os.getpid(), flush=True)
    from etcjax import host_memory
    host_memory.restart_with_huge_pages()
    # 64 MiB from malloc, touched: above the mmap threshold, so its own
    # mapping, which glibc advises for huge pages under the tunable.
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 64 << 20
    p = libc.malloc(ctypes.c_size_t(size))
    ctypes.memset(p, 1, size)
    with open("/proc/self/smaps_rollup") as f:
      huge = [l for l in f if l.startswith("AnonHugePages:")][0].split()[1]
    print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), huge,
          sys.argv[1:], flush=True)
""")


@pytest.mark.skipif(
    host_memory.environment({}) is None,
    reason="this machine cannot use the tunable (not glibc 2.35+ on Linux "
    "with THP mode 'madvise'): " + host_memory.describe({}))
def test_restart_sets_the_tunable_and_malloc_gets_huge_pages(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "ETCJAX_HUGE_PAGES")}
  env["PYTHONPATH"] = ROOT
  out = subprocess.run([sys.executable, "-u", str(script), "--flag=1"],
                       env=env, capture_output=True, text=True, timeout=120,
                       check=True).stdout.split("\n")
  start, again, after = out[0].split(), out[1].split(), out[2].split()
  # The script ran twice in one process: restarted with its arguments.
  assert start[0] == again[0] == "start" and start[1] == again[1] == after[1]
  assert after[2] == "glibc.malloc.hugetlb=1"
  assert after[4:] == ["['--flag=1']"]
  assert int(after[3]) >= 32 << 10, f"AnonHugePages {after[3]} kB"

  # Opted out: no restart, and 4 KiB pages for the same allocation.
  env["ETCJAX_HUGE_PAGES"] = "0"
  out = subprocess.run([sys.executable, str(script)], env=env,
                       capture_output=True, text=True, timeout=120,
                       check=True).stdout.split("\n")
  assert out[0].startswith("start") and out[1].split()[2] == "None"
  assert int(out[1].split()[3]) < 32 << 10


def test_describe_names_the_state():
  assert host_memory.describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) \
      == "malloc huge pages: GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
  assert "ETCJAX_HUGE_PAGES=0" in host_memory.describe(
      {"ETCJAX_HUGE_PAGES": "0"})

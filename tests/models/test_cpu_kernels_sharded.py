"""The compiled CPU kernels under SPMD: each device runs them on its part of
the batch (not the whole batch gathered), with the single-device values."""

import os
import subprocess
import sys
import textwrap

import pytest

from etcjax.models import attention_cpu_kernel
from etcjax.models import depthwise_cpu_kernel
from etcjax.models import layer_norm_cpu_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

SCRIPT = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from etcjax.models import attention_cpu_kernel, depthwise_cpu_kernel
    from etcjax.models import layer_norm_cpu_kernel
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",))
    rng = np.random.default_rng(0)
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)

    # The batch over a 1-D mesh (as training shards it), over both axes of
    # a 2-D mesh, and over one axis of a 2-D mesh (replicated on the
    # other: each device holds half the batch, not a quarter).
    mesh_2d = jax.make_mesh((2, 2), ("data", "model"))
    LAYOUTS = [(mesh, P("data"), 4), (mesh_2d, P(("data", "model")), 4),
               (mesh_2d, P("model"), 2)]

    def check(name, fn, args, batched, rows_per_example):
      for layout in LAYOUTS:
        check_layout(name, fn, args, batched, rows_per_example, *layout)

    def check_layout(name, fn, args, batched, rows_per_example, mesh, spec,
                     parts):
      # fn's value and gradients, jitted on one device and with the batched
      # arguments (batch 8) split into `parts` slices; the FFI calls' leading
      # operand dimension in the partitioned program (a kernel may flatten
      # an example into several rows).
      grad = jax.jit(jax.value_and_grad(
          lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=tuple(range(len(args)))))
      single = grad(*args)
      per_device = 8 // parts * rows_per_example
      split = [jax.device_put(a, NamedSharding(mesh, spec)) if b else a
               for a, b in zip(args, batched)]
      sharded = grad(*split)
      for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max() + 1e-6, (
            name, spec, np.abs(a - b).max())
      hlo = grad.lower(*split).compile().as_text()
      calls = [l for l in hlo.splitlines() if "custom_call_target=\\"etcjax_" in l]
      assert calls, name
      for line in calls:
        first = re.search(r"custom-call\\(.*?\\).*?operand_layout_constraints="
                          r"\\{f32\\[(\\d+)", line)
        assert first and int(first.group(1)) == per_device, (
            name, spec, line[:300])
      print(name, spec, "OK", len(calls), "calls")

    check("attention", lambda q: attention_cpu_kernel.self_attention(q, 2),
          [f32(8, 9, 48)], [True], 1)
    from etcjax.models.layer_norm import layer_norm
    check("layer_norm", lambda x, s, b: layer_norm(x, s, b, 1e-6),
          [f32(8, 5, 12), f32(12), f32(12)], [True, False, False], 5)
    from etcjax.models.depthwise_conv import depthwise_conv2d
    check("depthwise", lambda x, t: depthwise_conv2d(x, t, method="native"),
          [f32(8, 6, 6, 16), f32(3, 3, 1, 16)], [True, False], 1)
    print("SHARDED_KERNELS_OK")
""")


@pytest.mark.skipif(
    not (attention_cpu_kernel.available() and layer_norm_cpu_kernel.available()
         and depthwise_cpu_kernel.available()),
    reason="the compiled CPU kernels were not built (no C++ compiler)")
def test_kernels_split_over_the_batch_when_sharded():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
  assert result.returncode == 0 and "SHARDED_KERNELS_OK" in result.stdout, (
      result.stdout + result.stderr[-3000:])

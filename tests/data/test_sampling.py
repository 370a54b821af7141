"""Example order: epochs, steps, hosts, resumption and evaluation coverage."""

import numpy as np
import pytest

from etcjax.data import sampling


def test_steps_walk_through_epoch_permutations():
  n, batch = 10, 4
  order = sampling.TrainOrder(n, batch, seed=3)
  stream = np.concatenate([order.step(s)[0] for s in range(10)])  # 40 = 4 epochs
  for epoch in range(4):
    chunk = stream[epoch * n:(epoch + 1) * n]
    np.testing.assert_array_equal(chunk, sampling.epoch_permutation(3, epoch, n))
    assert sorted(chunk) == list(range(n))
  positions = np.concatenate([order.step(s)[1] for s in range(10)])
  np.testing.assert_array_equal(positions, np.arange(40))


def test_epochs_and_seeds_differ():
  assert not np.array_equal(sampling.epoch_permutation(0, 0, 100),
                            sampling.epoch_permutation(0, 1, 100))
  a = sampling.TrainOrder(100, 8, seed=0).step(0)[0]
  b = sampling.TrainOrder(100, 8, seed=1).step(0)[0]
  assert not np.array_equal(a, b)


def test_resumed_order_equals_uninterrupted():
  fresh = sampling.TrainOrder(37, 8, seed=5)
  expected = [fresh.step(s) for s in range(20)]
  resumed = sampling.TrainOrder(37, 8, seed=5)
  for s in range(13, 20):
    np.testing.assert_array_equal(resumed.step(s)[0], expected[s][0])
    np.testing.assert_array_equal(resumed.step(s)[1], expected[s][1])


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_take_disjoint_slices_of_the_global_batch(hosts):
  single = sampling.TrainOrder(50, 16, seed=1)
  per_host = [sampling.TrainOrder(50, 16, seed=1, process_index=p,
                                  process_count=hosts) for p in range(hosts)]
  for step in (0, 3, 7):
    parts = [o.step(step) for o in per_host]
    assert all(len(i) == 16 // hosts for i, _ in parts)
    np.testing.assert_array_equal(np.concatenate([i for i, _ in parts]),
                                  single.step(step)[0])
    positions = np.concatenate([p for _, p in parts])
    assert len(set(positions)) == 16


def test_train_order_rejects_bad_sharding():
  with pytest.raises(ValueError, match="multiple of the number of hosts"):
    sampling.TrainOrder(100, 10, 0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    sampling.TrainOrder(100, 8, 0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="empty dataset"):
    sampling.TrainOrder(0, 8, 0)


@pytest.mark.parametrize("n,batch,hosts", [(10, 4, 1), (10, 4, 2), (23, 6, 3),
                                           (8, 8, 2), (3, 8, 4)])
def test_eval_covers_every_example_once(n, batch, hosts):
  per_host = [list(sampling.eval_batches(n, batch, p, hosts))
              for p in range(hosts)]
  counts = {len(batches) for batches in per_host}
  assert counts == {sampling.num_eval_batches(n, batch)}
  seen = np.concatenate([i[m] for batches in per_host for i, m in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  padding = sum((~m).sum() for batches in per_host for _, m in batches)
  assert padding == counts.pop() * batch - n

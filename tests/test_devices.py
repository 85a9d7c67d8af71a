"""Which devices a run trains on (parallel.run_devices): the MNIST MLP is pinned to one."""

import jax
import pytest

from bn_repro import configs, parallel


@pytest.mark.parametrize(
  "spec,num_devices,want",
  [
    ("mnist_mlp:bn_sigmoid", 0, 1),  # pinned: the paper's batch of 60 need not split over 8
    ("mnist_mlp:bn_sigmoid", 8, 8),  # asked for: spread
    ("mnist_mlp:bn_sigmoid", 2, 2),
    ("inception_small:bn_x5", 0, 8),  # every other model: all local devices
  ],
)
def test_run_devices(spec, num_devices, want):
  config = configs.get(spec)
  config.num_devices = num_devices
  devs = parallel.run_devices(config)
  assert len(jax.local_devices()) == 8  # conftest's CPU devices
  assert devs == jax.local_devices()[:want]

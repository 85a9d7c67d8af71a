"""CPU placement (bn_repro.placement): the rule, the FLOP count it uses, and the pinning of a
whole process (in a subprocess, so that the test's own process keeps its cores)."""

import json
import os
import subprocess
import sys

import pytest

from bn_repro import configs, placement
from bn_repro.errors import UserError


def test_parse_accepts_the_documented_forms():
  assert placement.parse("auto") == "auto" and placement.parse(" all ") == "all"
  assert placement.parse("3,1,1") == (1, 3)
  for bad in ("", "one", "-1", "0,x"):
    with pytest.raises(UserError, match="config.cpu_cores: .* is not a placement"):
      placement.parse(bad)


def test_step_flops_is_six_flops_a_weight_and_example():
  c = configs.get("mnist_mlp:bn_sigmoid")  # 784-100-100-100-10, batch 60
  weights = 784 * 100 + 100 * 100 + 100 * 100 + 100 * 10
  assert placement.step_flops(c) == 6 * weights * 60 == 35_784_000
  assert placement.step_flops(c, runs=8) == 8 * 35_784_000
  assert placement.step_flops(configs.get("inception_small:bn_x5")) is None


def test_choose_keeps_small_steps_on_one_core_and_within_the_mask():
  small, large = placement.SMALL_STEP_FLOPS / 2, placement.SMALL_STEP_FLOPS * 2
  assert placement.choose("auto", small, [3, 2]) == (2,)
  assert placement.choose("auto", large, [3, 2]) == (2, 3)
  assert placement.choose("auto", None, [0, 1]) == (0, 1)  # no closed form: large
  assert placement.choose("all", small, [0, 1]) == (0, 1)
  assert placement.choose("1", large, [0, 1]) == (1,)
  with pytest.raises(UserError, match=r"core\(s\) \[4\] are not among .* \[0, 1\]"):
    placement.choose("1,4", small, [0, 1])


def test_validation_rejects_a_bad_placement_before_anything_runs():
  from bn_repro import validation

  c = configs.get("mnist_mlp:bn_sigmoid")
  c.cpu_cores = "fast"
  with pytest.raises(UserError, match="config.cpu_cores"):
    validation.validate(c)


_CHILD = """
import json, os, threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # a thread started before
from bn_repro import configs, placement
c = configs.get("mnist_mlp:bn_sigmoid")
c.cpu_cores = {spec!r}
line = placement.apply(c)
threads = [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]
print(json.dumps({{"line": line, "threads": threads}}))
"""


@pytest.mark.skipif(
  not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs 2 cores"
)
@pytest.mark.parametrize("spec, want", [("auto", [0]), ("all", [0, 1]), ("1", [1])])
def test_apply_pins_every_thread_of_the_process(spec, want):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", _CHILD.format(spec=spec)],
    capture_output=True,
    text=True,
    env=env,
    preexec_fn=lambda: os.sched_setaffinity(0, {0, 1}),
    check=True,
  )
  got = json.loads(out.stdout)
  assert len(got["threads"]) >= 2
  assert all(t == want for t in got["threads"]), got
  assert got["line"].startswith(f"placement: CPU core(s) {','.join(map(str, want))} of 2")


@pytest.mark.skipif(
  not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs 2 cores"
)
def test_auto_runs_started_together_claim_different_cores(tmp_path):
  """Three "auto" processes alive at once on 2 cores: the first two get one core each, the
  third finds both claimed and shares them."""
  child = (
    "import sys; from bn_repro import configs, placement; "
    "print(placement.apply(configs.get('mnist_mlp:bn_sigmoid')), flush=True); sys.stdin.read()"
  )
  env = dict(os.environ, TMPDIR=str(tmp_path))
  procs = []
  lines = []
  for _ in range(3):
    p = subprocess.Popen(
      [sys.executable, "-c", child],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
      preexec_fn=lambda: os.sched_setaffinity(0, {0, 1}),
    )
    procs.append(p)
    lines.append(p.stdout.readline())  # this one has claimed (or not) before the next starts
  for p in procs:
    p.communicate("")
  assert lines[0].startswith("placement: CPU core(s) 0 of 2")
  assert lines[1].startswith("placement: CPU core(s) 1 of 2")
  assert lines[2].startswith("placement: CPU core(s) 0,1 of 2") and "another run" in lines[2]

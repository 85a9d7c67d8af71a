"""JAX's persistent compilation cache (bn_repro.compile_cache): where `config.compilation_cache`
puts it, a second run loading every program the first one compiled, with the same numbers, and
a run with another seed loading them too."""

import json
import os
import subprocess
import sys

import jax
import pytest
from idx_files import write_mnist_dir

from bn_repro import compile_cache
from bn_repro.errors import UserError

_SETTINGS = (
  "jax_compilation_cache_dir",
  "jax_enable_compilation_cache",
  "jax_persistent_cache_min_compile_time_secs",
)


@pytest.fixture
def jax_settings(monkeypatch):
  """JAX's cache settings as the session has them, restored afterwards; none set within."""
  saved = {k: getattr(jax.config, k) for k in _SETTINGS}
  jax.config.update("jax_compilation_cache_dir", None)
  for name in ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", compile_cache.ENV):
    monkeypatch.delenv(name, raising=False)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


def test_host_key_names_the_architecture_the_cores_and_the_cpu():
  key = compile_cache.host_key("x86_64", "flags: avx2 avx512f", 2)
  assert key.startswith("x86_64-2cpu-") and len(key.split("-")[-1]) == 12
  assert key == compile_cache.host_key("x86_64", "flags: avx2 avx512f", 2)
  assert key != compile_cache.host_key("x86_64", "flags: avx2", 2)  # another instruction set
  assert key != compile_cache.host_key("x86_64", "flags: avx2 avx512f", 1)  # another split


def test_a_directory_gets_a_subdirectory_per_host_and_caches_every_program(jax_settings, tmp_path):
  line = compile_cache.configure(str(tmp_path / "c"))
  path = jax.config.jax_compilation_cache_dir
  assert os.path.dirname(path) == str(tmp_path / "c") and os.path.isdir(path)
  assert os.path.basename(path) == compile_cache.this_host()
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  assert line == f"compilation cache: {path} (config.compilation_cache={tmp_path / 'c'})"


def test_auto_uses_the_user_cache_directory(jax_settings, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  compile_cache.configure("auto")
  assert jax.config.jax_compilation_cache_dir.startswith(str(tmp_path / "xdg/bn_repro/jax/"))
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "own"))
  compile_cache.configure("auto")
  assert jax.config.jax_compilation_cache_dir.startswith(str(tmp_path / "own/"))


def test_auto_keeps_jax_own_setting(jax_settings, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
  assert (
    compile_cache.configure("auto") == f"compilation cache: {tmp_path / 'jax'} (JAX's own setting)"
  )
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")


def test_off_disables_the_cache(jax_settings):
  assert compile_cache.configure("off") == "compilation cache: off (config.compilation_cache=off)"
  assert jax.config.jax_enable_compilation_cache is False


def test_a_directory_that_cannot_be_made(jax_settings, tmp_path, monkeypatch):
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=r"config.compilation_cache: cannot create .*file/"):
    compile_cache.configure(str(tmp_path / "file"))
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file"))  # auto: a run without a cache
  assert compile_cache.configure("auto").startswith("compilation cache: off (")
  assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.slow
def test_a_second_run_and_another_seed_load_every_program(tmp_path):
  idx = tmp_path / "idx"
  idx.mkdir()
  write_mnist_dir(idx, 20, 300)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cache = tmp_path / "cache"

  def run(name, *flags):
    subprocess.run(
      [sys.executable, "-m", "bn_repro.main", "--config=mnist_mlp:bn_sigmoid",
       f"--workdir={tmp_path / name}", "--config.data.source=idx", f"--config.data.idx_dir={idx}",
       "--config.data.train_split=test[:240]", "--config.data.eval_split=test[240:]",
       "--config.num_steps=20", "--config.log_every=10", "--config.eval_every=10",
       "--config.checkpoint_every=20", "--config.tensorboard=false",
       "--config.model.dropout_rate=0.1",  # the step draws from the seed's keys
       f"--config.compilation_cache={cache}", *flags],
      env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    entries = sorted(p.name for p in cache.rglob("*-cache"))
    rows = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
    timing = ("steps_per_sec", "compile_seconds")
    return entries, [{k: v for k, v in r.items() if k not in timing} for r in rows]

  entries, first = run("a")
  assert any(e.startswith("jit_init") for e in entries) and len(entries) >= 3
  again, second = run("b")
  assert again == entries  # nothing compiled anew
  assert second == first
  other, third = run("c", "--config.seed=1")  # the seed is an argument of the programs
  assert other == entries and third != first

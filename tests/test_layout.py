"""The codebase's shape: files and functions short enough to read, no private names shared
between modules, no sys.path edits, no module loaded by file path, file names in rundir.py only."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("bn_repro", "scripts") for p in (REPO / folder).rglob("*.py"))
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
RUN_FILES = ("config.json", "status.json", "metrics.jsonl", "sweep.json", "source.json", "log.txt")


def _tree(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(), filename=str(path))


def test_sources_are_found():
  names = {p.name for p in SOURCES}
  assert {"rundir.py", "loop.py", "engine.py", "batch_norm.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_files_are_short(path):
  assert len(path.read_text().splitlines()) <= MAX_FILE_LINES


def test_functions_are_short():
  long = []
  for path in SOURCES:
    for node in ast.walk(_tree(path)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
  assert not long


def test_no_private_name_crosses_a_module():
  """`from m import _x` and `m._x` on an imported bn_repro module are refused."""
  found = []
  for path in SOURCES + sorted((REPO / "tests").glob("*.py")):
    tree = _tree(path)
    modules = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bn_repro"):
        found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
        modules |= {a.asname or a.name for a in node.names}
      elif isinstance(node, ast.Import):
        modules |= {a.asname or a.name for a in node.names if a.name.startswith("bn_repro")}
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
      ):
        found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
  assert not found


def test_no_sys_path_edits_or_loading_by_path():
  pattern = re.compile(r"sys\.path\.(insert|append)|spec_from_file_location")
  offenders = [
    str(p.relative_to(REPO))
    for p in SOURCES + sorted((REPO / "tests").glob("*.py"))
    if pattern.search(p.read_text()) and p.name != "test_layout.py"
  ]
  assert not offenders


def test_run_file_names_live_in_rundir_only():
  offenders = []
  for path in SOURCES:
    if path.name == "rundir.py":
      continue
    for node in ast.walk(_tree(path)):
      if isinstance(node, ast.Constant) and node.value in RUN_FILES:
        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
  assert not offenders

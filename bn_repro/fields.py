"""Dotted config fields ("optimizer.learning_rate") over nested dicts: get, flatten, parse.

Plain Python (no JAX, no ml_collections): config files, sweep files, the sweep
runner and the reports all speak of fields this way.
"""

import ast
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = object()


def get(tree: Mapping[str, Any], field: str, default: Any = MISSING) -> Any:
  """`tree["a"]["b"]` for "a.b" (or a flat `tree["a.b"]`); `default` (else KeyError) if absent."""
  if field in tree:
    return tree[field]
  node: Any = tree
  for part in field.split("."):
    if not isinstance(node, Mapping) or part not in node:
      if default is MISSING:
        raise KeyError(field)
      return default
    node = node[part]
  return node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted field: leaf value} of a nested mapping; tuples become lists (as in JSON)."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def differ(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
  """The dotted fields both trees have whose values differ, sorted (NaN equals NaN)."""
  fa, fb = flatten(a), flatten(b)
  return sorted(k for k in set(fa) & set(fb) if k not in ignore and not same(fa[k], fb[k]))


def same(a: Any, b: Any) -> bool:
  """Equality of config values: tuples equal lists, NaN equals NaN."""
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
  if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
    return True
  return a == b


def parse_assignments(items: Sequence[str], flag: str = "--override") -> dict[str, str]:
  """["field=value", ...] -> {field: value} (later wins; a leading "config." is dropped)."""
  from bn_repro.errors import UserError

  out = {}
  for item in items:
    field, sep, value = item.partition("=")
    if not sep or not field.strip():
      raise UserError(f"expected FIELD=VALUE, got {item!r}", field=flag)
    out[field.strip().removeprefix("config.")] = value
  return out


# The value types a string may give a field of each type.
_ACCEPTS = {bool: (bool,), int: (int,), float: (int, float), list: (list, tuple), str: (str,)}


def parse_like(text: str, like: Any) -> Any:
  """`text` as a value of `like`'s type: as given for a string, else a Python literal
  (ints may set a float field, tuples a list field); ValueError when it is not one."""
  if isinstance(like, str):
    return text
  try:
    value: Any = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f"{text!r} is not a {type(like).__name__} like {like!r}") from None
  allowed = _ACCEPTS.get(type(like), (type(like),))
  if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
    raise ValueError(f"{text!r} is not a {type(like).__name__} like {like!r}")
  if isinstance(like, float) and isinstance(value, int):
    return float(value)
  if isinstance(like, list) and isinstance(value, (list, tuple)):
    return list(value)
  return value


def closest(name: str, known: Sequence[str]) -> str | None:
  """The dotted field of `known` that `name` most likely meant (a typo, or a missing or
  wrong prefix such as "learning_rate" for "optimizer.learning_rate"), or None."""
  import difflib

  match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
  if match:
    return match[0]
  leaf = name.rsplit(".", 1)[-1]
  leaves = {k.rsplit(".", 1)[-1]: k for k in known}
  match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
  return leaves[match[0]] if match else None

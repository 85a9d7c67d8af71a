"""Paths that may be local or on object storage (gs://): what differs between the two.

Every path is an `etils.epath.Path`. On object storage a file is written as one object
upload (atomic there), renames are copies, nothing can be appended, and a bucket that
cannot be reached shows up only on the first request: `check_storage` asks once.
"""

import logging
import os

from etils import epath

from bn_repro.errors import UserError


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a local (or mounted) file system, not object storage."""
  return "://" not in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
  """`path` made absolute; a URI (gs://...) is absolute already."""
  path = epath.Path(path)
  return path.absolute() if is_local(path) else path


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  """Replaces the file's content at once: a temporary file per process and a rename on a
  local disk, one object upload (atomic there) on object storage."""
  path = epath.Path(path)
  if not is_local(path):
    path.write_text(text)
    return
  tmp = path.parent / f"{path.name}.{os.getpid()}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


_REACHED: set[str] = set()  # buckets check_storage has reached in this process


def check_storage(path: epath.PathLike) -> None:
  """On object storage, that the bucket of `path` can be listed (checked once a bucket);
  UserError naming it and the fix otherwise. Local paths pass without a look."""
  text = os.fspath(path)
  if is_local(text):
    return
  scheme, _, rest = text.partition("://")
  bucket = f"{scheme}://{rest.split('/', 1)[0]}"
  if bucket in _REACHED:
    return
  # gcsfs logs a request that ran out of retries with a traceback; the UserError says it
  quiet = logging.getLogger({"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs"}.get(scheme, "fsspec"))
  level = quiet.level
  quiet.setLevel(logging.CRITICAL)
  try:
    found = epath.Path(bucket).exists()
  except ImportError as e:
    raise UserError(
      f"cannot open {bucket} ({e}); install the cloud client: pip install 'bn_repro[gcs]'",
      field="--workdir",
    ) from None
  except Exception as e:  # the client's own errors: network, credentials, permissions
    raise UserError(
      f"cannot reach {bucket} ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); "
      "check the bucket's name, the network and the credentials "
      "(gcloud auth application-default login)",
      field="--workdir",
    ) from None
  finally:
    quiet.setLevel(level)
  if not found:
    raise UserError(
      f"bucket {bucket} does not exist or is not visible with these credentials; "
      "create it or fix the name",
      field="--workdir",
    )
  _REACHED.add(bucket)

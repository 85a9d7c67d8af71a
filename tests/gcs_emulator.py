"""A local GCS for tests: gcp-storage-emulator with object generations on reads.

Run as `python tests/gcs_emulator.py PORT`; it serves the bucket "bkt" in memory on
127.0.0.1:PORT until killed. The emulator answers a media download without the
x-goog-generation header and ignores ifGenerationMatch / ifGenerationNotMatch, which
tensorstore (Orbax's checkpoint writer) relies on for OCDBT's manifest; this wrapper
adds both, as real GCS behaves. `client_env(port)` is what a client process needs.
"""

import sys
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

BUCKET = "bkt"
_DOWNLOAD, _INSERT = objects.download, objects.insert


def client_env(port: int) -> dict[str, str]:
  """Environment for gcsfs (etils.epath) and tensorstore (Orbax) to use the emulator."""
  url = f"http://127.0.0.1:{port}"
  return {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no 60 s gRPC probe of the bucket type
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anon",  # tensorstore: no credential lookup
  }


def _download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return None
  generation = str(obj["generation"])
  match = request.query.get("ifGenerationMatch", [None])[0]
  not_match = request.query.get("ifGenerationNotMatch", [None])[0]
  if match is not None and match != generation:
    response.status = HTTPStatus.PRECONDITION_FAILED
    return None
  response["x-goog-generation"] = generation
  if not_match is not None and not_match == generation:
    response.status = HTTPStatus.NOT_MODIFIED
    return None
  return _DOWNLOAD(request, response, storage, *args, **kwargs)


def _insert(request, response, storage, *args, **kwargs):
  match = request.query.get("ifGenerationMatch", [None])[0]
  if match is not None and request.query.get("uploadType") == ["media"]:  # tensorstore's
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.query["name"][0])
      current = str(obj["generation"])
    except (NotFound, KeyError):
      current = "0"
    if match != current:
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
  return _INSERT(request, response, storage, *args, **kwargs)


def _patched(handlers):
  swap = {_DOWNLOAD: _download, _INSERT: _insert}
  return tuple(
    (regex, {m: swap.get(f, f) for m, f in methods.items()}) for regex, methods in handlers
  )


def main(port: int) -> None:
  objects.download = _download  # objects.get (alt=media) calls it by this name
  server.HANDLERS = _patched(server.HANDLERS)
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  srv.start()
  while True:
    time.sleep(3600)


if __name__ == "__main__":
  main(int(sys.argv[1]))

"""Test-only: resolve Kubernetes Service names to the kubelet stand-in's loopback addresses.

Put this directory first on a subprocess's PYTHONPATH together with KUBE_FAKE_HOSTS_FILE (the
JSON map {"synapse.c3-t-<id>.svc.cluster.local": "127.0.x.y"} the stand-in keeps current);
Python imports ``sitecustomize`` at start-up and this patches ``socket.getaddrinfo`` — and
uvloop's ``Loop.getaddrinfo``, which resolves through libuv, not the socket module (uvicorn runs
the API and the proxy on uvloop) — for the names in the map, re-read when it changes. With
KUBE_FAKE_IMPORTS_LOG it also notes the file each C3 package shipped into Synapse is imported
from. Nothing here ships in services/."""

import json
import os
import socket

_HOSTS_FILE = os.environ.get("KUBE_FAKE_HOSTS_FILE", "")
_original_getaddrinfo = socket.getaddrinfo
_cache: dict = {"mtime": None, "hosts": {}}


def _hosts() -> dict:
    try:
        mtime = os.stat(_HOSTS_FILE).st_mtime_ns
    except OSError:
        return {}
    if mtime != _cache["mtime"]:
        try:
            with open(_HOSTS_FILE) as file:
                _cache["hosts"] = json.load(file)
            _cache["mtime"] = mtime
        except (OSError, ValueError):
            pass
    return _cache["hosts"]


def _mapped(host):  # type: ignore[no-untyped-def]
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if isinstance(name, str):
        return _hosts().get(name.lower().rstrip(".")) or host
    return host


def _getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    return _original_getaddrinfo(_mapped(host), *args, **kwargs)


def _patch_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    original = uvloop.Loop.getaddrinfo

    async def getaddrinfo(self, host, *args, **kwargs):  # type: ignore[no-untyped-def]
        return await original(self, _mapped(host), *args, **kwargs)

    uvloop.Loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


if _HOSTS_FILE:
    socket.getaddrinfo = _getaddrinfo
    _patch_uvloop()


# Where the code C3 ships into Synapse is imported from (the kubelet stand-in's
# ``imported_from``): a pod must load the confinement module from its mounted copy.
_IMPORTS_LOG = os.environ.get("KUBE_FAKE_IMPORTS_LOG", "")
_WATCHED = ("c3_synapse", "c3_synapse.confinement")


class _ImportRecorder:
    @staticmethod
    def find_spec(name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name not in _WATCHED:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path, target)
        if spec is not None and spec.origin:
            with open(_IMPORTS_LOG, "a") as log:
                log.write(f"{name} {spec.origin}\n")
        return spec


if _IMPORTS_LOG:
    import sys

    sys.meta_path.insert(0, _ImportRecorder)

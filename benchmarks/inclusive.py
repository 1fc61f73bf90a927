"""Instructions spent inside one Python function, counted by callgrind: what
``proxy_instructions_bench.py --inclusive MODULE:QUALNAME`` uses.

CPython runs every Python function in ``_PyEval_EvalFrameDefault``, so callgrind's own
profile cannot tell them apart. Here a small C extension (``build_helper``, compiled at run
time against Debian's valgrind headers) issues callgrind's ``CALLGRIND_TOGGLE_COLLECT`` client
request, and ``install_from_env`` (run by a ``sitecustomize`` the helper's folder holds, in the
process under callgrind) wraps the function named in ``C3_CALLGRIND_FUNCTION`` when its module
is imported: callgrind, started with ``--collect-atstart=no``, then collects only inside it
(and what it calls). A wrapper costs ~550 instructions a call (an empty function, calibrated),
counted with it.

Instrumentation must be on from the start: a toggle while callgrind is not instrumenting is
lost, and the collection state then inverts (everything but the function is counted).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

FUNCTION_ENV = "C3_CALLGRIND_FUNCTION"
HEADER = Path("/usr/include/valgrind/callgrind.h")  # Debian's valgrind package

_C_SOURCE = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <valgrind/callgrind.h>
static PyObject *toggle(PyObject *self, PyObject *unused) {
    CALLGRIND_TOGGLE_COLLECT;
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {{"toggle", toggle, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "c3_callgrind", NULL, -1, methods};
PyMODINIT_FUNC PyInit_c3_callgrind(void) { return PyModule_Create(&module); }
"""

_SITECUSTOMIZE = """\
from benchmarks.inclusive import install_from_env
install_from_env()
"""


def build_helper(folder: Path) -> Path:
    """Compile the toggle extension and a ``sitecustomize`` into ``folder`` (put it first on
    the measured process's ``PYTHONPATH``, with the repository after it)."""
    if not HEADER.exists():
        raise RuntimeError(f"{HEADER} not found: install Debian's valgrind package")
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "c3_callgrind.c"
    source.write_text(_C_SOURCE)
    target = folder / ("c3_callgrind" + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", "-O2", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(target)],
        check=True,
    )
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return folder


def _wrapped(function: Callable[..., Any], toggle: Callable[[], None]) -> Callable[..., Any]:
    """``function`` between two toggles, with its own parameters (a ``*args, **kwargs``
    wrapper would pack every call's keywords into a dict: ~2,000 instructions more)."""
    parameters, arguments, namespace = [], [], {"_function": function, "_toggle": toggle}
    keyword_only = False
    for parameter in inspect.signature(function).parameters.values():
        name = parameter.name
        default = ""
        if parameter.default is not parameter.empty:
            namespace["_default_" + name] = parameter.default
            default = "=_default_" + name
        if parameter.kind is parameter.VAR_POSITIONAL:
            parameters.append("*" + name)
            arguments.append("*" + name)
            keyword_only = True
        elif parameter.kind is parameter.VAR_KEYWORD:
            parameters.append("**" + name)
            arguments.append("**" + name)
        elif parameter.kind is parameter.KEYWORD_ONLY:
            if not keyword_only:
                parameters.append("*")
                keyword_only = True
            parameters.append(name + default)
            arguments.append(f"{name}={name}")
        else:
            parameters.append(name + default)
            arguments.append(name)
    source = (
        f"def wrapper({', '.join(parameters)}):\n"
        "    _toggle()\n"
        "    try:\n"
        f"        return _function({', '.join(arguments)})\n"
        "    finally:\n"
        "        _toggle()\n"
    )
    exec(source, namespace)  # noqa: S102 - our own source, made above
    return namespace["wrapper"]  # type: ignore[no-any-return]


def install_from_env() -> None:
    """Wrap ``C3_CALLGRIND_FUNCTION`` (``module:Class.method`` or ``module:function``) as
    soon as its module has been imported. Not for a function that calls itself."""
    named = os.environ.get(FUNCTION_ENV)
    if not named:
        return
    module_name, _, qualname = named.partition(":")
    import c3_callgrind  # type: ignore[import-not-found]  # built by build_helper

    def wrap(module: ModuleType) -> None:
        *path, attribute = qualname.split(".")
        owner: Any = module
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, attribute, _wrapped(getattr(owner, attribute), c3_callgrind.toggle))

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != module_name:
                return None
            sys.meta_path.remove(self)  # found by the others; once
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                wrap(module)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Finder())

"""Importing npguest: fast (no numba, nothing compiled), complete public names, docstrings."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import types

import pytest

import npguest


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_load_numba_or_kernels():
    state = run_python(
        "import json, sys\n"
        "before = 'numba' in sys.modules\n"
        "import npguest\n"
        "print(json.dumps({\n"
        "    'before': before,\n"
        "    'numba': sorted(m for m in sys.modules if m == 'numba' or m.startswith('numba.')),\n"
        "    'llvmlite': 'llvmlite' in sys.modules,\n"
        "    'kernels': 'npguest._kernels' in sys.modules,\n"
        "    'version': npguest.__version__,\n"
        "}))\n"
    )
    assert state["before"] is False
    assert state["numba"] == []
    assert state["llvmlite"] is False
    assert state["kernels"] is False
    assert state["version"] == npguest.__version__


def test_public_modules_do_not_load_numba():
    # importing every public submodule (not only the package) still compiles nothing
    names = [f"npguest.{m}" for m in _public_module_names()]
    state = run_python(
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'numba': 'numba' in sys.modules,\n"
        "                  'kernels': 'npguest._kernels' in sys.modules}))\n"
    )
    assert state == {"numba": False, "kernels": False}


def test_version():
    assert isinstance(npguest.__version__, str)
    assert npguest.__version__.count(".") >= 1


def test_all_names_exist():
    assert len(npguest.__all__) == len(set(npguest.__all__))
    for name in npguest.__all__:
        assert hasattr(npguest, name), name


def test_star_import_matches_all():
    ns: dict = {}
    exec("from npguest import *", ns)
    exported = {k for k in ns if k != "__builtins__"}
    assert exported == set(npguest.__all__)


@pytest.mark.parametrize(
    "name",
    [
        "GuestAddress",
        "MemoryRegionAddress",
        "GuestMemoryMmap",
        "GuestRegionMmap",
        "MmapRegion",
        "FileOffset",
        "VolatileSlice",
        "VolatileRef",
        "VolatileArrayRef",
        "Bytes",
        "Bitmap",
        "BitmapSlice",
        "NoBitmap",
        "GuestMemoryError",
        "Le16",
        "Le32",
        "Le64",
        "LeSize",
        "Be16",
        "Be32",
        "Be64",
        "BeSize",
        "as_bytes",
        "from_bytes",
        "errors",
    ],
)
def test_design_names_exported(name):
    # the vm-memory names DESIGN.md promises at the top level
    assert name in npguest.__all__


# -- docstrings ----------------------------------------------------------------------------


def _public_module_names() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules(npguest.__path__)
        if not m.name.startswith("_") and m.name != "__main__"
    )


def _is_documentable(obj: object) -> bool:
    if isinstance(obj, types.GenericAlias):  # type aliases such as tuple[...]
        return False
    return inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isfunction(obj)


def _undocumented_members(cls: type) -> list[str]:
    missing = []
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(attr, (classmethod, staticmethod)):
            attr = attr.__func__
        if isinstance(attr, property):
            attr = attr.fget
        if inspect.isfunction(attr) and not (attr.__doc__ or "").strip():
            missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    return missing


def _public_objects():
    seen: dict[int, tuple[str, object]] = {}
    for name in npguest.__all__:
        seen.setdefault(id(getattr(npguest, name)), (f"npguest.{name}", getattr(npguest, name)))
    for modname in _public_module_names():
        module = importlib.import_module(f"npguest.{modname}")
        seen.setdefault(id(module), (module.__name__, module))
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            seen.setdefault(id(obj), (f"{module.__name__}.{name}", obj))
    return [(label, obj) for label, obj in seen.values() if _is_documentable(obj)]


def test_public_modules_have_all():
    for modname in _public_module_names():
        module = importlib.import_module(f"npguest.{modname}")
        assert isinstance(getattr(module, "__all__", None), list), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_public_object_has_a_docstring():
    objects = _public_objects()
    assert len(objects) > 20  # the walk found the API
    missing = [label for label, obj in objects if not (obj.__doc__ or "").strip()]
    assert missing == []
    assert (npguest.__doc__ or "").strip()


def test_every_public_method_has_a_docstring():
    missing = []
    for _, obj in _public_objects():
        if inspect.isclass(obj) and obj.__module__.startswith("npguest"):
            missing.extend(_undocumented_members(obj))
    assert missing == []

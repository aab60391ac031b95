"""Every exception class lazyembed defines is in the `LazyEmbedError` tree, or private.

A caller catches ``LazyEmbedError`` for anything lazyembed raises; a public exception
class outside that tree would slip past it. Classes that never leave the package are
named with a leading underscore (and say so in their docstrings). A `BaseException` that
is not an `Exception` (like KeyboardInterrupt) is control flow, not an error: it is meant
to pass every ``except Exception``, so it stays outside the tree.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import lazyembed
from lazyembed.errors import LazyEmbedError


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a lazyembed module, by its qualified name."""
    found: dict[str, type[BaseException]] = {}
    modules = [
        info.name
        for info in pkgutil.walk_packages(lazyembed.__path__, "lazyembed.")
        if not info.name.endswith("__main__")  # running it would start the CLI
    ]
    assert len(modules) > 50, modules  # the walk really reached the subpackages
    for name in modules:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_public_exception_classes_are_lazyembed_errors() -> None:
    classes = _exception_classes()
    assert "lazyembed.errors.ModelNotFoundError" in classes  # the walk sees errors.py
    outside = sorted(
        name
        for name, cls in classes.items()
        if not cls.__name__.startswith("_")
        and issubclass(cls, Exception)
        and not issubclass(cls, LazyEmbedError)
    )
    assert outside == [], f"public exception classes outside LazyEmbedError: {outside}"

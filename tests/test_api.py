"""The public API (every name in the ``__all__`` of medpeft and its subpackages) is fully annotated."""

import importlib
import inspect

import pytest

PUBLIC = [
    "medpeft",
    "medpeft.analysis",
    "medpeft.bench",
    "medpeft.conformal",
    "medpeft.data",
    "medpeft.families",
    "medpeft.methods",
    "medpeft.speed",
]


def functions(module: str):
    """(qualified name, function) of the module's public functions and of its public classes' own methods."""
    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for key, value in vars(obj).items():
                function = getattr(value, "__func__", value)  # staticmethod, classmethod
                if inspect.isfunction(function) and (not key.startswith("_") or key == "__init__"):
                    yield f"{name}.{key}", function


@pytest.mark.parametrize("module", PUBLIC)
def test_public_functions_are_annotated(module):
    missing = []
    for name, function in functions(module):
        signature = inspect.signature(function)
        bare = [
            p.name
            for p in signature.parameters.values()
            if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
        ]
        if signature.return_annotation is inspect.Signature.empty and not name.endswith("__init__"):
            bare.append("return")
        if bare:
            missing.append(f"{name}: {', '.join(bare)}")
    assert not missing, missing


def test_every_public_module_is_checked():
    """A subpackage or module with ``__all__`` is part of the public API: it is in PUBLIC."""
    from pathlib import Path

    root = Path(importlib.import_module("medpeft").__file__).parent
    declared = {
        ".".join(("medpeft", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
        if "\n__all__ = " in p.read_text()
    }
    assert declared == set(PUBLIC)

"""Signatures of a config's `_target_` callables read from their source files, without importing them.

A command-line mistake (`model.optimizer.lr=abc`, `loss.alpah=9`) should be reported in seconds, before torch,
Lightning and transformers are imported (tens of seconds on a small machine). The module of a target is found on
`sys.path` by file name (no package `__init__` is executed), its class or function is read with `ast`, re-exports
(`from .module import Name`) and lazy package exports (a module-level `LAZY_EXPORTS = {"Name": ".module"}`) are
followed, and each parameter's annotation is evaluated among the names of `typing` and the builtins. Anything
this cannot settle — a name it does not know, a class built by a decorator, a module-level `__getattr__` — is left
unknown, and the full check after the imports (`config_types.check_config_types`) judges it.
"""

from __future__ import annotations

import ast
import collections.abc as cabc
import inspect
import sys
import typing
from functools import lru_cache
from pathlib import Path


class TensorLike:
    """Stands for `torch.Tensor` in a static annotation: a config holds the number a tensor is made from."""


class Unknown:
    """An annotation naming something this module does not know: not judged here."""


_NAMESPACE = {
    **{name: getattr(typing, name) for name in ("Any", "Optional", "Union", "Literal", "Sequence", "Mapping",
                                                "Iterable", "List", "Dict", "Tuple", "Set", "MutableMapping",
                                                "MutableSequence", "Collection")},
    "int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": tuple, "set": set,
    "frozenset": frozenset, "None": None, "bytes": bytes, "object": object,
    "Tensor": TensorLike, "torch": type("torch", (), {"Tensor": TensorLike}),
    "typing": typing, "abc": cabc, "cabc": cabc, "collections": type("collections", (), {"abc": cabc}),
}
_EMPTY = inspect.Parameter.empty
_NOT_LITERAL = object()


def _source_file(module: str) -> Path | None:
    """The file that defines `module`, found on sys.path by name (nothing is imported)."""
    parts = module.split(".")
    for base in sys.path:
        root = Path(base or ".")
        candidate = root.joinpath(*parts)
        if (candidate / "__init__.py").is_file():
            return candidate / "__init__.py"
        if candidate.with_suffix(".py").is_file():
            return candidate.with_suffix(".py")
    return None


@lru_cache(maxsize=256)
def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _absolute(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute module of a `from <dots><name> import …` inside `module` (defined in `path`)."""
    if not level:
        return name or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _definition(module: str, name: str, depth: int = 0):
    """(node, module, path) of the class/function `name` of `module`, following re-exports; None if unknown."""
    path = _source_file(module)
    tree = _parse(path) if path is not None else None
    if tree is None or depth > 8:
        return None
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return node, module, path
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, path, node.level, node.module)
                    found = _definition(source, alias.name, depth + 1)
                    if found is None:  # `from package import submodule`-style: the name may be a module
                        return None
                    return found
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAZY_EXPORTS"
                                                for t in node.targets):
            try:
                lazy = ast.literal_eval(node.value)
            except ValueError:
                continue
            if name in lazy:
                relative = lazy[name]
                level = len(relative) - len(relative.lstrip("."))
                return _definition(_absolute(module, path, level, relative.lstrip(".")), name, depth + 1)
    return None


def _annotation(node: ast.expr | None):
    if node is None:
        return _EMPTY
    text = ast.unparse(node)
    try:
        return eval(text, {"__builtins__": {}}, dict(_NAMESPACE))  # noqa: S307 (typing names and builtins only)
    except Exception:
        return Unknown  # a name this module does not know: the full check judges it


def _default(node: ast.expr | None):
    if node is None:
        return _EMPTY
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return _NOT_LITERAL


def _function_signature(fn: ast.FunctionDef, skip_first: bool) -> inspect.Signature:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = []
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        if skip_first and i == 0:
            continue
        kind = (inspect.Parameter.POSITIONAL_ONLY if i < len(args.posonlyargs)
                else inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params.append(inspect.Parameter(arg.arg, kind, default=_default(default), annotation=_annotation(arg.annotation)))
    if args.vararg is not None:
        params.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=_default(default),
                                        annotation=_annotation(arg.annotation)))
    if args.kwarg is not None:
        params.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _class_signature(cls: ast.ClassDef, module: str, path: Path, depth: int = 0) -> inspect.Signature | None:
    if cls.decorator_list or depth > 8:
        return None  # dataclasses and the like build __init__ themselves
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return _function_signature(node, skip_first=True)
    for base in cls.bases:  # no __init__ here: the first base that has one
        name = ast.unparse(base)
        if "." in name:
            found = _definition(*name.rsplit(".", 1)) if name.split(".")[0] != name else None
        else:
            found = _definition(module, name)
        if found is None or not isinstance(found[0], ast.ClassDef):
            return None
        return _class_signature(found[0], found[1], found[2], depth + 1)
    return None


def static_signature(target: str) -> inspect.Signature | None:
    """The signature of `target` ("package.module.Name") as its source declares it, or None when unknown."""
    module, _, name = str(target).rpartition(".")
    if not module:
        return None
    found = _definition(module, name)
    if found is None:
        return None
    node, where, path = found
    if isinstance(node, ast.FunctionDef):
        return _function_signature(node, skip_first=False)
    return _class_signature(node, where, path)

"""Type checks of a composed config before any work: every key of every node with a `_target_` (model,
optimizer, scheduler, loss, data, sampler, trainer, callbacks, loggers, …) against the parameter of the
callable it configures.

The expected type comes from the parameter's annotation, or, where there is none, from a numeric or
boolean default. A key the callable does not take is refused too (a typo would otherwise fail only when
the object is built, which for the optimizer is after the untrained evaluation). All problems are
reported together, each with the key, the expected type and the value given:

    model.optimizer.lr must be float or Tensor (torch.optim.AdamW's `lr`), got '1e-3' (a string)
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import os
import types
import typing
from pathlib import PurePath
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .static_signatures import TensorLike, Unknown, static_signature


class ConfigTypeError(TypeError):
    """One or more config values have the wrong type (the message lists them all)."""


_UNKNOWN = None  # _matches() result when an annotation cannot be judged from a config value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matches(value, ann) -> bool | None:
    """True/False when `value` (a plain config value) does/does not fit `ann`; None when unknowable."""
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return True
    if ann is None or ann is type(None):
        return value is None
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return _UNKNOWN if any(r is None for r in results) else False
    if origin is typing.Literal:
        return value in args
    if isinstance(value, dict) and "_target_" in value:
        return True  # a nested object built from its own config (checked separately)
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return _is_number(value)
    if ann is str:
        return isinstance(value, str)
    if ann in (os.PathLike, PurePath) or (isinstance(ann, type) and issubclass(ann, PurePath)):
        return isinstance(value, str)
    if ann is TensorLike:
        return _is_number(value)
    if isinstance(ann, type) and origin is None and isinstance(value, (str, int, float, bool)):
        import enum
        import numbers

        import torch

        if issubclass(ann, (torch.Tensor, numbers.Number)):
            return _is_number(value)  # a config holds the number a tensor/number parameter is made from
        if issubclass(ann, enum.Enum):
            return isinstance(value, str)
        if not issubclass(ann, (str, int, float, bool, cabc.Sequence, cabc.Mapping)):
            return False  # a plain value is never an instance of a class such as Strategy
    container = origin or ann
    if container in (list, tuple, set, frozenset, cabc.Sequence, cabc.Iterable, cabc.Collection,
                     cabc.MutableSequence):
        if isinstance(value, str):
            return container in (cabc.Sequence, cabc.Iterable, cabc.Collection) or _UNKNOWN
        if not isinstance(value, list):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False
            results = [_matches(v, a) for v, a in zip(value, args)]
        elif args:
            results = [_matches(v, args[0]) for v in value]
        else:
            return True
        return False if any(r is False for r in results) else True
    if container in (dict, cabc.Mapping, cabc.MutableMapping):
        return isinstance(value, dict)
    return _UNKNOWN  # classes, callables, tensors, type variables: not judged from a config value


def _describe(ann) -> str:
    if ann is inspect.Parameter.empty:
        return "?"
    if ann is TensorLike:
        return "Tensor"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        names = [_describe(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(names))
        return text + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join(_describe(a) for a in args if a is not Ellipsis)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if inner else name
    return getattr(ann, "__name__", str(ann)).replace("NoneType", "null")


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _signature(target: str, static: bool = False):
    if static:
        return static_signature(target), None
    from hydra._internal.utils import _locate

    try:
        fn = _locate(target)
    except Exception as e:  # an unknown _target_ is reported by Hydra with its own message at build time
        return None, str(e)
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None, None
    return sig, None


def _expected(param: inspect.Parameter):
    """The parameter's annotation, or the type implied by a numeric/boolean default; None = not checked."""
    if param.annotation is Unknown:
        return None
    if param.annotation is not inspect.Parameter.empty and not isinstance(param.annotation, str):
        return param.annotation
    default = param.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return None


def _check_node(node: dict, key: str, problems: list[str], static: bool = False) -> None:
    target = node.get("_target_")
    sig, _ = _signature(str(target), static) if target else (None, None)
    if sig is not None:
        params = sig.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for name, value in node.items():
            if name.startswith("_") and name.endswith("_"):
                continue
            full = f"{key}.{name}" if key else name
            param = params.get(name)
            if param is None or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                if not takes_any:
                    valid = [p for p, v in params.items() if v.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                            inspect.Parameter.VAR_KEYWORD)]
                    problems.append(f"{full}: {target} takes no parameter {name!r} (it takes {', '.join(valid)})")
                continue
            expected = _expected(param)
            if expected is None:
                continue
            if _matches(value, expected) is False:
                hint = f" Write it without quotes: {full}={value}" if isinstance(value, str) and _is_numeric_text(
                    value) else ""
                problems.append(f"{full} must be {_describe(expected)} ({target}'s `{name}`), got {value!r} "
                                f"({_kind(value)}).{hint}")
    for name, value in node.items():
        full = f"{key}.{name}" if key else name
        _walk(value, full, problems, static)


def _is_numeric_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _walk(value, key: str, problems: list[str], static: bool = False) -> None:
    if isinstance(value, dict):
        if "_target_" in value:
            _check_node(value, key, problems, static)
        else:
            for name, v in value.items():
                _walk(v, f"{key}.{name}" if key else str(name), problems, static)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, f"{key}.{i}", problems, static)


def check_config_types(cfg: DictConfig | dict, keys: typing.Iterable[str] | None = None, static: bool = False) -> None:
    """Raise ConfigTypeError listing every value whose type does not fit the callable it configures.
    `keys`: the top-level nodes to check (default: all). `static`: read the callables' signatures from their
    source files without importing them (operations.static_signatures; seconds before torch is imported): what
    it cannot settle is left to the full check."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    problems: list[str] = []
    for name in keys if keys is not None else list(plain):
        if name in plain:
            _walk(plain[name], name, problems, static)
    if problems:
        raise ConfigTypeError("config values of the wrong type (nothing was run):\n  " + "\n  ".join(problems))

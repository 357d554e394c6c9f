"""Load user tools from a ``--tools module:attribute`` spec."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from .errors import ToolLoadError
from .function import tool
from .interface import Tool

__all__ = ["load_tools"]


def load_tools(spec: str) -> list[Tool]:
    """Tools named by ``module:attribute`` (or ``path/to/file.py:attribute``).

    The module is imported from ``sys.path``, then from the current directory. The
    attribute may be a Tool, an iterable of Tools, or a zero-argument callable returning
    either; plain functions are wrapped with ``tool()``.
    """
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ToolLoadError(f"--tools expects module:attribute (e.g. my_tools:TOOLS), got {spec!r}")
    module = _import(module_name)
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ToolLoadError(
                f"--tools {spec}: {module_name} has no attribute {attribute!r}"
            ) from None
    tools = _as_tools(value, spec)
    if not tools:
        raise ToolLoadError(f"--tools {spec}: no tools found (the attribute is empty)")
    return tools


def _import(module_name: str) -> ModuleType:
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        return _import_file(Path(module_name))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise ToolLoadError(f"cannot import {module_name}: {error}") from None
    except Exception as error:
        raise ToolLoadError(
            f"cannot import {module_name}: {type(error).__name__}: {error}"
        ) from None
    cwd = os.getcwd()
    if cwd in sys.path:
        raise ToolLoadError(
            f"cannot import {module_name}: no such module (run from the folder that "
            "contains it or add that folder to PYTHONPATH)"
        )
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ToolLoadError(
            f"cannot import {module_name}: {error} (run from the folder that contains it "
            "or add that folder to PYTHONPATH)"
        ) from None
    except Exception as error:
        raise ToolLoadError(
            f"cannot import {module_name}: {type(error).__name__}: {error}"
        ) from None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ToolLoadError(f"cannot import {path}: no such file")
    name = f"tidemark_user_tools_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ToolLoadError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ToolLoadError(f"cannot import {path}: {type(error).__name__}: {error}") from None
    return module


def _is_tool(value: object) -> bool:
    return not isinstance(value, type) and isinstance(value, Tool)


def _as_tools(value: object, spec: str, *, called: bool = False) -> list[Tool]:
    if _is_tool(value):
        return [cast(Tool, value)]
    if _is_collection(value):
        tools: list[Tool] = []
        for item in cast(Iterable[object], value):
            if _is_tool(item):
                tools.append(cast(Tool, item))
            elif inspect.isfunction(item):
                tools.append(_wrap(item, spec))
            else:
                raise ToolLoadError(
                    f"--tools {spec}: {item!r} is not a tool (use @tool or implement Tool)"
                )
        return tools
    if callable(value) and not called:
        factory = cast(Callable[[], object], value)
        if _takes_no_arguments(factory):
            try:
                produced: object = factory()
            except Exception as error:
                raise ToolLoadError(
                    f"--tools {spec}: calling it failed: {type(error).__name__}: {error}"
                ) from None
            return _as_tools(produced, spec, called=True)
        if inspect.isfunction(value):
            return [_wrap(value, spec)]
    raise ToolLoadError(
        f"--tools {spec}: expected a Tool, a list of Tools or a function returning them, "
        f"got {type(value).__name__}"
    )


def _is_collection(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict))


def _takes_no_arguments(value: object) -> bool:
    try:
        parameters = inspect.signature(cast(Any, value)).parameters.values()
    except (TypeError, ValueError):
        return False
    optional = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return all(p.default is not p.empty or p.kind in optional for p in parameters)


def _wrap(function: Callable[..., Any], spec: str) -> Tool:
    try:
        return tool(function)
    except (TypeError, ValueError) as error:
        raise ToolLoadError(f"--tools {spec}: cannot make a tool of it: {error}") from None

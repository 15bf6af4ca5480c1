"""Pydantic v2 plumbing shared by the file models (workload and search-space YAML files).

Each file a user writes is validated by a :class:`FileModel` (``extra="forbid"``, a
``description`` on every field, a ``schema_version``), which also gives the JSON
schema ``vtune schema`` prints. Pydantic's :class:`~pydantic.ValidationError` lists
every problem over several lines; :func:`error_line` turns its first problem into the
one-line :class:`~vtune._errors.VtuneError` vtune prints: the file, the field by its
dotted path, what is wrong and how to fix it.

Numbers are checked by vtune's rules, not pydantic's lax coercion: a YAML ``true``
or ``"8"`` is not a number (:data:`Integer`, :data:`Number`, :data:`Real`).
Cross-field rules raise :func:`field_error`, which can name a field below the one
being validated (``load.rate_per_s`` from the ``load`` model's check).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from vtune._errors import VtuneError

__all__ = ["JSON_SCHEMA_DIALECT", "FileModel", "Integer", "Number", "Real", "error_line", "field_error",
           "json_schema"]

#: The JSON Schema dialect pydantic's schemas follow.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class FileModel(BaseModel):
    """Base of the models of files users write: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field_error(problem: str, fix: str, field: str | None = None) -> PydanticCustomError:
    """An error for a validator to raise.

    Args:
        problem: What is wrong, e.g. ``is required for kind concurrent``.
        fix: How to fix it, e.g. ``add e.g. 'streams: 8'``.
        field: A field below the model being validated, when the rule is a
            model's (``rate_per_s`` from the load model); None for the field itself.
    """
    return PydanticCustomError("vtune", "{problem}; {fix}", {"problem": problem, "fix": fix, "field": field or ""})


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _numeric(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise field_error(f"must be {what}, got {_shown(value)}", "write a plain number")
    if not math.isfinite(value):
        raise field_error(f"must be finite, got {_shown(value)}", "write a plain number")


def _to_int(value: Any) -> int:
    _numeric(value, "an integer")
    if not float(value).is_integer():
        raise field_error(f"must be an integer, got {_shown(value)}", "drop the fraction")
    return int(value)


def _to_float(value: Any) -> float:
    _numeric(value, "a number")
    return float(value)


def _to_real(value: Any) -> int | float:
    _numeric(value, "a number")
    return typing.cast(int | float, value)


#: An integer (``8``, or ``8.0``); not a boolean or a string.
Integer = Annotated[int, BeforeValidator(_to_int)]
#: A finite number, read as a float; not a boolean or a string.
Number = Annotated[float, BeforeValidator(_to_float)]
#: A finite number that keeps its type (``16`` stays an int, ``0.9`` a float).
Real = Annotated[int | float, BeforeValidator(_to_real)]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model class a field holds (directly, optionally, or as a mapping's values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _submodel(args[0])
    if origin is dict:
        return _submodel(args[1])
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        return next((m for m in map(_submodel, args) if m is not None), None)
    return None


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc``."""
    model: type[BaseModel] | None = root
    i = 0
    while model is not None and i < len(loc):
        info = model.model_fields.get(str(loc[i]))
        if info is None:
            return None
        if typing.get_origin(info.annotation) is dict:
            i += 1  # the mapping's key (a dimension name)
        model = _submodel(info.annotation)
        i += 1
    return model


def error_line(exc: ValidationError, source: str, model: type[BaseModel], *, missing_fix: str,
               fix: str) -> VtuneError:
    """The one-line error for the first problem pydantic found.

    Args:
        exc: Pydantic's error.
        source: The file (or ``--flag FILE``) the data came from.
        model: The model that was validated (to list the known fields).
        missing_fix: How to add a missing field, e.g. ``add it (see configs/workloads/chatbot.yaml)``.
        fix: The general fix, e.g. ``fix the workload file``.

    Returns:
        ``VtuneError("<source>: field '<a.b>' <problem>; <fix>")``.
    """
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "vtune":
        if ctx.get("field"):
            loc = (*loc, ctx["field"])
        problem, how = str(ctx["problem"]), str(ctx["fix"])
    elif kind == "missing":
        problem, how = "is missing", missing_fix
    elif kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = sorted(parent.model_fields) if parent is not None else []
        problem, how = "is not a known field", f"use only {', '.join(known)}" if known else fix
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        problem, how = f"must be a mapping, got {_shown(value)}", fix
    elif kind == "literal_error" and loc[-1:] == ("schema_version",):
        problem, how = f"is {_shown(value)}, this vtune reads {ctx.get('expected')}", "convert the file"
    elif kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        problem, how = f"is {_shown(value)}", f"use one of {expected}"
    elif kind == "greater_than_equal":
        problem, how = f"must be at least {_shown(ctx.get('ge'))}, got {_shown(value)}", "raise it"
    elif kind == "greater_than":
        problem, how = f"must be greater than {_shown(ctx.get('gt'))}, got {_shown(value)}", "raise it"
    elif kind == "less_than_equal":
        problem, how = f"must be at most {_shown(ctx.get('le'))}, got {_shown(value)}", "lower it"
    elif kind == "string_type":
        problem, how = f"must be a string, got {_shown(value)}", fix
    elif kind in ("bool_type", "bool_parsing"):
        problem, how = f"must be true or false, got {_shown(value)}", fix
    elif kind == "list_type":
        problem, how = f"must be a list, got {_shown(value)}", fix
    else:
        msg = str(err["msg"]).removeprefix("Value error, ")
        problem, how = f"{msg[:1].lower()}{msg[1:]}, got {_shown(value)}", fix
    if not loc:
        return VtuneError(f"{source}: {problem}; {how}")
    path = ".".join(str(part) for part in loc)
    return VtuneError(f"{source}: field '{path}' {problem}; {how}")


def json_schema(model: type[BaseModel], *, title: str) -> dict[str, Any]:
    """The JSON schema of a file model, with the dialect (``$schema``) and a title."""
    out: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema()}
    out["title"] = title
    return out

"""Shared pieces of the spec models: the frozen base, pixel-unit floats, one-line errors."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from hamsweep.errors import SpecError

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def fraction(value: Any) -> Any:
    """Accept '8/255' (as YAML gives it, a string) for pixel-unit floats."""
    if isinstance(value, str) and (m := _FRACTION.match(value)):
        return float(Fraction(m.group(1)) / Fraction(m.group(2)))
    return value


PixelFloat = Annotated[float, BeforeValidator(fraction)]


def pixel_range(key: str, value: float | None) -> None:
    if value is None:
        return
    if value > 1:
        raise SpecError(
            key, f"{key} must be in (0, 1] but got {value:g}; did you mean {value:g}/255?"
        )
    if value <= 0:
        raise SpecError(key, f"{key} must be in (0, 1] but got {value:g}")


def at_least(model: BaseModel, minimum: int, *keys: str) -> None:
    """Each of ``model``'s fields ``keys`` must be >= ``minimum``: one-line error naming the first
    that is not."""
    for key in keys:
        value = getattr(model, key)
        if value < minimum:
            raise SpecError(key, f"{key} must be >= {minimum} but got {value}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # field -> the value a config pickled before the field existed gets, where that is not the
    # field's default (what such a sweep did then, e.g. confirm.early: False)
    _before_field: ClassVar[dict[str, Any]] = {}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        """A config pickled by an older hamsweep (Ray Tune keeps the searcher, and with it the
        spec, pickled in a sweep folder) has none of the fields added since: each gets
        ``_before_field``'s value, else its default, so the resumed sweep goes on as it was."""
        super().__setstate__(state)
        for name, field in type(self).model_fields.items():
            if name not in self.__dict__:
                value = self._before_field.get(name, field.get_default(call_default_factory=True))
                object.__setattr__(self, name, value)


def validate(model: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """``model.model_validate(data)`` with errors turned into one-line ``SpecError``s."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _format_error(err, model, prefix) from None


def _format_error(err: ValidationError, root: type[BaseModel], prefix: str = "") -> SpecError:
    """The first pydantic error as one line: 'key.path: what is wrong (got value)'."""
    e = err.errors()[0]
    # union members appear in the location as type tags ("literal[...]", "tuple[...]"): not keys
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and "[" in p))
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):  # raised by one of our validators: its key is below `loc`
        key = ".".join(p for p in (prefix, loc, cause.key) if p)
        return SpecError(key, str(cause).removeprefix(f"{cause.key}: "))
    key = ".".join(p for p in (prefix, loc) if p)
    if e["type"] == "extra_forbidden":
        parent, _, name = loc.rpartition(".")
        model = _model_at(root, parent)
        valid = ", ".join(model.model_fields) if model else "see the docs"
        return SpecError(key, f"unknown key {name!r}; valid keys here are {valid}")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "value_error" and "input" in e and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return SpecError(key, msg)


def _model_at(root: type[BaseModel], path: str) -> type[BaseModel] | None:
    """The model class of the section at dotted ``path`` below ``root`` (None if there is none)."""
    model: Any = root
    for part in filter(None, path.split(".")):
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None

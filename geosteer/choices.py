"""One check for every string knob that names one of a fixed set of choices."""

from __future__ import annotations


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """`value` (as a plain `str`) if it is one of `choices`.

    Raises:
        TypeError: `value` is not a str, naming the argument `name`.
        ValueError: naming the argument `name`, the choices and the value.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)

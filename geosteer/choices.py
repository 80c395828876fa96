"""One check for every string knob that names one of a fixed set of choices."""

from __future__ import annotations


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`.

    Raises:
        ValueError: naming the argument `name`, the choices and the value.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value

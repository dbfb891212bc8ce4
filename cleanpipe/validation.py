"""Validation at the boundary, scikit-learn style: each check names the parameter it rejects.

Options dataclasses and the engine's configuration validate themselves with these helpers, once. The
errors name Python parameters (``epochs must be at least 1, got 0``); the command line maps a
parameter to the flag it came from (``--epochs must be at least 1, got 0``) in its one error wrapper.
"""

from __future__ import annotations

import numbers
import re
from typing import Iterable

from cleanpipe.errors import CleanpipeError


class ParameterError(CleanpipeError, ValueError):
    """A bad value of one named parameter.

    Attributes
    ----------
    parameter : str
        The Python name of the parameter (``forget_rate``); the CLI prints its flag instead.
    problem : str
        What is wrong, to follow the name (``must lie in [0, 1), got 1.5``); where the name belongs
        elsewhere in the sentence, the problem says ``{name}`` there instead. Another parameter it
        mentions is written ``{kind}`` (its Python name in braces) and listed in ``mentions``, so that the
        CLI can show its flag; other braces (a user's values) are left as they are.
    mentions : tuple of str
        The other parameters the problem names.
    """

    def __init__(self, parameter: str, problem: str, mentions: tuple[str, ...] = ()) -> None:
        self.parameter, self.problem, self.mentions = parameter, " ".join(problem.split()), tuple(mentions)
        super().__init__(self.render(parameter))

    def __reduce__(self):  # Ray sends a worker's errors back pickled
        return type(self), (self.parameter, self.problem, self.mentions)

    def render(self, name: str, flags: dict[str, str] | None = None) -> str:
        """The message with the parameter called ``name`` and the others it mentions by ``flags`` (the CLI's)."""
        text = self.problem if "{name}" in self.problem else "{name} " + self.problem
        for other in self.mentions:
            text = text.replace("{" + other + "}", (flags or {}).get(other, other))
        return text.replace("{name}", name)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, why: str = ""):
    """Return ``value`` if it lies within the bounds, else raise :class:`ParameterError` naming ``name``.

    Parameters
    ----------
    value : int or float
    name : str
        The parameter's name, as the caller spelled it.
    low, high : float, optional
        Bounds; ``low_open`` / ``high_open`` exclude them.
    why : str
        A short reason appended to the message, e.g. ``"(the weak view and a strong one)"``.
    """
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high)))
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or bad:
        if low is not None and high is not None:
            rule = f"must lie in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        elif low == 0 and low_open:
            rule = "must be positive"
        elif low is not None:
            rule = f"must be {'greater than' if low_open else 'at least'} {_fmt(low)}"
        elif high is not None:
            rule = f"must be {'less than' if high_open else 'at most'} {_fmt(high)}"
        else:
            rule = "must be a number"
        raise ParameterError(name, f"{rule}{' ' + why if why else ''}, got {value!r}")
    return value


def check_choice(value, name: str, choices: Iterable[str]):
    """Return ``value`` if it is one of ``choices``, else raise :class:`ParameterError` listing them."""
    choices = list(choices)
    if value not in choices:
        listed = " or ".join(choices) if len(choices) <= 2 else ", ".join(choices[:-1]) + " or " + choices[-1]
        raise ParameterError(name, f"must be {listed}, got {value!r}")
    return value


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, name: str) -> int:
    """``"24GB"``, ``"500MiB"``, ``"1.5g"`` or ``"1000000"`` as a number of bytes, else a ParameterError."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ParameterError(name, f"must be a size such as 24GB, 500MB or 2GiB, got {text!r}")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value < 1:
        raise ParameterError(name, f"must be at least 1 byte, got {text!r}")
    return value

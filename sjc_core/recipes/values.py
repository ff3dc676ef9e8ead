"""The value types and limits every recipe model uses: what a machine can honour.

Numbers are finite (no NaN or Inf), whole numbers are never ``true``/``false``, switches
are never numbers, texts hold no control characters, paths are bounded; sizes and counts
have upper limits, stated in each field's description and in the error. The core models
(:mod:`sjc_core.recipes.recipe`) and every built-in plugin's options use these types.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AllowInfNan, BeforeValidator, ConfigDict, StringConstraints
from pydantic_core import PydanticCustomError

# ----------------------------------------------------------------------------- limits
# Generous, but each one a machine can honour; every message that enforces one states it.
MAX_STEPS = 10**7  # the sigma schedule is precomputed: 80 MB of float64 at the limit
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64 bits; numpy any; 63 keeps it a signed int64 everywhere
MAX_LR = 1e3
MAX_RADIUS = 1e3
MAX_RENDER_SIZE = 4096
MAX_TEST_FRAMES = 10_000  # every turntable frame is held in memory until the video is written
MAX_SPIRAL_ROUNDS = 1000
MAX_FPS = 1000
MAX_AZIMUTH = 720.0
MAX_SIGMA = 1e6
MAX_N_NOISE = 256
MAX_LOSSES = 64
MAX_NAME_LENGTH = 100  # characters; the run folder NAME-seedSEED must fit a 255-byte file name
MAX_NAME_BYTES = 200
MAX_PATH_LENGTH = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 32  # nesting of tables and arrays in a recipe
# ----------------------------------------------------------------------------- value types


def one_line(message: str) -> str:
    """A message as one line of at most 300 characters."""
    message = " ".join(message.split("\n"))
    return message if len(message) <= 300 else message[:299] + "…"


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name), as :func:`one_line`."""
    text = str(exc).strip() or type(exc).__name__
    return one_line(text.splitlines()[0])


class SetText(str):
    """Text typed after ``--set KEY=`` (or in a ``--sweep``): the model converts it.

    ``--set steps=12`` arrives as the text "12" and must become the integer 12, while
    ``steps = "12"`` quoted in a recipe file is a string and never an integer. The marker
    tells the two apart; for every other purpose it is a plain ``str``.
    """


def _quoted_number(value: Any) -> bool:
    """A string (not typed after --set) that would pass as a number: refused, never converted.

    Other strings ('many') are left to the model, whose own message says they are no number.
    """
    if not isinstance(value, str) or isinstance(value, SetText):
        return False
    try:
        float(value.strip()[:100])
    except ValueError:
        return False
    return True


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not true or false")
    if _quoted_number(value):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a string (write it without quotes)")
    return value


def _real_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number, not true or false")
    if _quoted_number(value):
        raise PydanticCustomError("float_type", "Input should be a valid number, not a string (write it without quotes)")
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, SetText) and value.strip().lower() in ("true", "false"):  # as typed after --set
        return value.strip().lower() == "true"
    raise PydanticCustomError("bool_type", "Input should be a valid boolean: true or false")


def _control_character(value: str, allowed: str = "") -> str | None:
    for char in value:
        code = ord(char)
        if (code < 32 or 127 <= code < 160) and char not in allowed:
            return char
    return None


def _text(value: str) -> str:
    bad = _control_character(value, allowed="\t\n\r")
    if bad is not None:
        raise PydanticCustomError("string_control", "must not contain the control character {char}", {"char": repr(bad)})
    return value


def _line(value: str) -> str:
    bad = _control_character(value)
    if bad is not None:
        raise PydanticCustomError("string_control", "must not contain the control character {char}", {"char": repr(bad)})
    return value


def _path_text(value: str) -> str:
    _line(value)
    if not value.strip():
        raise PydanticCustomError("string_blank", "must not be blank")
    for part in Path(value).parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise PydanticCustomError(
                "path_component", "each folder or file name must be at most {limit} bytes", {"limit": MAX_COMPONENT_BYTES}
            )
    return value


# Whole numbers: an int, a float without a fraction or digits typed after --set; never a bool,
# never a quoted string.
Int = Annotated[int, BeforeValidator(_whole_number)]
# Real numbers: finite (no nan, inf, -inf), never a bool, never a quoted string.
Float = Annotated[float, BeforeValidator(_real_number), AllowInfNan(False)]
FiniteFloat = Float
# Switches: true or false (or the words, as typed after --set); never a number or a quoted string.
Flag = Annotated[bool, BeforeValidator(_flag)]
# Free text (prompts): no control characters but tab and newline. Give max_length in Field.
Text = Annotated[str, AfterValidator(_text)]
# One line of text (ids, revisions): no control characters at all.
Line = Annotated[str, AfterValidator(_line)]
# A path: one line, each component a legal file name length. Give max_length in Field.
PathText = Annotated[str, AfterValidator(_path_text)]


def bounded(kind: Any, *, max_length: int, min_length: int = 0) -> Any:
    """``kind`` (:data:`Text`, :data:`Line` or :data:`PathText`) with its length limits checked
    first; use it where ``Field(max_length=...)`` cannot reach, e.g. inside ``X | None``."""
    checks = typing.get_args(kind)[1:]
    return Annotated[(str, StringConstraints(min_length=min_length, max_length=max_length), *checks)]


# What every options model should say in its model_config (the core models do).
STRICT_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

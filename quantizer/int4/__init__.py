"""int4: how the 4-bit values are chosen (`methods`), and how they are stored (`formats`).

- `methods`: the registry of methods (rtn, asym, gptq; gptq's ablations for the benchmark) and the choice of one
  at preflight.
- `formats`: the storage formats (portable Intx, CUDA's tile-packed) and their torchao configs.
- `grid`, `gptq`: the asymmetric grid and the GPTQ algorithm the calibrated methods use.
- `packed`: CUDA's tile-packed layout written on a CPU, and an independent port of its unpack kernel.
- `apply`: `Int4Choice`, one int4 type of one job, as the engines use it.
"""

from .apply import Int4Choice, made_here
from .formats import FORMATS, INTX, TILE_PACKED, Int4Format
from .grid import GroupQuant, quantize_asym
from .methods import (
    ABLATIONS,
    METHODS,
    RTN,
    Int4Method,
    MethodChoice,
    auto_description,
    budget_seconds,
    choose_method,
    get_method,
    method_description,
)

__all__ = [
    "ABLATIONS",
    "FORMATS",
    "INTX",
    "METHODS",
    "RTN",
    "TILE_PACKED",
    "GroupQuant",
    "Int4Choice",
    "Int4Format",
    "Int4Method",
    "MethodChoice",
    "auto_description",
    "budget_seconds",
    "choose_method",
    "get_method",
    "made_here",
    "method_description",
    "quantize_asym",
]

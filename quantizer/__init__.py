"""torchao quantization for Hugging Face causal LMs: quantize, verify, card, push.

Importing the package quiets two harmless start-up messages so that users see only what matters:
torchao's failures to load CUDA kernels on a machine without CUDA, and a torch deprecation
warning that torchao triggers while registering its enums.
"""

import logging

import torch

from . import settings

if not torch.cuda.is_available():
    settings.skip_torchao_extensions()
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
_torchao_log = logging.getLogger("torchao")
_level = _torchao_log.level
_torchao_log.setLevel(logging.ERROR)
import torchao  # noqa: E402,F401 - imported here, quietly, once

_torchao_log.setLevel(_level)

__version__ = "0.1.0"

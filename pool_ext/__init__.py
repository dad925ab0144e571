"""pool_ext: max, average and variable pooling as PyTorch custom operators.

``import pool_ext`` loads the compiled kernels, which register the ops under
``torch.ops.pool_ext``; ``pool_ext.functional`` and ``pool_ext.nn`` hold the
drop-in replacements for ``torch.nn.functional`` and ``torch.nn`` pooling.
"""

import torch

try:
    from . import _C  # noqa: F401  (loading it runs the op registrations)
except ImportError as e:
    raise ImportError(
        f"pool_ext: could not load its compiled kernels ({e}). The extension is missing or was "
        f"built for another torch (this is torch {torch.__version__}). Rebuild it from the "
        "source folder with: pip install --no-build-isolation -e ."
    ) from e

from . import _meta  # noqa: F401,E402  (fake kernels and autograd)
from . import functional, nn  # noqa: E402

__all__ = ["functional", "nn"]
__version__ = "0.1.0"

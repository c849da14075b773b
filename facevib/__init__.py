"""facevib: face recognition with cell variational information bottlenecks (cellVIB).

The library never parses arguments, initialises process groups or touches a GPU at
import time; the entry points in ``train/``, ``eval/`` and ``serve/`` do that.
"""

__version__ = "0.1.0"

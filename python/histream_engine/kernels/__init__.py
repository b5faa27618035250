"""Triton kernels, ``histream_engine.kernels``; their source is the repository's top-level ``kernels/`` folder.

That folder has no ``__init__.py`` on purpose. Python puts the working folder first on ``sys.path`` for ``python -c``,
``python -m`` and ``torchrun -m``, and from the repository root a regular package named ``kernels`` there would
shadow PyPI's ``kernels`` (which transformers imports): as a folder without ``__init__.py`` it is only a namespace
portion, and PyPI's regular package, found later on the path, wins (PEP 420).

So this package is the regular one. A wheel carries the kernel modules in it (``setup.py`` copies them in); in a
source checkout (an editable install, or ``PYTHONPATH=python``) its search path also reaches the top-level folder.
Nothing here touches a GPU or imports Triton at package import time: each kernel module imports Triton itself and is
loaded only by the attention backend that uses it.
"""

from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[3] / "kernels"
if _SOURCE.is_dir() and (_SOURCE / "attention_core.py").is_file() and str(_SOURCE) not in __path__:
    __path__.append(str(_SOURCE))

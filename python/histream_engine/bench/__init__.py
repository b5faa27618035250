"""The latency-per-frame benchmark suite, ``histream_engine.bench`` (``histream bench``); its source is the
repository's top-level ``bench/`` folder, also runnable from a checkout as ``python -m bench``.

That folder has no ``__init__.py``, as ``kernels/`` has none (see ``histream_engine.kernels``): from the repository
root a regular package named ``bench`` would shadow any installed one. A wheel carries the suite's modules in this
package (``setup.py`` copies them in); in a source checkout its search path also reaches the top-level folder.
"""

from pathlib import Path

_SOURCE = Path(__file__).resolve().parents[3] / "bench"
if _SOURCE.is_dir() and (_SOURCE / "suite.py").is_file() and str(_SOURCE) not in __path__:
    __path__.append(str(_SOURCE))

"""meireport: reliable neurons, CNN models and Most Exciting Inputs of mouse visual cortex units.

The package is the tested core of a Jupyter Book report; notebooks only call it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meireport")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+src"

__all__ = ["__version__"]

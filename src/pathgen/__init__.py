"""pathgen: whole-slide-aware digital-pathology toolkit."""

__version__ = "0.1.0"

from pathgen.errors import PathgenError  # noqa: E402

__all__ = ["PathgenError", "__version__"]

"""Reading volumes: one reader per source format, all behind `open_source`."""

from scalereg.io.open_source import open_source
from scalereg.io.source import Source

__all__ = ["Source", "open_source"]

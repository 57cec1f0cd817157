"""scalereg: register brain volumes too large for one machine.

The domain core: plain Python (numpy, zarr, xarray, antspyx); it never imports Prefect.
"""

__version__ = "0.1.0"

"""torch.utils stub (scdl-fs tests)."""
from . import data  # noqa: F401


def __getattr__(name):
    raise AttributeError(f"torch stub (scdl-fs tests): torch.utils.{name} is not implemented")

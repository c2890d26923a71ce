"""A tiny numpy-backed stand-in for `torch`, used only by scdl-fs's test oracle.

bionemo-scdl imports torch at module level. To open an archive and read rows it needs just
`torch.utils.data.Dataset` (a base class), `torch.Tensor`, `torch.from_numpy` and a few dtype names.
Those are provided here; any other attribute raises AttributeError so an unexpected code path fails
loudly instead of silently doing the wrong thing.
"""
import numpy as _np

__version__ = "0.0.0+scdlfs.stub"
SCDL_FS_TORCH_STUB = True


class Tensor(_np.ndarray):
    """An ndarray subclass, enough for isinstance checks, annotations and indexing."""


def from_numpy(array):
    return _np.asarray(array).view(Tensor)


float16 = _np.float16
float32 = _np.float32
float64 = _np.float64
int8 = _np.int8
int16 = _np.int16
int32 = _np.int32
int64 = _np.int64
uint8 = _np.uint8


def __getattr__(name):
    raise AttributeError(f"torch stub (scdl-fs tests): torch.{name} is not implemented")


from . import utils  # noqa: E402,F401  (makes `import torch; torch.utils.data.Dataset` work)

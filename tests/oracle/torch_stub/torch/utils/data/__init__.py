"""torch.utils.data stub (scdl-fs tests): only the Dataset base class that bionemo-scdl subclasses."""


class Dataset:
    """Plain base class; supports `Dataset[T]` subscripting used in type hints."""

    def __class_getitem__(cls, item):
        return cls


def __getattr__(name):
    raise AttributeError(f"torch stub (scdl-fs tests): torch.utils.data.{name} is not implemented")

"""Errors of the torch side that the CLI reports as one line; torch-free so importing them costs nothing."""


class DataError(RuntimeError):
    """A dataset cannot be found or read; the message says how to fix it."""


class TrainingExtraMissing(ImportError):
    """compressai is not installed: a server install (``vitcodec-cloud``) leaves the training stack out, and
    training, export and building whole networks need it. The message says which extra brings it."""

    def __init__(self) -> None:
        super().__init__("this command needs compressai, which a server install leaves out: "
                         "install the models' training extra, e.g. pip install './models[train]' from a checkout",
                         name="compressai")

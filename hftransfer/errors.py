"""The one kind of error a user acts on. It imports nothing, so every module can raise it (`zoo` stays torch-free)."""


class InputError(Exception):
    """Input hftransfer cannot use (a flag, a file, a data row, a model, an output folder), said in one message that
    names it. The command line and the recipes print it as `error: MESSAGE` and exit 1, without a traceback; every
    other exception keeps its traceback (a fault of hftransfer's or of the machine's)."""

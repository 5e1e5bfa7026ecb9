"""The one kind of error a user acts on, and the rule that tells the machine's errors from it. It imports nothing,
so every module can use it (`zoo` stays torch-free)."""


class InputError(Exception):
    """Input hftransfer cannot use (a flag, a file, a data row, a model, an output folder), said in one message that
    names it. The command line and the recipes print it as `error: MESSAGE` and exit 1, without a traceback; every
    other exception keeps its traceback (a fault of hftransfer's or of the machine's)."""


def is_the_machines(err: BaseException) -> bool:
    """An error of this machine (a full disk, no permission: it carries an errno), not of the model, data or Hub
    named: it keeps its traceback. transformers, `datasets` and the Hub raise errno-less OSErrors for what they
    cannot find or reach."""
    return getattr(err, "errno", None) is not None


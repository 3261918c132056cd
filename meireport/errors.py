"""Errors raised for bad user input: one line that names what was wrong and what was expected."""


class MeireportError(ValueError):
    """Bad input (a path, a session, a field) described in one clear line.

    The command-line interface prints the message alone, without a traceback.

    Examples
    --------
    >>> raise MeireportError("window: t1 must be > t0, got (0.25, 0.1)")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: window: t1 must be > t0, got (0.25, 0.1)
    """

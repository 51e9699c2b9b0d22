"""Training: precision, loss, checkpoints, metrics, the loop and the end-to-end run.

``tunesmith.train(...)`` (this package, called) runs :func:`tunesmith.train.run.train`.
"""

from tunesmith._callable import make_module_callable


def train(*args, **kwargs):
    """See :func:`tunesmith.train.run.train`."""
    from tunesmith.train.run import train as _train

    return _train(*args, **kwargs)


make_module_callable(__name__, train)

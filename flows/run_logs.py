"""Expected failures read as one line in a run's log; unexpected ones keep their traceback.

mira's own errors (the ``MiraError`` family: a missing batch, bad input, a failed gate) say
what is wrong and what to do in their message. Prefect's engine logs every failure with its
traceback, which buries that line under frames of Prefect and mira internals; this filter keeps
the message and drops the traceback for those errors only.
"""

from __future__ import annotations

import logging

from mira.errors import MiraError

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class ExpectedErrorsInOneLine(logging.Filter):
    """Drop the traceback from engine records whose exception is one of mira's own errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], MiraError):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Attach the filter to Prefect's flow- and task-run loggers (once per process)."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrorsInOneLine) for f in logger.filters):
            logger.addFilter(ExpectedErrorsInOneLine())

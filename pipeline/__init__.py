"""DayDreaming on Luigi. ``luigi --module pipeline RunCohort --cohort-id demo`` finds the tasks here.

Importing ``pipeline`` (or ``pipeline.spec`` from a notebook) loads no Luigi tasks: they are
registered when luigi's command line names this package (``--module pipeline``), or by importing
``pipeline.tasks``.
"""
import sys


def _named_by_luigi_command_line(argv):
    return any(arg == "--module=pipeline" or (arg == "--module" and argv[i + 1:i + 2] == ["pipeline"])
               for i, arg in enumerate(argv))


if _named_by_luigi_command_line(sys.argv):
    from . import tasks  # noqa: F401  (registers the tasks for `luigi --module pipeline TASK`)

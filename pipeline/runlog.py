"""Where Luigi's per-task log goes during a run: a file under data/logs/. stderr (a terminal, a CI
log or a redirect) keeps warnings and errors - a failed generation is a warning - and gets the
INFO chatter only when asked for (--verbose, or luigi's own --log-level).

    >>> with chatter_to(Path("data/logs/run.log"), verbose=False): ...
"""
import contextlib
import logging
import sys
from pathlib import Path

import luigi.configuration

LOGGERS = ("luigi-interface", "luigi")
FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(message)s"


def log_level_asked(argv) -> bool:
    return any(a == "--log-level" or a.startswith("--log-level=") for a in argv)


def console_level(argv, verbose) -> str:
    """The level of what reaches stderr: INFO with --verbose, else the level luigi's --log-level
    asks for, else warnings and errors."""
    if verbose:
        return "INFO"
    for i, arg in enumerate(argv):
        if arg.startswith("--log-level="):
            return arg.split("=", 1)[1]
        if arg == "--log-level" and i + 1 < len(argv):
            return argv[i + 1]
    return "WARNING"


def _to_console(handler) -> bool:
    stream = getattr(handler, "stream", None)
    return isinstance(handler, logging.StreamHandler) and stream in (sys.stderr, sys.stdout)


@contextlib.contextmanager
def chatter_to(log_file, verbose):
    """Add a file handler for the run's log; unless ``verbose``, the console's handlers pass only
    warnings and errors meanwhile (this process only; luigi's own lines before and after the run stay)."""
    there = any(isinstance(h, RunLogHandler) and h.baseFilename == str(Path(log_file).absolute())
                for name in LOGGERS for h in logging.getLogger(name).handlers)
    file_handler = logging.NullHandler() if there else _file_handler(log_file)  # `daydream run` set it up
    raised = []  # (handler, its level before)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(file_handler)
        if not verbose:
            for handler in logger.handlers:
                if _to_console(handler) and handler.level < logging.WARNING:
                    raised.append((handler, handler.level))
                    handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in raised:
            handler.setLevel(level)
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(file_handler)
        file_handler.close()


class RunLogHandler(logging.FileHandler):
    """The run's log file. It is a convenience: a write that fails (a full disk) ends the file quietly
    and never the run, which reports its own errors."""

    def handleError(self, record):  # noqa: N802 - logging's name
        self.close()

    def flush(self):
        try:
            super().flush()
        except OSError:
            self.stream = None

    def close(self):
        try:
            super().close()
        except OSError:
            self.stream = None


def _file_handler(log_file):
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(log_file, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def _no_luigi_logging_setup():
    config = luigi.configuration.get_config()
    if not config.has_section("core"):
        config.add_section("core")
    config.set("core", "no_configure_logging", "true")


def quiet_terminal(log_file):
    """`daydream run`: luigi's INFO lines go to ``log_file``; stderr keeps warnings and errors (and
    the progress line)."""
    _no_luigi_logging_setup()
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    file_handler = _file_handler(log_file)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(file_handler)
        logger.addHandler(terminal)


def configure_spawned(log_file, level):
    """Logging of a spawned chunk runner (chunks.py), which starts with none: the run's log file,
    and stderr from ``level`` (console_level) up."""
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    stream.setLevel(level)
    handlers = [_file_handler(log_file), stream]
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for handler in handlers:
            logger.addHandler(handler)
    _no_luigi_logging_setup()  # luigi.build would add a stderr handler of its own

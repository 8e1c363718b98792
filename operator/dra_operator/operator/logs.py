"""JSON logs: structlog for our records (keyed by pod and claim), stdlib (Kopf) logging rendered alike."""

from __future__ import annotations

import logging
import sys

import structlog


class RetriesAreWarnings(logging.Filter):
    """Kopf logs each retried API request at ERROR ("Request attempt #N failed; will retry"): while the API
    server restarts that is expected and handled, so it is a WARNING; an escalated one stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and record.name.startswith("kopf")
            and "will retry" in str(record.msg)
            and not record.exc_info
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup(level: str = "INFO") -> None:
    """One JSON object per line on stderr, for our structlog loggers and stdlib ones (Kopf, aiohttp)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RetriesAreWarnings())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Kopf logs one INFO line per watch event and handler run: keep that at WARNING unless debugging.
    if numeric > logging.DEBUG:
        for noisy in ("kopf.objects", "kopf.activities", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

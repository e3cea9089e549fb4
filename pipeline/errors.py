"""Error types. Every error the pipeline raises on purpose is a PipelineError whose
message names the file, line or id at fault and what to do about it."""


class PipelineError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class CatalogError(PipelineError):
    """The input catalog (data/1_raw) is malformed."""


class SpecError(PipelineError):
    """A cohort spec is malformed or names something the catalog does not have."""


class RenderError(PipelineError):
    """A prompt template failed to render."""


class ParseError(PipelineError):
    """A parser could not extract what it needs from a model response."""


class LLMError(PipelineError):
    """An LLM call failed for good (after any retries).

    ``status`` is the HTTP status when there was one; ``retryable`` says whether a later run
    may succeed (rate limits, outages) or not (bad key, unknown model)."""

    def __init__(self, message, *, status=None, retryable=False, attempts=1, error_class=None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts
        self.error_class = error_class or type(self).__name__


class StoreError(PipelineError):
    """Files under data/ are in a state the pipeline will not touch (corrupt, conflicting)."""

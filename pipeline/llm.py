"""Which backend answers a model: the embedded llama.cpp model for provider ``local``, the
OpenAI-compatible HTTP API (OpenRouter by default) for everything else.

    >>> backends = Backends.from_config()
    >>> result = backends.complete(catalog.models["gemma_local"], "Hello", stage="draft")

The HTTP client and the local model are created once per process and reused.
Environment overrides: DAYDREAM_LLM_BASE_URL for ``[llm] base_url``; the API key is read from
the variable that ``[llm] api_key_env`` names (OPENROUTER_API_KEY by default), stripped of
surrounding whitespace, and never stored. ``[llm] call_deadline_s`` bounds each call (0: no bound).
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LLMError
from .llm_http import LLMResult, OpenAIClient
from .ratelimit import Pacer

__all__ = ["Backends", "LLMResult"]


@dataclass
class Backends:
    base_url: str
    api_key_env: str
    timeout_s: float = 180.0
    call_deadline_s: float = 300.0
    max_attempts: int = 6
    backoff_base_s: float = 2.0
    max_tokens: int = None   # None or 0: the provider's default
    local_max_tokens: int = 256
    local_threads: int = 2
    pacer: Pacer = None
    _client: OpenAIClient = field(default=None, init=False, repr=False)

    @classmethod
    def from_config(cls, data_root="data"):
        from .config import llm

        cfg = llm()
        pacer = Pacer(Path(data_root) / ".ratelimit", {"llm_free": cfg.rpm_llm_free, "llm_paid": cfg.rpm_llm_paid})
        return cls(os.environ.get("DAYDREAM_LLM_BASE_URL") or cfg.base_url, cfg.api_key_env,
                   timeout_s=cfg.timeout_s, call_deadline_s=cfg.call_deadline_s, max_attempts=cfg.max_attempts,
                   backoff_base_s=cfg.backoff_base_s, max_tokens=cfg.max_tokens, local_max_tokens=cfg.local_max_tokens,
                   local_threads=cfg.local_threads, pacer=pacer)

    def _http(self):
        if self._client is None:
            key = (os.environ.get(self.api_key_env) or "").strip()
            if not key and "127.0.0.1" not in self.base_url and "localhost" not in self.base_url:
                raise LLMError(f"no API key: set the {self.api_key_env} environment variable "
                               f"(or use a model whose provider is 'local')", retryable=False)
            self._client = OpenAIClient(self.base_url, key, timeout=(10, self.timeout_s),
                                        deadline_s=self.call_deadline_s or None, max_attempts=self.max_attempts,
                                        backoff_base=self.backoff_base_s, key_name=self.api_key_env)
        return self._client

    def prepare(self):
        """Build the HTTP client and its session here, before Luigi forks its task processes: each
        then takes them over instead of building its own."""
        try:
            self._http().prepare_session()
        except LLMError:
            pass  # no API key: each generation that needs one fails saying so

    def complete(self, model, prompt, *, stage, on_attempt_failed=None) -> LLMResult:
        """Answer ``prompt`` with catalog ``model``; evaluations on the local model end in a score line."""
        if model.is_local:
            from .llm_local import complete_local

            return complete_local(prompt, stage=stage, max_tokens=self.local_max_tokens, threads=self.local_threads)
        client = self._http()
        client.on_attempt_failed = on_attempt_failed
        pace = (lambda: self.pacer.wait(model.pool)) if self.pacer else None
        return client.complete(model.model, prompt, max_tokens=self.max_tokens or None, before_attempt=pace)

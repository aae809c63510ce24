"""A minimal client for an OpenAI-compatible chat-completions endpoint (urllib only, no SDK).

The LLM-based scorers (the EMER judge in `esva.eval.judge`, the MER2024-OV grouping writer in
`esva.eval.official_ov`) take a `Post`: a callable from chat messages to the reply's text. `chat_post`
makes one that talks to a real endpoint; tests pass a plain function instead, so nothing opens a socket.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Callable

Messages = list[dict[str, str]]
Post = Callable[[Messages], str]


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered something that is not a chat completion."""


def user(text: str) -> Messages:
    """One user turn, as the official scorers send their prompts."""
    return [{"role": "user", "content": text}]


def chat_post(base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
              max_tokens: int | None = None) -> Post:
    """A `Post` for `<base_url>/chat/completions` at temperature 0 (as the official scorers call ChatGPT).
    The key is read from the environment variable `api_key_env`; without one no Authorization header is
    sent (local servers). The callable has `.endpoint` (the URL), for error messages."""
    url = base_url.rstrip("/") + "/chat/completions"
    key = os.environ.get(api_key_env, "")
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})

    def post(messages: Messages) -> str:
        body = {"model": model, "temperature": 0, "messages": messages}
        if max_tokens:
            body["max_tokens"] = max_tokens
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EndpointError(f"{url}: {exc}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{url}: not a chat completion ({exc.__class__.__name__}: {exc}); "
                                f"response starts {raw[:200]!r}") from None
        if not isinstance(content, str):
            raise EndpointError(f"{url}: the reply's content is {type(content).__name__}, not text")
        return content

    post.endpoint = url  # type: ignore[attr-defined]
    return post


def endpoint_of(post: Post) -> str:
    """The URL a `Post` talks to, or a stand-in name for an injected function."""
    return getattr(post, "endpoint", None) or f"<injected {getattr(post, '__name__', 'post')}>"

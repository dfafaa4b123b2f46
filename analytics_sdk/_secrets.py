"""Which destination settings are secrets, so that every log line masks them.

Typed options declare theirs as SecretStr; a wrapper that keeps an API key as a plain `str`
is covered by the name of the setting (its last word: appKey, client_secret, apiKeys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, SecretStr

from analytics_sdk._logging import register_secret

__all__ = ["is_secret_name", "register_model_secrets", "register_setting_secrets"]

# Guessed secrets shorter than this are left alone: masking "test" or "fine" in every log
# line would garble the logs.
_MIN_GUESSED_SECRET = 8
# A setting is taken for a secret when the last word of its name is one of these: appKey,
# client_secret, accessToken, APIKEY; not apiKeyHeaderName, tokenEndpoint or keyPrefix.
_SECRET_WORDS = frozenset({
    "key", "keys", "secret", "secrets", "token", "tokens", "password", "passwords", "passwd",
    "credential", "credentials", "authorization", "dsn", "apikey", "accesskey", "privatekey",
    "secretkey", "writekey",
})  # fmt: skip
_NAME_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def register_model_secrets(value: object, depth: int = 0) -> None:
    """A destination's SecretStr settings, nested ones included (a header's value in a list
    of headers), are masked in every log line from now on."""
    if depth > 8:
        return
    if isinstance(value, SecretStr):
        register_secret(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            register_model_secrets(getattr(value, name, None), depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            register_model_secrets(item, depth + 1)
    elif isinstance(value, Mapping):
        for item in value.values():
            register_model_secrets(item, depth + 1)


def register_setting_secrets(config: object, depth: int = 0, headers: bool = False) -> None:
    """Mask, in every log line from now on, the string values of a destination's settings
    whose name says secret (apiKey, clientSecret, token, password...), nested ones, lists of
    them, and RudderStack's header lists (`"headers": [{"from": "X-Api-Key", "to": "..."}]`)
    included. Mapping lists elsewhere (event or property renames) are not secrets."""
    if depth > 8:
        return
    if isinstance(config, Mapping):
        name = config.get("from")
        value = config.get("to")
        if headers and isinstance(name, str) and isinstance(value, str) and is_secret_name(name):
            _register_guessed(value)
        for name, value in config.items():
            secret = isinstance(name, str) and is_secret_name(name)
            if isinstance(value, str):
                if secret:
                    _register_guessed(value)
            elif secret and isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, str):
                        _register_guessed(item)
            else:
                in_headers = isinstance(name, str) and "header" in name.lower()
                register_setting_secrets(value, depth + 1, in_headers)
    elif isinstance(config, (list, tuple)):
        for item in config:
            register_setting_secrets(item, depth + 1, headers)


def _register_guessed(value: str) -> None:
    if len(value) >= _MIN_GUESSED_SECRET:
        register_secret(value)


def is_secret_name(name: str) -> bool:
    """Whether a setting's name says it holds a secret (see _SECRET_WORDS). A bare "key"
    names a lookup key (`{"key": "Order Completed"}`), not a credential."""
    words = [word.lower() for word in _NAME_WORDS.findall(name)]
    return bool(words) and words[-1] in _SECRET_WORDS and words not in (["key"], ["keys"])

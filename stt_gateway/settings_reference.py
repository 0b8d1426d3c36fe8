"""The settings reference (``docs/settings.md``), made from :class:`~.settings.Settings` itself,
so the page cannot drift from the code (``tests/test_docs.py`` compares them).

Regenerate: ``.venv/bin/python -m stt_gateway.settings_reference > docs/settings.md``.
"""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .settings import Settings

HEAD = """# Settings

Every setting is an environment variable (or a line of `.env` in the working directory; the
environment wins); `--host`, `--port`, `--log-level`, `--no-auth`, `--workers` and
`--default-engine` are `stt-gateway serve` flags too. Durations are seconds unless the name
says `_ms`. A bad value stops the start with exit status 2 and one
line per setting naming its variable and what it takes.

This page is generated from `stt_gateway/settings.py`
(`python -m stt_gateway.settings_reference > docs/settings.md`); a test keeps it current.

| variable | default | what it does |
|---|---|---|
"""


def _names(name: str, field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"STT_GATEWAY_{name.upper()}"]


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: object = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def reference() -> str:
    """``docs/settings.md``: one table row per setting, in the order ``Settings`` declares
    them (variable names, default, description)."""
    rows = []
    for name, field in Settings.model_fields.items():
        names = " or ".join(f"`{n}`" for n in _names(name, field))
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| {names} | {_default(field)} | {description} |")
    return HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")

"""The repository holds its own contract: the settings page is current, and every document
the code and docs cite exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from stt_gateway.settings_reference import reference

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"docs/[\w./-]+\.md")


def test_docs_settings_md_is_generated_from_the_settings_class() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == reference(), (
        "docs/settings.md is stale: .venv/bin/python -m stt_gateway.settings_reference "
        "> docs/settings.md"
    )


def test_every_document_the_repository_cites_is_in_the_repository() -> None:
    sources = [
        *ROOT.glob("stt_gateway/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("bench/*.py"),
        *ROOT.glob("static/*.js"),
        *ROOT.glob("docs/**/*.md"),
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        ROOT / "stt_gateway" / "usage.md",
    ]
    missing = {
        (str(path.relative_to(ROOT)), cited)
        for path in sources
        for cited in CITED.findall(path.read_text())
        if not (ROOT / cited).is_file()
    }
    assert not missing, sorted(missing)

"""mkdocs hooks (mkdocs.yml `hooks:`): pages made at build time rather than kept in docs/.

- cli.md, the CLI reference, from the parsers `fsdx` builds (docs/gen_cli.py), so it never drifts from the CLI;
- changelog.md, the repository's CHANGELOG.md as it is, so the site shows the one changelog there is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def _gen_cli():
    """docs/gen_cli.py as a module (mkdocs loads hooks by path, so docs/ is not importable by name)."""
    spec = importlib.util.spec_from_file_location("fsdx_docs_gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "cli.md", content=_gen_cli().render()))
    files.append(File.generated(config, "changelog.md", content=(ROOT / "CHANGELOG.md").read_text(encoding="utf-8")))
    return files

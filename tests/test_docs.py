"""The pages under docs/: every Python block runs, every page is in the site's nav, and the CLI reference page is
made from the parsers `fsdx` builds."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from tests.test_readme import NOT_RUN, ROOT, python_blocks, run_block

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
GENERATED = {"cli.md", "changelog.md"}  # made at build time by docs/hooks.py


def _gen_cli():
    spec = importlib.util.spec_from_file_location("fsdx_docs_gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.mark.parametrize("block", [block for page in PAGES for block in python_blocks(page)],
                         ids=lambda block: block.name)
def test_docs_python_block_runs(block, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_block(block, tmp_path)


def test_not_run_markers_give_a_reason():
    for page in [*PAGES, ROOT / "README.md"]:
        for line in page.read_text(encoding="utf-8").splitlines():
            if "not-run" in line and "<!--" in line:
                assert NOT_RUN.search(line), f"{page.name}: a not-run marker needs its reason: {line.strip()}"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    assert sorted(nav) == sorted({page.name for page in PAGES} | GENERATED)


def test_the_cli_page_is_each_commands_help():
    gen_cli = _gen_cli()
    page = gen_cli.render(["sketch", "data synth"])  # two commands whose stage modules import quickly
    for name in ("sketch", "data synth"):
        help_text = gen_cli.command_help(name)
        assert help_text in page and f"### fsdx {name}\n" in page
        assert re.search(r"--out OUT\s", help_text)  # an option made from the stage function's signature
    assert "data synth" not in gen_cli.render(["sketch"])

"""What produced an artifact: the library versions recorded in reports (build_report.json, metrics.json)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" when absent)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions

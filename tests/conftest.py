"""Shared fixtures: paths into the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return ROOT / "config" / "model_registry.yml"

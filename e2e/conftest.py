"""Fixtures and hooks of the end-to-end suite (the helpers are in helpers.py)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

from helpers import Config, required


@pytest.fixture(scope="session")
def cfg() -> Config:
    base_url = required("E2E_BASE_URL").rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise pytest.UsageError(f"E2E_BASE_URL must be http(s)://host[:port], not {base_url!r}")
    return Config(
        base_url=base_url,
        origin=os.environ.get("E2E_ORIGIN", "").strip().rstrip("/")
        or f"{parts.scheme}://{parts.netloc}",
        username=required("E2E_USERNAME"),
        password=required("E2E_PASSWORD"),
        api_key=required("E2E_API_KEY"),
        access_log=os.environ.get("E2E_PROXY_ACCESS_LOG", "").strip() or None,
        metrics_urls=tuple(os.environ.get("E2E_METRICS_URLS", "").split()),
    )


# --- Ordering ---------------------------------------------------------------------


def pytest_collection_modifyitems(items):
    """The access-log test runs last, so it sees every ticket the run minted."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other test")

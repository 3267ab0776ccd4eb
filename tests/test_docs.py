"""Swagger UI at /docs: served by PetSage alone, and rendered by a real Chromium."""

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from petsage import create_app
from tests.gunicorn_process import GunicornFactory

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ASSETS = (
    "swagger-ui.css",
    "index.css",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
)


def test_docs_page_is_served(client: FlaskClient) -> None:
    response = client.get("/docs/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '"url": "/openapi.json"' in page


def test_docs_page_loads_nothing_from_elsewhere(client: FlaskClient) -> None:
    page = client.get("/docs/").get_data(as_text=True)
    assert "http://" not in page.replace("http://localhost", "")
    assert "https://" not in page
    assert "//cdn" not in page


@pytest.mark.parametrize("asset", ASSETS)
def test_docs_assets_are_served_by_petsage(client: FlaskClient, asset: str) -> None:
    with client.get(f"/docs/{asset}") as response:
        assert response.status_code == 200
        assert len(response.data) > 100


def test_docs_can_be_switched_off(tmp_path: Path) -> None:
    app = create_app(
        {"TESTING": True, "DOCS": False, "DRAIN_FILE": str(tmp_path / "d")}
    )
    assert app.test_client().get("/docs/").status_code == 404


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_swagger_ui_renders_offline_in_chromium(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    server = start_gunicorn()
    origin = f"http://127.0.0.1:{server.port}"
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{origin}/docs/", timeout=30_000)
            page.wait_for_selector("text=Perform a system smoke test", timeout=30_000)
            page.screenshot(path=str(tmp_path / "docs.png"))
            title = page.locator(".info .title").inner_text()
            operations = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert title.startswith("PetSage Backend API")
    assert "/api/v1/smoke-test" in [text.replace("\u200b", "") for text in operations]
    assert requested, "the browser made no request"
    elsewhere = [
        url
        for url in requested
        if urlsplit(url).netloc != urlsplit(origin).netloc
        and not url.startswith("data:")
    ]
    assert elsewhere == []
    assert f"{origin}/openapi.json" in requested

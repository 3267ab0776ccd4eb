"""Swagger UI at /docs: served by PetSage alone, rendered and used in Chromium."""

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from petsage import create_app
from tests.support.gunicorn_process import GunicornFactory

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

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


@pytest.mark.parametrize(
    ("path", "location"),
    [("/docs", "/docs/"), ("/docs?deepLinking=true", "/docs/?deepLinking=true")],
)
def test_the_docs_redirect_answers_json(
    client: FlaskClient, path: str, location: str
) -> None:
    response = client.get(path)
    assert response.status_code == 308
    # Relative: the host and scheme a request names are not the client's behind a
    # proxy.
    assert response.headers["Location"] == location
    assert response.mimetype == "application/json"
    assert response.json == {
        "title": "Permanent Redirect",
        "status": 308,
        "detail": f"This resource is at {location}.",
        "location": location,
    }
    head = client.head(path)
    assert (head.status_code, head.headers["Location"], head.data) == (
        308,
        location,
        b"",
    )


@pytest.mark.slow
def test_every_redirect_over_http_is_json_to_this_host(
    start_gunicorn: GunicornFactory,
) -> None:
    server = start_gunicorn()
    for path, location in (
        ("/docs", "/docs/"),
        ("//docs", "/docs/"),
        ("/docs//", "/docs/"),
        ("/api//v1/smoke-test", "/api/v1/smoke-test"),
    ):
        response = server.request("GET", path, headers={"Host": "elsewhere.example"})
        assert response.status == 308, path
        assert response.headers["Location"] == location, path
        assert response.headers["Content-Type"] == "application/json", path
        assert json.loads(response.body)["location"] == location, path


def test_docs_can_be_switched_off(tmp_path: Path) -> None:
    app = create_app(
        {"TESTING": True, "DOCS": False, "DRAIN_FILE": str(tmp_path / "d")}
    )
    assert app.test_client().get("/docs/").status_code == 404


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
)


@contextmanager
def chromium_page(requested: list[str]) -> Iterator["Page"]:
    """A page in headless Chromium that notes the URL of every request it makes."""
    from playwright.sync_api import sync_playwright

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
            yield page
        finally:
            browser.close()


def requests_elsewhere(requested: list[str], origin: str) -> list[str]:
    """The requests that left ``origin``, data: URLs aside."""
    return [
        url
        for url in requested
        if urlsplit(url).netloc != urlsplit(origin).netloc
        and not url.startswith("data:")
    ]


@pytest.mark.slow
@needs_chromium
def test_swagger_ui_renders_offline_in_chromium(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    server = start_gunicorn()
    origin = f"http://127.0.0.1:{server.port}"
    requested: list[str] = []
    with chromium_page(requested) as page:
        page.goto(f"{origin}/docs/", timeout=30_000)
        page.wait_for_selector("text=Perform a system smoke test", timeout=30_000)
        page.screenshot(path=str(tmp_path / "docs.png"))
        title = page.locator(".info .title").inner_text()
        operations = page.locator(".opblock-summary-path").all_inner_texts()
    assert title.startswith("PetSage Backend API")
    assert "/api/v1/smoke-test" in [text.replace("\u200b", "") for text in operations]
    assert requested, "the browser made no request"
    assert requests_elsewhere(requested, origin) == []
    assert f"{origin}/openapi.json" in requested


@pytest.mark.slow
@needs_chromium
def test_swagger_ui_authorize_sends_the_token_and_shows_checks(
    start_gunicorn: GunicornFactory, tmp_path: Path
) -> None:
    server = start_gunicorn({"PETSAGE_HEALTH_TOKEN": "docs-token"})
    origin = f"http://127.0.0.1:{server.port}"
    requested: list[str] = []
    authorizations: list[str | None] = []

    def note_authorization(request: "Request") -> None:
        if urlsplit(request.url).path == "/health":
            authorizations.append(request.headers.get("authorization"))

    with chromium_page(requested) as page:
        page.on("request", note_authorization)
        page.goto(f"{origin}/docs/", timeout=30_000)
        page.click("button.authorize", timeout=30_000)
        # The health token's own form: a feature's writes add the API token's.
        scheme = page.locator(".modal-ux .auth-container", has_text="healthToken")
        scheme.locator("input").fill("docs-token")
        scheme.locator(".auth-btn-wrapper button.authorize").click()
        page.click(".modal-ux button.btn-done")
        operation = page.locator("#operations-Health-getHealth")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        body = operation.locator(".live-responses-table .response-col_description pre")
        body.first.wait_for(timeout=30_000)
        answer = body.first.inner_text()
        page.screenshot(path=str(tmp_path / "authorized.png"))
    assert authorizations == ["Bearer docs-token"]
    assert '"checks"' in answer
    assert '"process:uptime"' in answer
    assert requests_elsewhere(requested, origin) == []

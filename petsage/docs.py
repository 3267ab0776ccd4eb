"""Swagger UI at /docs, served entirely by PetSage from the flask-swagger-ui package.

Deployments may have no internet, so no page, script or style comes from a CDN.
/docs, without the slash, answers a 308 to /docs/ in JSON, as every routing redirect
does (``redirect_response`` in ``petsage.methods``).
"""

from flask import Flask
from flask_swagger_ui import get_swaggerui_blueprint

DOCS_PATH = "/docs"


def init_docs(app: Flask, openapi_url: str) -> None:
    """Serve Swagger UI at /docs, pointed at the OpenAPI document."""
    app.register_blueprint(
        get_swaggerui_blueprint(
            DOCS_PATH,
            openapi_url,
            config={
                "app_name": app.config["API_TITLE"],
                # Swagger UI would otherwise send the document to validator.swagger.io.
                "validatorUrl": None,
            },
            blueprint_name="docs",
        )
    )

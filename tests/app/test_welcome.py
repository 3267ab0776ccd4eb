"""GET /, the welcome message."""

from flask.testing import FlaskClient


def test_root_welcomes_the_caller(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.json == {"message": "Welcome to the PetSage API"}

"""deploy/Dockerfile as Docker reads it: the environment and command of the image."""

import json
from pathlib import Path

from dockerfile_parse import DockerfileParser

from tests.support.gunicorn_process import REPO_ROOT

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def image_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The variables the image's ENV instructions set."""
    return dict(DockerfileParser(path=str(dockerfile)).envs)


def image_instructions(instruction: str, dockerfile: Path = DOCKERFILE) -> list[str]:
    """The arguments of each of the image's ``instruction`` lines (COPY, RUN, ...)."""
    return [
        str(entry["value"])
        for entry in DockerfileParser(path=str(dockerfile)).structure
        if entry["instruction"] == instruction
    ]


def image_command(dockerfile: Path = DOCKERFILE) -> list[str]:
    """The image's CMD, which must be in exec (JSON array) form."""
    command = json.loads(DockerfileParser(path=str(dockerfile)).cmd)
    assert isinstance(command, list), "CMD must be a JSON array"
    return [str(argument) for argument in command]

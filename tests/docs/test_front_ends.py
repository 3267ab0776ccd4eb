"""The front ends page's run commands: the config files' own, and they load the files.

HAProxy's and nginx's own configuration checks (``haproxy -c``, ``nginx -t``) run the
page's commands with the check flag added and nginx's absolute paths moved into a
temporary directory; nothing listens.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, blocks
from tests.gunicorn_process import REPO_ROOT

PAGE = DOCS / "operators" / "front-ends.md"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
ENVSUBST = shutil.which("envsubst")


def page_block(program: str) -> list[str]:
    """The page's shell block that runs ``program``, command by command."""
    [block] = [
        block
        for block in blocks(PAGE)
        if block.language == "sh"
        and any(command.startswith(f"{program} ") for command in block.commands())
    ]
    return block.commands()


def config_comment_commands(path: Path) -> str:
    """The indented command lines in the comment at the top of a config file."""
    return "\n".join(
        line[len("#   ") :]
        for line in path.read_text().splitlines()
        if line.startswith("#   ") and not line.startswith("#    ")
    )


def test_the_haproxy_command_is_the_one_in_haproxy_cfg() -> None:
    block = [
        block
        for block in blocks(PAGE)
        if any(
            command.startswith("PETSAGE_HAPROXY_BIND") for command in block.commands()
        )
    ]
    assert [block.text for block in block] == [
        config_comment_commands(REPO_ROOT / "deploy" / "haproxy.cfg")
    ]


def test_the_nginx_commands_are_the_ones_in_nginx_conf() -> None:
    comment = config_comment_commands(REPO_ROOT / "deploy" / "nginx.conf")
    commands = page_block("nginx")
    for program in ("envsubst", "nginx"):
        [command] = [command for command in commands if command.startswith(program)]
        assert command in comment.splitlines(), command


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_the_haproxy_command_loads_deploy_haproxy_cfg() -> None:
    assert HAPROXY is not None
    [command] = [
        block.text.replace("haproxy -db ", f"{HAPROXY} -c ")
        for block in blocks(PAGE)
        if "haproxy -db " in block.text
    ]
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without its variables the same file fails to load: the check is real.
    without = subprocess.run(
        [HAPROXY, "-c", "-f", "deploy/haproxy.cfg"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={
            name: value for name, value in os.environ.items() if "PETSAGE" not in name
        },
    )
    assert without.returncode != 0


@pytest.mark.skipif(
    NGINX is None or ENVSUBST is None, reason="nginx or envsubst is not installed"
)
def test_the_nginx_commands_fill_in_and_load_deploy_nginx_conf(tmp_path: Path) -> None:
    (tmp_path / "deploy").symlink_to(REPO_ROOT / "deploy")
    script = "\n".join(page_block("nginx"))
    script = (
        script.replace("/etc/nginx/", f"{tmp_path}/etc/")
        .replace("/var/lib/petsage-nginx/", f"{tmp_path}/prefix/")
        .replace("\nnginx -p ", f"\n{NGINX} -t -p ")
    )
    assert f"{NGINX} -t -p " in script
    result = subprocess.run(
        ["bash", "-euc", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test is successful" in result.stderr
    rendered = (tmp_path / "etc" / "petsage.conf").read_text()
    assert "${" not in rendered
    assert "listen 0.0.0.0:8080" in rendered

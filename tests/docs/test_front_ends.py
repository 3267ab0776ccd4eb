"""The front ends page's run commands: the config files' own, and they load the files.

HAProxy's and nginx's own configuration checks (``haproxy -c``, ``nginx -t``) run the
page's commands with the check flag added and nginx's absolute paths moved into a
temporary directory; nothing listens.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, blocks
from tests.support.gunicorn_process import REPO_ROOT

pytestmark = pytest.mark.slow  # real processes: not in the fast tier

PAGE = DOCS / "operators" / "front-ends.md"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
ENVSUBST = shutil.which("envsubst")
NOBODY = 65534
# Runs a command as nobody, in no group of root's.
UNPRIVILEGED = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def page_blocks(program: str) -> list[list[str]]:
    """The page's shell blocks that run ``program``, command by command, in order."""
    return [
        block.commands()
        for block in blocks(PAGE)
        if block.language == "sh"
        and any(command.startswith(f"{program} ") for command in block.commands())
    ]


def nginx_blocks() -> tuple[list[str], list[str]]:
    """The page's nginx commands: as root (under /etc and /var/lib), as any user."""
    as_root, as_a_user = page_blocks("nginx")
    return as_root, as_a_user


def config_comment_commands(path: Path) -> str:
    """The indented command lines in the comment at the top of a config file."""
    return "\n".join(
        line[len("#   ") :]
        for line in path.read_text().splitlines()
        if line.startswith("#   ") and not line.startswith("#    ")
    )


@pytest.fixture
def open_directory() -> Iterator[Path]:
    """A new directory that every user may enter (pytest's tmp_path is root's alone),
    removed afterwards with all in it."""
    directory = Path(tempfile.mkdtemp(prefix="petsage-front-ends-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


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
    commands, _ = nginx_blocks()
    for program in ("envsubst", "nginx"):
        [command] = [command for command in commands if command.startswith(program)]
        assert command in comment.splitlines(), command


@pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy is not installed (Debian: apt-get install -y haproxy)",
)
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
    NGINX is None or ENVSUBST is None,
    reason="nginx or envsubst is not installed (Debian: apt-get install -y nginx"
    " gettext-base)",
)
def test_the_nginx_commands_fill_in_and_load_deploy_nginx_conf(tmp_path: Path) -> None:
    (tmp_path / "deploy").symlink_to(REPO_ROOT / "deploy")
    as_root, _ = nginx_blocks()
    script = "\n".join(as_root)
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


def test_the_nginx_commands_need_root_or_say_how_to_do_without() -> None:
    as_root, as_a_user = nginx_blocks()
    assert any("/etc/" in command for command in as_root)
    assert any("/var/lib/" in command for command in as_root)
    for command in as_a_user:
        assert "/etc/" not in command and "/var/" not in command, command
    text = PAGE.read_text()
    assert "envsubst`, GNU\ngettext's (Debian's package `gettext-base`" in text
    assert "(Debian: gettext-base)" in (REPO_ROOT / "deploy" / "nginx.conf").read_text()


@pytest.mark.skipif(
    NGINX is None or ENVSUBST is None,
    reason="nginx or envsubst is not installed (Debian: apt-get install -y nginx"
    " gettext-base)",
)
def test_the_nginx_commands_as_a_user_fill_in_and_load_in_a_temporary_prefix(
    open_directory: Path,
) -> None:
    """As the page's other user: as nobody when the test runs as root."""
    assert NGINX is not None
    # Where that user may read deploy/nginx.conf and make its temporary directory.
    work = open_directory / "work"
    (work / "deploy").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "nginx.conf", work / "deploy")
    temporary = open_directory / "tmp"
    temporary.mkdir()
    temporary.chmod(0o777)
    _, as_a_user = nginx_blocks()
    script = "\n".join(as_a_user).replace("\nnginx -p ", f"\n{NGINX} -t -p ")
    assert f"{NGINX} -t -p " in script
    user = [] if os.geteuid() else UNPRIVILEGED
    # nginx opens /dev/stdout (its access log) anew, which a user may do only on a
    # pipe of its own: the script's output goes through one.
    script = f"set -o pipefail\n{{\n{script}\n}} 2>&1 | cat"
    result = subprocess.run(
        [*user, "bash", "-euc", script],
        cwd=work,
        env={"PATH": os.environ["PATH"], "TMPDIR": str(temporary)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test is successful" in result.stdout
    [prefix] = temporary.iterdir()
    rendered = prefix / "petsage.conf"
    assert "${" not in rendered.read_text()
    assert rendered.stat().st_uid == (os.geteuid() or NOBODY)

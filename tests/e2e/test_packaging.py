"""The package as a user gets it: sdist contents, a compiled wheel that installs
into a fresh virtual environment without Cython and serves, and a pure build."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every Python module and type stub of the package, every plane's folder included.
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fastsocks").rglob("*.py*")
                 if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts)
# What the compiled wheel is built and checked with, even when this suite
# runs with the pure implementation selected.
COMPILED_ENV = {k: v for k, v in os.environ.items() if k != "FASTSOCKS_NO_EXTENSIONS"}


def _pip(*args: str, env: dict[str, str] | None = None, timeout: float = 400) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, check=True, env=env,
                   timeout=timeout, stdout=subprocess.DEVNULL)


def _docker_build_context(tmp: Path) -> Path:
    """What the Dockerfile's build stage copies, without what .dockerignore keeps out."""
    context = tmp / "context"
    context.mkdir()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and "--from" not in line and words[-1] in ("./", "./fastsocks"):
            for source in words[1:-1]:
                if source.startswith("deploy/"):
                    continue
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns(
                        "*.so", "*.c", "__pycache__"))
                else:
                    shutil.copy(ROOT / source, context / source)
    return context


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The compiled wheel is built from exactly what the Dockerfile's build stage
    # copies, which proves the image can be built from it.
    context = _docker_build_context(tmp_path_factory.mktemp("docker"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), "."],
                   cwd=context, check=True, env=COMPILED_ENV, timeout=400,
                   stdout=subprocess.DEVNULL)
    pure = out / "pure"
    env = dict(os.environ, FASTSOCKS_NO_EXTENSIONS="1")
    _pip("wheel", "--no-deps", "-w", str(pure), ".", env=env)
    return out


@pytest.mark.timeout(600)
def test_compiled_wheel_contents(dist: Path) -> None:
    (wheel,) = dist.glob("fastsocks-*.whl")
    assert "-py3-none-any" not in wheel.name, "the default build must be platform-specific"
    names = zipfile.ZipFile(wheel).namelist()
    modules = ("_codec", "_relay", "_tables") + (("_engine", "_datagram") if sys.platform == "linux" else ())
    for module in modules:
        assert any(n.startswith(f"fastsocks/{module}.") and n.endswith((".so", ".pyd")) for n in names), module
    assert "fastsocks/py.typed" in names
    assert [n for n in SOURCES if n not in names] == []
    assert not [n for n in names if n.endswith(".c") or n.startswith(("tests/", "build/"))]


@pytest.mark.timeout(600)
def test_pure_wheel_contents(dist: Path) -> None:
    (wheel,) = (dist / "pure").glob("fastsocks-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c"))]
    assert "fastsocks/runtime/cli.py" in SOURCES
    assert [n for n in SOURCES if n not in names] == []


@pytest.mark.timeout(600)
def test_sdist_has_cython_sources(tmp_path: Path) -> None:
    # python -m build: an isolated environment with the build requirements
    # of pyproject.toml, as a release build has.
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path)],
                   cwd=ROOT, check=True, timeout=300, capture_output=True)
    (sdist,) = tmp_path.glob("fastsocks-*.tar.gz")
    names = tarfile.open(sdist).getnames()
    for name in ("_codec.pyx", "_codec.pxd", "_relay.pyx", "_relay.pxd", "_tables.pyx", "_tables.pxd",
                 "py.typed"):
        assert any(n.endswith(f"/fastsocks/{name}") for n in names), name
    assert any(n.endswith("/setup.py") for n in names)
    assert any(n.endswith("/pyproject.toml") for n in names)


@pytest.mark.timeout(600)
def test_manylinux_wheel_installs_without_cython_and_serves(dist: Path, tmp_path: Path) -> None:
    """auditwheel repair → fresh venv (no compiler, no Cython) → curl through it."""
    (wheel,) = dist.glob("fastsocks-*.whl")
    repaired = tmp_path / "wheelhouse"
    subprocess.run([sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(wheel)],
                   check=True, timeout=120, capture_output=True)
    (manylinux,) = repaired.glob("fastsocks-*manylinux*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(manylinux)], check=True,
                   timeout=300, stdout=subprocess.DEVNULL)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, fastsocks; "
         "print(importlib.util.find_spec('Cython') is None, fastsocks.IMPLEMENTATION)"],
        check=True, timeout=60, capture_output=True, text=True, cwd=tmp_path, env=COMPILED_ENV,
    )
    assert probe.stdout.split() == ["True", "accelerated"]
    version = subprocess.run([str(env_dir / "bin" / "fastsocks"), "--version"], check=True,
                             timeout=60, capture_output=True, text=True, cwd=tmp_path,
                             env=COMPILED_ENV)
    assert "accelerated" in version.stdout and "uvloop" in version.stdout

    body = b"served through the installed wheel\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    proc = subprocess.Popen([str(env_dir / "bin" / "fastsocks"), "--listen", "127.0.0.1:0"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=COMPILED_ENV)
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(2)]  # the SSRF note, then the listener
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) .*accelerated", lines[-1])
        assert match, lines
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        out = subprocess.run(["curl", "-sS", "--max-time", "10", "--socks5-hostname",
                              f"127.0.0.1:{match.group(1)}", url],
                             check=True, timeout=30, capture_output=True)
        assert out.stdout == body
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stderr.close()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

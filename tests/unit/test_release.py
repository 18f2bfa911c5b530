"""One version, everywhere it shows: the package, `regcred --version`, the chart, the image tag
and the changelog all follow operator/regcred/__init__.py."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from regcred import __version__

REPO = Path(__file__).resolve().parents[2]


def test_the_version_lives_in_the_package_only():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "regcred.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_regcred_version_prints_it():
    result = subprocess.run([sys.executable, "-m", "regcred.cli", "--version"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == f"regcred {__version__}"


def test_the_chart_follows_it():
    chart = yaml.safe_load((REPO / "charts" / "regcred" / "Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__
    values = yaml.safe_load((REPO / "charts" / "regcred" / "values.yaml").read_text())
    assert values["image"]["tag"] == "", "the image tag defaults to appVersion"


def test_the_rendered_image_tag_is_it():
    deployment = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":{__version__}")


def test_the_changelog_has_this_release():
    changelog = (REPO / "CHANGELOG.md").read_text()
    [entry] = re.findall(rf"^## \[{re.escape(__version__)}\] - (\d{{4}}-\d{{2}}-\d{{2}})$", changelog, re.M)
    assert entry

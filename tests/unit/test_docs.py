"""The documentation points at things that exist: every link, file and test name in it.

Docs name tests as proofs (docs/guarantees.md) and files as places to look; a renamed test
or a moved file must fail here, not leave a promise pointing at nothing.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DOCUMENTS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "bench").rglob("README.md")]
)
# Short names the docs use for test modules (docs/guarantees.md says which is which).
MODULE_ALIASES = {
    "operator": TESTS / "integration" / "test_operator.py",
    "robustness": TESTS / "integration" / "test_robustness.py",
    "bad_input": TESTS / "integration" / "test_bad_input.py",
}
TOP_LEVEL = ("operator/", "tests/", "scripts/", "bench/", "manifests/", "crds/", "docs/", ".ci/")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
TEST_NAME = re.compile(r"\btest_[a-z0-9_]+\b(?!\.py)")
QUALIFIED = re.compile(r"([\w/.]+)::(test_[a-z0-9_]+)")


def _ids(document: Path) -> str:
    return str(document.relative_to(REPO))


def _text_outside_fences(document: Path) -> str:
    """The prose and inline code of a document; fenced blocks hold commands and YAML."""
    return re.sub(r"^```.*?^```", "", document.read_text(), flags=re.S | re.M)


@cache
def _tests_defined(module: Path | None = None) -> frozenset[str]:
    files = [module] if module else list(TESTS.rglob("test_*.py"))
    names = set()
    for path in files:
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), re.M))
    return frozenset(names)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(document: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", _text_outside_fences(document), re.M)
    return {_slug(heading) for heading in headings}


def _resolve(token: str) -> Path | None:
    """Where a file named in inline code lives, or None if the token names no file."""
    token = token.split("::")[0].split("[")[0].rstrip(",")
    if any(char in token for char in "<>*? ") or token.startswith(("-", "~", "$", "/")):
        return None
    if token.startswith(TOP_LEVEL):
        return REPO / token
    if token.startswith(("unit/", "integration/")):
        return TESTS / token
    if "/" not in token and re.fullmatch(r"[\w.-]+\.(py|txt|stacks)", token):
        return _somewhere(token)
    return None


@cache
def _somewhere(name: str) -> Path:
    """A bare file name (`plan.py`, a profile report) must name one file of the project."""
    places = [REPO / "operator", TESTS, REPO / "scripts", REPO / "bench"]
    found = [path for place in places for path in place.rglob(name)]
    return found[0] if found else REPO / name


@pytest.mark.parametrize("document", DOCUMENTS, ids=_ids)
def test_every_link_points_at_a_file_and_heading_that_exist(document: Path) -> None:
    broken = []
    for target in LINK.findall(_text_outside_fences(document)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=_ids)
def test_every_file_named_in_code_exists(document: Path) -> None:
    missing = []
    for token in CODE.findall(_text_outside_fences(document)):
        path = _resolve(token)
        if path is not None and not path.exists():
            missing.append(token)
    assert not missing, missing


@pytest.mark.parametrize("document", DOCUMENTS, ids=_ids)
def test_every_test_named_is_defined_where_it_is_said_to_be(document: Path) -> None:
    missing = []
    for code in CODE.findall(_text_outside_fences(document)):
        for module, name in QUALIFIED.findall(code):
            path = MODULE_ALIASES.get(module) or _resolve(module)
            if path is None or not path.exists() or name not in _tests_defined(path):
                missing.append(f"{module}::{name}")
        for name in TEST_NAME.findall(QUALIFIED.sub("", code)):
            if name not in _tests_defined():
                missing.append(name)
    assert not missing, missing


def test_the_checker_finds_what_is_broken(tmp_path: Path) -> None:
    """The rules above are not vacuous: a made-up test and a made-up file are caught."""
    assert "test_that_does_not_exist" not in _tests_defined()
    assert "test_every_link_points_at_a_file_and_heading_that_exist" in _tests_defined()
    for token, exists in (("operator/regcred/no_such_module.py", False), ("no_such_module.py", False),
                          ("caches.py", True)):
        path = _resolve(token)
        assert path is not None and path.exists() == exists, (token, path)
    assert _slug("Troubleshooting `ImagePullBackOff` / `ErrImagePull`") == \
        "troubleshooting-imagepullbackoff--errimagepull"


def test_the_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 150

"""Render manifests/ (the kustomize bundle) from the Helm chart, the single install source.

    python scripts/render_manifests.py          # write charts/regcred/crds/ and manifests/
    python scripts/render_manifests.py --check  # exit 1 and name the files that differ

The CRDs live in crds/ (the repository's fixed layout); they are copied byte for byte into the
chart's crds/ (Helm's convention) and into manifests/. Everything else in manifests/ is
`helm template` of the chart with its default values, plus `namespace.create=true`: a
kustomize bundle has no `--create-namespace`, so it carries the Namespace object itself.
manifests/examples/ is hand-written and left alone. Stdlib only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from regcred_dev import REPO
from regcred_dev.helm import HelmError, helm_binary

CHART = REPO / "charts" / "regcred"
CRDS = REPO / "crds"
MANIFESTS = REPO / "manifests"
RELEASE, NAMESPACE = "regcred", "regcred-system"
# The one value a kustomize bundle needs beyond the defaults (see the module docstring).
BUNDLE_VALUES = ("namespace.create=true",)
_SOURCE = re.compile(r"^---\n# Source: [^/\n]+/templates/([^\n]+)\n", re.M)


def _header(template: str) -> str:
    return (f"# Rendered from charts/regcred/templates/{template} by `make manifests`"
            " (scripts/render_manifests.py);\n# edit the chart, not this file.\n")


def helm_template(helm: Path, *extra: str) -> str:
    """`helm template` of the chart as the bundle's release; `extra` adds helm arguments."""
    command = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise HelmError(f"`helm template` failed: {result.stderr.strip()}")
    return result.stdout


def split_by_template(rendered: str) -> dict[str, list[str]]:
    """The documents of `helm template` output grouped by the template that made them,
    in Helm's install order (by kind)."""
    documents: dict[str, list[str]] = {}
    starts = list(_SOURCE.finditer(rendered))
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(rendered)
        text = rendered[match.end():end].strip("\n")
        if text.strip():
            documents.setdefault(match.group(1), []).append(text.rstrip() + "\n")
    return documents


def _kustomization(resources: list[str]) -> str:
    listed = "".join(f"  - {name}\n" for name in resources)
    return ("# kubectl apply -k manifests/   installs regcred into regcred-system.\n"
            "# Rendered by `make manifests` (scripts/render_manifests.py) from charts/regcred.\n"
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n{listed}")


def render(helm: Path) -> dict[Path, str]:
    """Every generated file (chart CRDs and manifests/) and the text it must have."""
    crds = {path.name: path.read_text() for path in sorted(CRDS.glob("*.yaml"))}
    files: dict[Path, str] = {CHART / "crds" / name: text for name, text in crds.items()}
    values = [arg for value in BUNDLE_VALUES for arg in ("--set", value)]
    templates = split_by_template(helm_template(helm, *values))
    resources: list[str] = []
    namespace = templates.pop("namespace.yaml", None)
    if namespace:  # first, so kustomize and kubectl create it before what lives in it
        files[MANIFESTS / "namespace.yaml"] = _header("namespace.yaml") + "---\n".join(namespace)
        resources.append("namespace.yaml")
    for name, text in crds.items():
        files[MANIFESTS / f"crd-{name}"] = text
        resources.append(f"crd-{name}")
    for template, documents in templates.items():
        files[MANIFESTS / template] = _header(template) + "---\n".join(documents)
        resources.append(template)
    files[MANIFESTS / "kustomization.yaml"] = _kustomization(resources)
    return files


def stale(files: dict[Path, str]) -> list[Path]:
    """Generated files that exist but would no longer be generated."""
    existing = {*MANIFESTS.glob("*.yaml"), *(CHART / "crds").glob("*.yaml")}
    return sorted(existing - set(files))


def differences(files: dict[Path, str]) -> list[str]:
    """Repository-relative paths whose content differs from `files`, or that are stale."""
    changed = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    return [str(path.relative_to(REPO)) for path in sorted(changed + stale(files))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything differs")
    args = parser.parse_args(argv)
    try:
        files = render(helm_binary())
    except HelmError as error:
        print(f"render_manifests: {error}", file=sys.stderr)
        return 2
    differing = differences(files)
    if args.check:
        for name in differing:
            print(f"differs from the chart: {name}")
        if differing:
            print("run `make manifests`", file=sys.stderr)
        return 1 if differing else 0
    for path in stale(files):
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for name in differing:
        print(f"wrote {name}")
    return 0

"""The doctor's report: findings and image rows, as the `-o json` document and as the table
(both pure; regcred/doctor/command.py prints them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from regcred.core.keyring import AuthsEntry

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # ERROR or WARNING, as the code's entry in the rules' CODES says
    namespace: str
    pod: str
    container: str
    image: str
    message: str
    evidence: tuple[str, ...] = ()
    fix: str = ""
    commands: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageReport:
    namespace: str
    pod: str
    container: str
    container_kind: str
    image: str
    registry: str
    repository: str
    tag: str
    digest: str
    pull_policy: str  # the effective one
    default_pull_policy: str  # what the API server fills in for this image when none is given
    pull_secret: AuthsEntry | None
    pull_secret_credential: str  # the CR whose copy it is, "" if not a regcred copy
    candidates: tuple[AuthsEntry, ...]
    state: str


@dataclass(frozen=True)
class Report:
    images: tuple[ImageReport, ...]
    findings: tuple[Finding, ...]
    pods: int

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def failed(self, fail_on: str = WARNING) -> bool:
        """Exit status 1 or 0: any error, or with `fail_on="warning"` any warning too."""
        severities = {ERROR} if fail_on == ERROR else {ERROR, WARNING}
        return any(f.severity in severities for f in self.findings)


# --- serialisation ------------------------------------------------------------------------

SCHEMA_VERSION = "regcred.dev/doctor/v1"


def report_json(report: Report, scope: Mapping[str, Any]) -> dict[str, Any]:
    """The `-o json` document (docs/doctor.md documents every field)."""
    return {
        "apiVersion": SCHEMA_VERSION,
        "kind": "DoctorReport",
        "scope": dict(scope),
        "summary": {
            "pods": report.pods, "images": len(report.images),
            "errors": report.count(ERROR), "warnings": report.count(WARNING),
            "healthy": not report.findings,
        },
        "images": [
            {
                "namespace": i.namespace, "pod": i.pod, "container": i.container,
                "containerType": i.container_kind, "image": i.image, "registry": i.registry,
                "repository": i.repository, "tag": i.tag, "digest": i.digest,
                "pullPolicy": i.pull_policy, "defaultPullPolicy": i.default_pull_policy,
                "pullSecret": _entry_json(i.pull_secret, i.pull_secret_credential),
                "candidates": [_entry_json(c, "") for c in i.candidates],
                "state": i.state,
            }
            for i in report.images
        ],
        "findings": [
            {
                "code": f.code, "severity": f.severity, "namespace": f.namespace, "pod": f.pod,
                "container": f.container, "image": f.image, "message": f.message,
                "evidence": list(f.evidence), "fix": f.fix, "commands": list(f.commands),
            }
            for f in report.findings
        ],
    }


def _entry_json(entry: AuthsEntry | None, credential: str) -> dict[str, str] | None:
    if entry is None:
        return None
    out = {"secret": entry.secret, "key": entry.key}
    if credential:
        out["credential"] = credential
    return out


# --- the table ------------------------------------------------------------------------------

_COLOURS = {ERROR: "\033[31m", WARNING: "\033[33m", "ok": "\033[32m"}
_RESET = "\033[0m"


def render_table(report: Report, *, colour: bool) -> str:
    """One row per container image, then each finding with its evidence and fix."""
    def paint(text: str, what: str) -> str:
        return f"{_COLOURS[what]}{text}{_RESET}" if colour else text

    by_container: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in report.findings:
        by_container.setdefault((finding.namespace, finding.pod, finding.container), []).append(finding)
    header = ("NAMESPACE", "POD", "CONTAINER", "REGISTRY", "POLICY", "PULL SECRET", "STATE", "FINDINGS")
    rows, severities = [], []
    for image in report.images:
        secret = f"{image.pull_secret.secret} ({image.pull_secret.key})" if image.pull_secret else "-"
        found = (by_container.get((image.namespace, image.pod, ""), [])
                 + by_container.get((image.namespace, image.pod, image.container), []))
        rows.append((image.namespace, image.pod, image.container, image.registry,
                     image.pull_policy, secret,
                     image.state, ",".join(dict.fromkeys(f.code for f in found)) or "ok"))
        severities.append(_worst(found))
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    for row, severity in zip(rows, severities, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        cells[-1] = paint(cells[-1], severity or "ok")
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no pods)")
    for finding in report.findings:
        lines.append("")
        mark = paint(f"{finding.severity.upper()} {finding.code}", finding.severity)
        where = f"[{finding.container}] {finding.image}" if finding.container else "[pod]"
        lines.append(f"{mark}  {finding.namespace}/{finding.pod} {where}")
        lines.append(f"  {finding.message}")
        lines.extend(f"  - {line}" for line in finding.evidence if line)
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
        lines.extend(f"    $ {command}" if not command.startswith("#") else f"    {command}"
                     for command in finding.commands)
    errors, warnings = report.count(ERROR), report.count(WARNING)
    summary = f"{report.pods} pods, {len(report.images)} images: {errors} errors, {warnings} warnings"
    lines.extend(["", paint(summary, ERROR if errors else WARNING if warnings else "ok")])
    return "\n".join(lines) + "\n"


def _worst(findings: Iterable[Finding]) -> str | None:
    severities = {f.severity for f in findings}
    return ERROR if ERROR in severities else WARNING if WARNING in severities else None

"""Image references as the kubelet reads them, and the pull policy the API server defaults.

Mirrors `parsers.ParseImageName` (github.com/distribution/reference `ParseNormalizedNamed`)
and `SetDefaults_Container` from k8s.io/kubernetes; tests/unit/data/kubelet_rules.json,
generated from that code, checks that they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from regcred.core.errors import InvalidInput

DOCKER_HUB_DOMAIN = "docker.io"
_LEGACY_DOCKER_HUB_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_NAME_MAX = 255

ALWAYS, IF_NOT_PRESENT, NEVER = "Always", "IfNotPresent", "Never"
PULL_POLICIES = (ALWAYS, IF_NOT_PRESENT, NEVER)

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class ImageRef:
    """A parsed image: `repository` is what the kubelet looks credentials up with
    (`docker.io/library/busybox`), `registry` its host[:port]."""

    image: str
    registry: str
    repository: str
    tag: str
    digest: str


def parse_image(image: str) -> ImageRef:
    """Parse like the kubelet; raises `InvalidInput("InvalidImageName", ...)` where it fails."""
    if _IDENTIFIER.fullmatch(image):
        raise _invalid(image, "a 64-character hex string is an image ID, not a reference")
    domain, remainder = _split_domain(image)
    remote_name = remainder.split(":", 1)[0]
    if remote_name.lower() != remote_name:
        raise _invalid(image, "the repository name must be lowercase")
    match = _REFERENCE.fullmatch(f"{domain}/{remainder}")
    if match is None:
        raise _invalid(image, "it is not [registry/]repository[:tag][@digest]")
    name, tag, digest = match["name"], match["tag"] or "", match["digest"] or ""
    if len(name) > _NAME_MAX:
        raise _invalid(image, f"the name is over {_NAME_MAX} characters")
    if digest:
        algorithm, hex_part = digest.split(":", 1)
        if _DIGEST_HEX_LENGTHS.get(algorithm) != len(hex_part) or hex_part.lower() != hex_part:
            raise _invalid(image, f"the digest is not a valid {algorithm} digest")
    if not tag and not digest:
        tag = "latest"
    return ImageRef(image=image, registry=domain, repository=name, tag=tag, digest=digest)


def default_pull_policy(image: ImageRef) -> str:
    """What the API server fills in when a container gives none: `Always` for `:latest`
    (or no tag and no digest), else `IfNotPresent`."""
    return ALWAYS if image.tag == "latest" else IF_NOT_PRESENT


def _split_domain(name: str) -> tuple[str, str]:
    """distribution/reference's splitDockerDomain: the first component is a registry only if
    it has a '.' or ':', is `localhost`, or has upper-case letters."""
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"
                     and first.lower() == first):
        domain, remainder = DOCKER_HUB_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == _LEGACY_DOCKER_HUB_DOMAIN:
        domain = DOCKER_HUB_DOMAIN
    if domain == DOCKER_HUB_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def _invalid(image: str, why: str) -> InvalidInput:
    return InvalidInput("InvalidImageName", f"image {image!r} cannot be parsed: {why}")

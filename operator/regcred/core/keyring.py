"""Which `auths` entry of a Pod's pull secrets the kubelet uses for an image.

A port of k8s.io/kubernetes/pkg/credentialprovider (BasicDockerKeyring.Add and Lookup,
URLsMatch, isDefaultRegistryMatch) as the kubelet calls it: a keyring built from the Pod's
pull secrets in order, looked up with the repository parsed from the image. The rules:
the scheme is stripped, `/v1/` or `/v2/` after the host means the host alone, host labels
are matched one by one with shell globs (`*.example.com` is one label deep), the port must
be the same (no port matches no port only), the key's path must be a prefix of the
repository's, more specific keys come first, and Docker Hub images fall back to the
`index.docker.io` key (what `https://index.docker.io/v1/` becomes). Checked against the
kubelet's own code by tests/unit/test_doctor_kubelet_rules.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

_DEFAULT_REGISTRY_HOST = "index.docker.io"
# Characters Go's net/url accepts unescaped in a host (shouldEscape with encodeHost, which
# only judges ASCII bytes); since Go 1.25.2 square brackets only as an IPv6 literal at the start.
_HOST_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:<>\"\u0080-\U0010ffff]*")
# In a host, %-escapes may only encode non-ASCII bytes, or be %25.
_HOST_ESCAPE = re.compile(r"%(?:[89A-Fa-f][0-9A-Fa-f]|25)")
_PORT = re.compile(r":[0-9]*")


@dataclass(frozen=True)
class AuthsEntry:
    """One `auths` key of one pull secret; `key` is as written in the Secret."""

    secret: str
    key: str


@dataclass(frozen=True)
class _Url:
    host: str
    path: str


class BadUrl(ValueError):
    """A key or image Go's url.Parse refuses (the kubelet skips such a key)."""


def normalized_key(key: str) -> str | None:
    """The keyring index key the kubelet files `key` under, or None if it skips it."""
    repository = key if key.startswith(("https://", "http://")) else "https://" + key
    try:
        parsed = _parse_url(repository)
    except BadUrl:
        return None
    path = parsed.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return parsed.host + path if path and path != "/" else parsed.host


def lookup(entries: Sequence[AuthsEntry], repository: str) -> list[AuthsEntry]:
    """The entries the kubelet would try for `repository` (as `parse_image` gives it), in its
    order; empty when none applies and the pull goes anonymous."""
    creds: dict[str, list[AuthsEntry]] = {}
    for entry in entries:
        key = normalized_key(entry.key)
        if key is not None:
            creds.setdefault(key, []).append(entry)
    found = [entry for key in sorted(creds, reverse=True) if urls_match(key, repository)
             for entry in creds[key]]
    if found:
        return found
    if is_default_registry_match(repository):
        return list(creds.get(_DEFAULT_REGISTRY_HOST, ()))
    return []


def urls_match(glob: str, target: str) -> bool:
    """URLsMatchStr: does the keyring key `glob` cover `target` (both without scheme)?"""
    try:
        glob_url, target_url = _parse_url("https://" + glob), _parse_url("https://" + target)
    except BadUrl:
        return False
    glob_labels, glob_port = _split_host(glob_url.host)
    target_labels, target_port = _split_host(target_url.host)
    if glob_port != target_port or len(glob_labels) != len(target_labels):
        return False
    if not target_url.path.startswith(glob_url.path):
        return False
    try:
        return all(glob_match(pattern, label) for pattern, label in zip(glob_labels, target_labels,
                                                                        strict=True))
    except BadPattern:
        return False


def is_default_registry_match(image: str) -> bool:
    """Would `image` pull from Docker Hub, judged from its name alone."""
    first, slash, _ = image.partition("/")
    if not first:
        return False
    if not slash or first in ("docker.io", "index.docker.io"):
        return True
    return "." not in first and ":" not in first


# --- Go's net/url and path/filepath, as far as the keyring uses them -----------------------


def _parse_url(raw: str) -> _Url:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise BadUrl("control character")
    raw = raw.split("#", 1)[0]
    _scheme, sep, rest = raw.partition("://")
    if not sep:
        raise BadUrl("no scheme")
    rest = rest.split("?", 1)[0]
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    _check_host(host)
    if "%" in host:
        try:
            host = unquote(host, errors="strict")
        except UnicodeDecodeError:
            raise BadUrl("bad escape in host") from None
    if "%" in path:
        try:
            path = unquote(path, errors="strict")
        except UnicodeDecodeError:
            raise BadUrl("bad escape") from None
        if re.search(r"%(?![0-9A-Fa-f]{2})", rest.partition("/")[2]):
            raise BadUrl("bad escape")
    return _Url(host=host, path=slash + path)


def _check_host(host: str) -> None:
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not _PORT.fullmatch(host[end + 1:] or ":"):
            raise BadUrl("bad IPv6 host")
        return
    colon = host.rfind(":")
    if colon >= 0 and not _PORT.fullmatch(host[colon:]):
        raise BadUrl("bad port")
    if not _HOST_CHARS.fullmatch(_HOST_ESCAPE.sub("", host)):
        raise BadUrl("invalid character in host")


def _split_host(host: str) -> tuple[list[str], str]:
    """SplitURL: the host's dot-separated labels and its port (net.SplitHostPort rules)."""
    try:
        name, port = _split_host_port(host)
    except BadUrl:
        name, port = host, ""
    return name.split("."), port


def _split_host_port(host: str) -> tuple[str, str]:
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or not host[end + 1:].startswith(":"):
            raise BadUrl("missing port")
        return host[1:end], host[end + 2:]
    if host.count(":") != 1:
        raise BadUrl("missing port" if ":" not in host else "too many colons")
    name, _, port = host.partition(":")
    return name, port


class BadPattern(ValueError):
    """filepath.ErrBadPattern."""


def glob_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match on one host label: `*`, `?`, `[...]` with `^` negation, `\\` escapes."""
    return re.fullmatch(_glob_regex(pattern), name, re.S) is not None


def _glob_regex(pattern: str) -> str:
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            if index >= len(pattern):
                raise BadPattern(pattern)
            out.append(re.escape(pattern[index]))
            index += 1
        elif char == "[":
            regex, index = _glob_class(pattern, index)
            out.append(regex)
        else:
            out.append(re.escape(char))
    return "".join(out)


def _glob_class(pattern: str, index: int) -> tuple[str, int]:
    negated = index < len(pattern) and pattern[index] == "^"
    index += negated
    ranges: list[str] = []
    while True:
        if index < len(pattern) and pattern[index] == "]" and ranges:
            index += 1
            break
        low, index = _class_char(pattern, index)
        high = low
        if index < len(pattern) and pattern[index] == "-":
            high, index = _class_char(pattern, index + 1)
            if high < low:
                raise BadPattern(pattern)
        ranges.append(f"{re.escape(low)}-{re.escape(high)}")
    body = "".join(ranges)
    return (f"[^/{body}]" if negated else f"[{body}]"), index


def _class_char(pattern: str, index: int) -> tuple[str, int]:
    if index >= len(pattern) or pattern[index] in "-]":
        raise BadPattern(pattern)
    if pattern[index] == "\\":
        index += 1
        if index >= len(pattern):
            raise BadPattern(pattern)
    return pattern[index], index + 1

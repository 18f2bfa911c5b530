"""Source Secret shapes, their refusals, and that no secret material leaks (`regcred.core.source`)."""

from __future__ import annotations

import base64
import hashlib
import json
import traceback
from typing import Any

import pytest

from regcred.core.errors import InvalidInput
from regcred.core.source import (
    DOCKER_HUB_KEY,
    MAX_VALUE_BYTES,
    RenderedConfig,
    SourceSecret,
    go_json,
    registry_key,
    render,
)
from support.builders import PASSWORD, b64, basic_source, make_spec, raw_source

USERNAME = "robot$ci"
AUTH = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
ENTRY = {"username": USERNAME, "password": PASSWORD, "auth": AUTH}


def decoded(config: RenderedConfig) -> dict[str, Any]:
    document = json.loads(base64.b64decode(config.encoded))
    assert isinstance(document, dict)
    return document


def dockerconfig(auths: dict[str, Any], **extra) -> SourceSecret:
    content = json.dumps({"auths": auths, **extra})
    return raw_source("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(content)})


# --- basic-auth and Opaque ------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["kubernetes.io/basic-auth", "Opaque"])
def test_username_password_one_server(type_):
    config = render(make_spec(), basic_source(USERNAME, PASSWORD, type=type_, resource_version="81234"))
    assert decoded(config) == {"auths": {"harbor.example.com": ENTRY}}
    assert config.source_resource_version == "81234"
    content = base64.b64decode(config.encoded)
    assert config.digest == hashlib.sha256(content).hexdigest()
    # compact, Go-style field order: username, password, (email), auth
    assert list(decoded(config)["auths"]["harbor.example.com"]) == ["username", "password", "auth"]
    assert b" " not in content


def test_extra_keys_in_basic_auth_source_are_ignored():
    config = render(make_spec(), basic_source(USERNAME, PASSWORD, note=b64("hello")))
    assert decoded(config) == {"auths": {"harbor.example.com": ENTRY}}


def test_email_is_included_between_password_and_auth():
    config = render(make_spec(email="ops@example.com"), basic_source(USERNAME, PASSWORD))
    entry = decoded(config)["auths"]["harbor.example.com"]
    assert list(entry.items()) == [
        ("username", USERNAME), ("password", PASSWORD), ("email", "ops@example.com"), ("auth", AUTH),
    ]


def test_several_servers_get_the_same_entry_sorted_by_key():
    servers = ("zot.example.com", "harbor.example.com:8443/team", "ghcr.io")
    config = render(make_spec(servers=servers), basic_source(USERNAME, PASSWORD))
    auths = decoded(config)["auths"]
    assert list(auths) == sorted(servers)
    assert all(entry == ENTRY for entry in auths.values())


@pytest.mark.parametrize(
    "server", ["docker.io", "index.docker.io", "registry-1.docker.io", "docker.io/library"]
)
def test_docker_hub_spellings_become_the_docker_login_key(server):
    config = render(make_spec(servers=(server,)), basic_source(USERNAME, PASSWORD))
    assert decoded(config) == {"auths": {DOCKER_HUB_KEY: ENTRY}}


def test_two_docker_hub_spellings_yield_one_entry():
    config = render(make_spec(servers=("docker.io", "index.docker.io", "ghcr.io")), basic_source())
    assert list(decoded(config)["auths"]) == ["ghcr.io", DOCKER_HUB_KEY]


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ("harbor.example.com", "harbor.example.com"),
        ("harbor.example.com:8443/a/b", "harbor.example.com:8443/a/b"),
        ("https://harbor.example.com/", "harbor.example.com"),
        ("http://harbor.example.com", "harbor.example.com"),
        ("https://index.docker.io/v1/", DOCKER_HUB_KEY),
        ("docker.io", DOCKER_HUB_KEY),
        ("mydocker.io", "mydocker.io"),
    ],
)
def test_registry_key(server, key):
    assert registry_key(server) == key


def test_rendering_is_deterministic_and_follows_rotation():
    spec = make_spec(servers=("b.io", "a.io"))
    first = render(spec, basic_source(USERNAME, PASSWORD))
    assert render(spec, basic_source(USERNAME, PASSWORD)) == first
    rotated = render(spec, basic_source(USERNAME, PASSWORD + "-2", resource_version="101"))
    assert rotated.digest != first.digest and rotated.encoded != first.encoded
    assert rotated.source_resource_version == "101"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<>&", '"\\u003c\\u003e\\u0026"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ('"\\', '"\\"\\\\"'),
        ("é密🔑", '"é密🔑"'),
        ("\t\n\r", '"\\t\\n\\r"'),
        ("\x01\x1f", '"\\u0001\\u001f"'),
    ],
)
def test_go_json_escaping(value, expected):
    assert go_json(value) == expected


# --- kubernetes.io/dockerconfigjson ---------------------------------------------------------

HARBOR = {"auth": b64(f"robot:{PASSWORD}")}
GHCR = {"username": "bot", "password": PASSWORD, "auth": b64(f"bot:{PASSWORD}")}
QUAY = {"auth": b64(f"q:{PASSWORD}"), "email": "q@example.com"}


def kubectl_entry(username: str, password: str, email: str | None = None) -> dict[str, Any]:
    """What `kubectl create secret docker-registry` writes for these credentials."""
    entry = {"username": username, "password": password}
    if email:
        entry["email"] = email
    entry["auth"] = b64(f"{username}:{password}")
    return entry


def test_dockerconfigjson_filtered_to_registries_and_written_as_kubectl_does():
    source = dockerconfig(
        {"quay.io": QUAY, "harbor.example.com": HARBOR, "ghcr.io": GHCR}, credsStore="desktop"
    )
    config = render(make_spec(servers=("harbor.example.com", "quay.io")), source)
    # each entry written anew from what the kubelet reads in it; credsStore is not copied
    assert decoded(config) == {"auths": {"harbor.example.com": kubectl_entry("robot", PASSWORD),
                                         "quay.io": kubectl_entry("q", PASSWORD, "q@example.com")}}
    assert list(decoded(config)["auths"]) == ["harbor.example.com", "quay.io"]


def test_dockerconfigjson_entry_with_username_and_password_only():
    entry = {"username": "bot", "password": PASSWORD}
    config = render(make_spec(servers=("ghcr.io",)), dockerconfig({"ghcr.io": entry}))
    assert decoded(config) == {"auths": {"ghcr.io": kubectl_entry("bot", PASSWORD)}}


def test_dockerconfigjson_fields_in_another_case_are_read_as_the_kubelet_reads_them():
    entry = {"Username": "bot", "PASSWORD": PASSWORD, "unknown": [1, {"x": None}]}
    config = render(make_spec(servers=("ghcr.io",)), dockerconfig({"ghcr.io": entry}))
    assert decoded(config) == {"auths": {"ghcr.io": kubectl_entry("bot", PASSWORD)}}


@pytest.mark.parametrize(
    ("source_key", "server"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("docker.io", "index.docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://harbor.example.com/", "harbor.example.com"),
        ("https://harbor.example.com:8443/team", "harbor.example.com:8443/team"),
        # found by the property tests: a trailing '/' after a path names the same repositories
        ("https://quay.io/org/", "quay.io/org"),
        # ... and a Docker Hub alias is written under docker login's key, which the kubelet uses
        ("registry-1.docker.io", "index.docker.io"),
    ],
)
def test_dockerconfigjson_registries_match_aliases(source_key, server):
    source = dockerconfig({source_key: HARBOR, "ghcr.io": GHCR})
    config = render(make_spec(servers=(server,)), source)
    # the matching entry is written under the key the server gets (docker login's for Docker Hub)
    assert decoded(config) == {"auths": {registry_key(server): kubectl_entry("robot", PASSWORD)}}


def test_dockerconfigjson_rendered_compact_and_escaped_like_go():
    entry = {"auth": b64("a:b"), "email": "a<b>&c@example.com"}
    config = render(make_spec(servers=("h.io",)), dockerconfig({"h.io": entry}))
    content = base64.b64decode(config.encoded).decode()
    assert content == go_json({"auths": {"h.io": kubectl_entry("a", "b", "a<b>&c@example.com")}})
    assert "\\u003c" in content and "<" not in content


# --- refusals -------------------------------------------------------------------------------

BASIC = "kubernetes.io/basic-auth"
DCJ = "kubernetes.io/dockerconfigjson"
TOO_BIG = PASSWORD * (MAX_VALUE_BYTES // len(PASSWORD) + 1)

ERRORS = {
    "tls type": (
        raw_source("kubernetes.io/tls", {"tls.crt": b64(PASSWORD), "tls.key": b64(PASSWORD)}),
        "UnsupportedSourceType", ["'kubernetes.io/tls'", BASIC, "Opaque", DCJ, "username", "password"]),
    "dockercfg type": (
        raw_source("kubernetes.io/dockercfg", {".dockercfg": b64(json.dumps({"h.io": HARBOR}))}),
        "UnsupportedSourceType", ["'kubernetes.io/dockercfg'", DCJ]),
    "service account token type": (
        raw_source("kubernetes.io/service-account-token", {"token": b64(PASSWORD)}),
        "UnsupportedSourceType", ["service-account-token"]),
    "lowercase opaque": (
        basic_source(password=PASSWORD, type="opaque"), "UnsupportedSourceType", ["'opaque'"]),
    "no username": (
        raw_source(BASIC, {"password": b64(PASSWORD)}),
        "MissingKey", ["'username'", "keys present: password"]),
    "no password": (
        raw_source("Opaque", {"username": b64("robot"), "token": b64(PASSWORD)}),
        "MissingKey", ["'password'", "keys present: token, username"]),
    "no keys at all": (raw_source(BASIC, {}), "MissingKey", ["'username'", "keys present: none"]),
    "password not base64": (
        raw_source(BASIC, {"username": b64("robot"), "password": PASSWORD}), "InvalidBase64", ["'password'"]),
    "password bad padding": (
        raw_source(BASIC, {"username": b64("robot"), "password": b64(PASSWORD)[:-1]}),
        "InvalidBase64", ["'password'"]),
    "password not utf-8": (
        raw_source(BASIC, {"username": b64("robot"), "password": b64(b"\xff\xfe" + PASSWORD.encode())}),
        "InvalidBase64", ["'password'", "UTF-8"]),
    "password non-ascii base64 text": (
        raw_source(BASIC, {"username": b64("robot"), "password": "é" + b64(PASSWORD)}),
        "InvalidBase64", ["'password'"]),
    "username not base64": (
        raw_source(BASIC, {"username": "robot!", "password": b64(PASSWORD)}),
        "InvalidBase64", ["'username'"]),
    "empty password": (
        raw_source(BASIC, {"username": b64("robot"), "password": ""}), "EmptyValue", ["'password'", "empty"]),
    "empty username": (
        raw_source(BASIC, {"username": "", "password": b64(PASSWORD)}), "EmptyValue", ["'username'"]),
    "username with colon": (
        basic_source("robot:" + PASSWORD, PASSWORD), "InvalidSource", ["username", "':'"]),
    "password too large": (
        raw_source(BASIC, {"username": b64("robot"), "password": b64(TOO_BIG)}),
        "SourceTooLarge", ["'password'", str(MAX_VALUE_BYTES)]),
    "dockerconfigjson too large": (
        dockerconfig({"harbor.example.com": {"auth": b64(f"robot:{TOO_BIG}")}}),
        "SourceTooLarge", ["'.dockerconfigjson'"]),
    "dockerconfigjson key missing": (
        raw_source(DCJ, {".dockercfg": b64(json.dumps({"auths": {"harbor.example.com": HARBOR}}))}),
        "MissingKey", ["'.dockerconfigjson'"]),
    "dockerconfigjson not base64": (
        raw_source(DCJ, {".dockerconfigjson": '{"auths": {}} ' + PASSWORD}), "InvalidBase64",
        ["'.dockerconfigjson'"]),
    "dockerconfigjson bad json": (
        raw_source(DCJ, {".dockerconfigjson": b64('{"auths": {"harbor.example.com": {"password": "'
                                                  + PASSWORD + '"')}),
        "InvalidJSON", [".dockerconfigjson", "not valid JSON"]),
    "dockerconfigjson no auths": (
        raw_source(DCJ, {".dockerconfigjson": b64(json.dumps({"harbor.example.com": HARBOR}))}),
        "InvalidJSON", [".dockerconfigjson", "'auths'"]),
    "dockerconfigjson is a list": (
        raw_source(DCJ, {".dockerconfigjson": b64(json.dumps([PASSWORD]))}), "InvalidJSON",
        ["an array, not an object"]),
    "dockerconfigjson auths is a list": (
        raw_source(DCJ, {".dockerconfigjson": b64(json.dumps({"auths": [HARBOR]}))}),
        "InvalidJSON", ["'auths'"]),
    "dockerconfigjson entry without credentials": (
        dockerconfig({"harbor.example.com": {"email": "a@b.c", "password": PASSWORD}}),
        "InvalidAuthsEntry", ["'harbor.example.com'", "no username"]),
    "dockerconfigjson entry not an object": (
        dockerconfig({"harbor.example.com": PASSWORD}), "InvalidAuthsEntry",
        ["'harbor.example.com'", "a string, not an object", "refuses the whole secret"]),
    "dockerconfigjson auth not base64": (
        dockerconfig({"harbor.example.com": {"auth": PASSWORD + "!"}}), "InvalidAuthsEntry",
        ["'harbor.example.com'", "'auth' is not base64"]),
    "dockerconfigjson auth disagrees with the password": (
        dockerconfig({"harbor.example.com": {"auth": b64("robot:one"), "username": "robot",
                                             "password": PASSWORD}}), "InvalidAuthsEntry",
        ["'harbor.example.com'", "'auth' and 'username' and 'password' name different"]),
    "dockerconfigjson not UTF-8": (
        raw_source(DCJ, {".dockerconfigjson": b64(json.dumps({"auths": {"harbor.example.com": {
            "username": "robot", "password": "PASSWORD"}}}).encode().replace(b"PASS", b"\xff"))}),
        "InvalidJSON", ["not UTF-8"]),
    "dockerconfigjson two entries for one registry disagree": (
        dockerconfig({"harbor.example.com": HARBOR, "https://harbor.example.com/v2/": GHCR}),
        "DuplicateRegistry", ["'harbor.example.com'", "'https://harbor.example.com/v2/'"]),
    "dockerconfigjson missing registry": (
        dockerconfig({"ghcr.io": GHCR}), "MissingRegistry", ["harbor.example.com"]),
}


@pytest.mark.parametrize(("source", "reason", "words"), ERRORS.values(), ids=ERRORS.keys())
def test_malformed_source_is_refused_without_leaking(source, reason, words):
    with pytest.raises(InvalidInput) as info:
        render(make_spec(servers=("harbor.example.com",)), source)
    error = info.value
    assert error.reason == reason
    assert str(error) == error.message
    assert "source secret regcred-system/harbor-robot" in error.message
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"
    # secret hygiene: neither the password nor any stored value shows anywhere
    shown = "\n".join(
        [str(error), error.message, repr(error), repr(error.args), repr(source),
         *traceback.format_exception(error)]
    )
    assert PASSWORD not in shown
    for value in source.data.values():
        assert not value or value not in shown
    assert error.__cause__ is None


def test_missing_registry_names_every_missing_server():
    spec = make_spec(servers=("harbor.example.com", "ghcr.io", "quay.io"))
    with pytest.raises(InvalidInput) as info:
        render(spec, dockerconfig({"ghcr.io": GHCR}))
    assert info.value.reason == "MissingRegistry"
    assert "harbor.example.com, quay.io" in info.value.message


def test_value_just_under_the_limit_is_accepted():
    password = "p" * (MAX_VALUE_BYTES - 1)
    config = render(make_spec(), basic_source("robot", password))
    assert decoded(config)["auths"]["harbor.example.com"]["password"] == password


# --- what repr shows ------------------------------------------------------------------------


def test_repr_of_rendered_config_and_source_hide_the_secret():
    source = basic_source(USERNAME, PASSWORD)
    config = render(make_spec(servers=("a.io", "b.io")), source)
    for text in (repr(config), str(config), repr(source), str(source)):
        assert config.encoded not in text
        assert config.digest not in text
        assert PASSWORD not in text
        assert b64(PASSWORD) not in text
    assert "source_resource_version='100'" in repr(config)

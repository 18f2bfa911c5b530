"""Property tests: for any source Secret of a supported shape, the render either refuses with a
typed reason, or the kubelet's reading of the rendered copy gives, for each `spec.registries`
server, exactly the credentials the source holds for it.

The kubelet's reading is `regcred.core.pullsecret.kubelet_read`, held equal to the kubelet's
own code on the corpus of tests/unit/test_kubelet_configs.py, and the keyring port
(`regcred.core.keyring.lookup`, held equal by tests/unit/test_doctor_kubelet_rules.py).
Failing examples Hypothesis found are kept below as `@example`s.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from regcred.core.errors import InvalidInput
from regcred.core.images import parse_image
from regcred.core.keyring import AuthsEntry, lookup
from regcred.core.pullsecret import DOCKER_HUB_KEY, kubelet_read, server_key
from regcred.core.source import MAX_VALUE_BYTES, SourceSecret, render
from support.builders import make_spec, raw_source

# Every refusal the render may give: the condition reasons of docs/user-guide.md.
REASONS = {"MissingKey", "InvalidBase64", "EmptyValue", "InvalidSource", "SourceTooLarge",
           "InvalidJSON", "InvalidAuthsEntry", "DuplicateRegistry", "MissingRegistry"}

SERVERS = ["harbor.example.com", "harbor.example.com:8443", "harbor.example.com/team", "ghcr.io",
           "docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io",
           "127.0.0.1:5000", "quay.io/org"]
# auths keys: the servers' spellings, and others the kubelet files under the same registry
KEYS = [*SERVERS, "https://harbor.example.com", "https://harbor.example.com/v2/",
        "http://ghcr.io/", "https://quay.io/v1/org", "Harbor.example.com", "harbor example.com",
        "harbor.example.com:abc"]
FIELDS = ["username", "password", "auth", "email", "identitytoken", "registrytoken"]

texts = st.text(st.characters(codec="utf-8"), max_size=12)
usable = st.text(st.characters(codec="utf-8", exclude_characters=":"), min_size=1, max_size=12)
credential_texts = st.one_of(usable, texts, st.sampled_from(["robot", "s3cret", "a:b", ":", "", " ", "é",
                                                             "\x00", "\ud800", "robot$ci"]))
servers = st.lists(st.sampled_from(SERVERS), min_size=1, max_size=3, unique=True).map(tuple)


def image_for(server: str) -> str:
    key = server_key(server)
    assert key is not None
    return "docker.io/library/app:1" if key == DOCKER_HUB_KEY else f"{key}/app:1"


def assert_the_kubelet_reads(content: bytes, spec_servers: tuple[str, ...],
                             expected: dict[str, tuple[bytes, bytes]]) -> None:
    """The copy parses, regcred itself would accept it, and for each server the first
    credential the kubelet tries is the expected one."""
    reading = kubelet_read(content)
    assert reading.error is None and reading.problem is None
    assert all(e.problem is None for e in reading.entries.values())
    entries = [AuthsEntry("copy", key) for key in reading.entries]
    for server in spec_servers:
        found = lookup(entries, parse_image(image_for(server)).repository)
        assert found, server
        entry = reading.entries[found[0].key]
        assert (entry.username, entry.password) == expected[server], server


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def encode(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


# --- username/password sources ---------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(
    username=st.one_of(credential_texts, st.binary(max_size=8)),
    password=st.one_of(credential_texts, st.binary(max_size=8)),
    secret_type=st.sampled_from(["kubernetes.io/basic-auth", "Opaque"]),
    spec_servers=servers,
    email=st.one_of(st.none(), texts),
)
@example(username="robot", password="s3cret", secret_type="Opaque", spec_servers=("docker.io",), email=None)
def test_username_password_sources(username: str | bytes, password: str | bytes, secret_type: str,
                                   spec_servers: tuple[str, ...], email: str | None) -> None:
    source = raw_source(secret_type, {"username": b64(encode(username)), "password": b64(encode(password))})
    try:
        config = render(make_spec(servers=spec_servers, email=email or None), source)
    except InvalidInput as refusal:
        assert refusal.reason in REASONS
        event(f"refused: {refusal.reason}")
        return
    event("accepted")
    expected = (encode(username), encode(password))
    assert_the_kubelet_reads(base64.b64decode(config.encoded), spec_servers,
                             dict.fromkeys(spec_servers, expected))


# --- dockerconfigjson sources ----------------------------------------------------------------


def agreeing(name: str, truth: tuple[str, str]) -> str:
    username, password = truth
    return {"username": username, "password": password, "email": "ops@example.com",
            "auth": b64(f"{username}:{password}".encode("utf-8", "surrogatepass"))}.get(name, "tok")


# Entry shapes people write: kubectl's, docker login's, hand-made ones, and broken ones.
SHAPES = [("username", "password", "email", "auth"), ("username", "password", "auth"), ("auth",),
          ("username", "password"), ("auth", "email"), ("identitytoken",), ("email",), ()]
ODD_VALUES: list[Any] = [None, 1, True, [], {}, "", "not base64!", b64(b"nocolon"), "cm9ib3Q6cHc", "\ud800"]


@st.composite
def entry_pairs(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """An auths entry as (field spelling, value) pairs: a shape filled with agreeing values,
    then a few edits (another spelling, another value, a repeated or an extra field)."""
    truth = (draw(st.one_of(usable, credential_texts)), draw(st.one_of(usable, credential_texts)))
    shape = draw(st.sampled_from(SHAPES[:4] * 3 + SHAPES))
    pairs: list[tuple[str, Any]] = [(name, agreeing(name, truth)) for name in shape]
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 1, 2]))):
        at = draw(st.integers(0, len(pairs)))
        name = draw(st.sampled_from(FIELDS))
        edit = draw(st.sampled_from(["spelling", "value", "odd", "extra"]))
        if edit == "spelling" and at < len(pairs):
            old = pairs[at][0]
            pairs[at] = (draw(st.sampled_from([old.upper(), old.capitalize(), old.replace("s", "\u017f")])),
                         pairs[at][1])
        elif edit == "value" and at < len(pairs):
            pairs[at] = (pairs[at][0], draw(credential_texts))
        elif edit == "odd" and at < len(pairs):
            pairs[at] = (pairs[at][0], draw(st.sampled_from(ODD_VALUES)))
        else:
            pairs.insert(at, (name, draw(st.one_of(st.just(agreeing(name, truth)), credential_texts))))
    return pairs


def dumps_pairs(pairs: list[tuple[str, Any]], ensure_ascii: bool) -> str:
    """A JSON object with repeats kept (json.dumps of a dict cannot repeat a key)."""
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ensure_ascii)}:"
                          f"{v if isinstance(v, RawJSON) else json.dumps(v, ensure_ascii=ensure_ascii)}"
                          for k, v in pairs) + "}"


class RawJSON(str):
    """Already serialized."""


@st.composite
def dockerconfig_sources(draw: st.DrawFn, spec_servers: tuple[str, ...]) -> tuple[SourceSecret, bytes]:
    """A dockerconfigjson source for `spec_servers`: mostly an entry for each under some
    spelling of its key, plus other entries, then now and then a damaged byte."""
    ascii_only = draw(st.booleans())
    keys = [draw(st.sampled_from([server] * len(KEYS) + KEYS)) for server in spec_servers]
    keys += draw(st.lists(st.sampled_from(KEYS), max_size=2))
    auths = []
    for key in keys:
        if draw(st.sampled_from([True] * 9 + [False])):
            entry: Any = RawJSON(dumps_pairs(draw(entry_pairs()), ascii_only))
        else:
            entry = draw(st.sampled_from([None, "robot:s3cret", [], 0]))
        auths.append((key, entry))
    top: list[tuple[str, Any]] = [(draw(st.sampled_from(["auths", "auths", "Auths", "auth\u017f"])),
            RawJSON(dumps_pairs(auths, ascii_only)))]
    if draw(st.booleans()):
        top.append((draw(st.sampled_from(["credsStore", "HttpHeaders"])),
                    draw(st.sampled_from([{"User-Agent": "x"}, {"X": 1}, "desktop", None]))))
    content = dumps_pairs(top, ascii_only).encode("utf-8", "surrogatepass")
    if draw(st.sampled_from([False] * 15 + [True])):  # a byte of damage somewhere
        at = draw(st.integers(0, len(content)))
        damage = draw(st.sampled_from([b"\xff", b",", b"\\", b"\"", b"}", b"\n"]))
        content = content[:at] + damage + content[at:]
    return dcj_source(content)


def dcj_source(content: bytes) -> tuple[SourceSecret, bytes]:
    return raw_source("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b64(content)}), content


@settings(max_examples=2000, deadline=None)
@given(case=servers.flatmap(lambda spec_servers: st.tuples(st.just(spec_servers),
                                                           dockerconfig_sources(spec_servers))))
# Found by Hypothesis: a source's `registry-1.docker.io` entry was copied under that key, which
# the kubelet never uses for Docker Hub images (docker.io/...): pulls went anonymous.
@example(case=(("docker.io",), dcj_source(b'{"auths":{"registry-1.docker.io":{"auth":"MDow"}}}')))
def test_dockerconfigjson_sources(case: tuple[tuple[str, ...], tuple[SourceSecret, bytes]]) -> None:
    spec_servers, (secret, content) = case
    try:
        config = render(make_spec(servers=spec_servers), secret)
    except InvalidInput as refusal:
        assert refusal.reason in REASONS
        event(f"refused: {refusal.reason}")
        return
    event("accepted")
    # Accepted: the kubelet reads the source without error, and the copy gives each server
    # exactly what the kubelet reads for it in the source.
    original = kubelet_read(content)
    assert original.error is None
    expected = {}
    for server in spec_servers:
        matching = [e for e in original.entries.values() if server_key(e.key) == server_key(server)]
        assert matching and len({(e.username, e.password) for e in matching}) == 1
        expected[server] = (matching[0].username, matching[0].password)
        assert expected[server][0] and expected[server][1] and b":" not in expected[server][0]
    assert_the_kubelet_reads(base64.b64decode(config.encoded), spec_servers, expected)


@settings(max_examples=300, deadline=None)
@given(spec_servers=servers, size=st.integers(MAX_VALUE_BYTES - 64, MAX_VALUE_BYTES + 64))
def test_size_limit(spec_servers: tuple[str, ...], size: int) -> None:
    password = "p" * size
    source = raw_source("Opaque", {"username": b64(b"robot"), "password": b64(password.encode())})
    try:
        config = render(make_spec(servers=spec_servers), source)
    except InvalidInput as refusal:
        assert refusal.reason == "SourceTooLarge" and size > MAX_VALUE_BYTES
        return
    assert_the_kubelet_reads(base64.b64decode(config.encoded), spec_servers,
                             dict.fromkeys(spec_servers, (b"robot", password.encode())))


def spellings(server: str) -> list[str]:
    """auths keys that name `server` as docker login or a person might write it."""
    if server_key(server) == DOCKER_HUB_KEY:
        return ["docker.io", "index.docker.io", DOCKER_HUB_KEY, "registry-1.docker.io"]
    found = [server, f"https://{server}", f"https://{server}/", f"http://{server}"]
    return found if "/" in server else [*found, f"https://{server}/v2/", f"https://{server}/v1/"]


@settings(max_examples=500, deadline=None)
@given(data=st.data(), spec_servers=servers.filter(
    lambda found: len({server_key(s) for s in found}) == len(found)))
def test_a_well_formed_dockerconfigjson_is_copied_with_what_it_holds(
        data: st.DataObject, spec_servers: tuple[str, ...]) -> None:
    """Sources that hold one definite credential per server (any field order, shape, key
    spelling, ASCII escaping) are accepted, and the kubelet reads exactly those credentials."""
    truths, auths = {}, {}
    for server in spec_servers:
        truth = (data.draw(usable), data.draw(usable))
        shape = data.draw(st.permutations(data.draw(st.sampled_from(SHAPES[:5]))))
        auths[data.draw(st.sampled_from(spellings(server)))] = {name: agreeing(name, truth) for name in shape}
        truths[server] = (truth[0].encode(), truth[1].encode())
    content = json.dumps({"auths": auths}, ensure_ascii=data.draw(st.booleans())).encode()
    config = render(make_spec(servers=spec_servers), dcj_source(content)[0])
    assert_the_kubelet_reads(base64.b64decode(config.encoded), spec_servers, truths)

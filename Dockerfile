# regcred operator image. The install steps are the README's (`pip install .`), split
# into a wheel build and a wheels-only install so no build tooling reaches the final stage.
# The wheel is the release's (`python -m build` makes the same one; test_install.py compares
# them), and its version comes from operator/regcred/__init__.py: no version is repeated here.
#
# BASE: Debian 12 slim, with Debian's python3 on top. `docker build .` uses the official
# debian:bookworm-slim; the test suite builds the same Dockerfile daemonless with a base
# made locally from the same Debian packages (scripts/image.py, docs/image.md).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 \
        ca-certificates=20250419~deb12u2 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/regcred
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/regcred/bin/pip wheel --no-cache-dir --wheel-dir /wheels . \
    && /opt/regcred/bin/pip install --no-cache-dir --no-index --find-links /wheels /wheels/regcred-*.whl \
    && /opt/regcred/bin/pip uninstall --yes pip setuptools

FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/regcred/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/regcred /opt/regcred
# A passwd entry for 65532: kopf names its peering identity after the user (getpass).
RUN groupadd --system --gid 65532 regcred \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin regcred
USER 65532:65532
EXPOSE 8080 9090 9443
ENTRYPOINT ["regcred", "run"]

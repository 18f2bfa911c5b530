# regcred operator image. The install steps are the README's (`pip install .`), split
# into a wheel build and a wheels-only install so no build tooling reaches the final stage.
# The wheel is the release's (`python -m build` makes the same one; test_install.py compares
# them), and its version comes from operator/regcred/__init__.py: no version is repeated here.
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/regcred-*.whl \
    && rm -rf /wheels
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["regcred", "run"]

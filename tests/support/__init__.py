"""What unit and integration tests share: builders of CRs and API objects (`builders`), fakes
at the API boundary (`fakes`), a loopback HTTPS registry (`registry`), polling with a
deadline (`wait`), stopping a started process for sure (`processes`), leak checks (`leaks`)
and the `helm` fixture (`helm`).

`tests/` and `scripts/` are on the path through pytest's `pythonpath` (pyproject.toml), and
tests/conftest.py registers this package for assertion rewriting, so a failed assert in a
helper shows its values as one in a test does.
"""

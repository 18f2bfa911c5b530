"""What every test gets: tests/support's helpers with pytest's assertion rewriting (a failed
assert in a helper shows its values), and its fixtures."""

import pytest

pytest.register_assert_rewrite("support")  # before anything imports it

pytest_plugins = ["support.helm"]

"""One object for equal values in the caches' entries (pure: the result equals the input).

The caches hold an entry for every namespace, ServiceAccount and copy in the cluster: at
20,000 namespaces and 3 CRs, 100,000 of them. Each is parsed from its own JSON, so the same
namespace name, Secret name, credential, digest or entry list is a separate object in each;
sharing them takes about a third off an entry (docs/performance.md, "Memory per object").
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Hashable
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def text(value: str) -> str:
    """The one copy of `value` (interned)."""
    return sys.intern(value)


@functools.lru_cache(maxsize=4096)
def shared(value: T) -> T:
    """The first object seen equal to `value` (tuples and frozensets of names: a few
    distinct ones, each in thousands of entries)."""
    return value

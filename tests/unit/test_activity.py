"""A standalone replica is active from its start and looks at every namespace once."""

import threading

from regcred.sync.activity import Activity


def test_standalone_replica_looks_at_every_namespace_once_at_start() -> None:
    resumed: list[bool] = []
    activity = Activity(None, 0, on_resumed=lambda: resumed.append(True))
    assert activity()
    activity.start(kube=None, stop=threading.Event())
    assert resumed == [True]


def test_peered_replica_starts_paused() -> None:
    activity = Activity("regcred", 0, on_resumed=lambda: None)
    assert not activity()

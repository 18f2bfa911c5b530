"""Keeping the copies and ServiceAccount entries in sync: kopf handlers, the controller and
its work queue, the reconciler, the executor that carries out its plans, the watch caches
and the ledger behind the status."""

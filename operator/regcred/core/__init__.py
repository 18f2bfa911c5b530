"""The pure core: every decision regcred makes, with no I/O, so it tests without a cluster."""

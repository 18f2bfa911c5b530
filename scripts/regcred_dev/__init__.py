"""regcred's development environment: the real parts the tests, the demo and the benchmarks
run regcred against (control plane, node, registry, image, helm), as a package.

`process` (processes and run dirs), `build` (Go binaries), `pki` (the run's CA) and the
components on top of them: `controlplane` (with `cpconfig`, its command lines), `node` (with
`nodeconfig`, its config files, and `teardown`, what a node run leaves on the host and how
it is taken back), `podnet`, `registry`, `images`, `image`, `helm`, `incluster`,
`token_issuer`. `cpconfig` and `nodeconfig` are pure. The command lines are the thin scripts
beside this package (`python scripts/node.py up`). Stdlib only, except `registry` (bcrypt,
a test dependency).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

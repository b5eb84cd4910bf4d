"""Public-key infrastructure shared by managers and workers.

- `ca`: the cluster root CA, join tokens, CSRs, certificate signing and reading.
- `identity`: a node's key, certificate and CA on disk, and the channels they make.
- `join`: joining a cluster (CA pinning by the token's digest) and renewal.

It imports neither shoal.manager nor shoal.worker: both sides import it.
"""

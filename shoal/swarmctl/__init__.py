"""swarmctl: the command-line client of a Shoal cluster's control API."""

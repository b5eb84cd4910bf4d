"""Test beds shared by the tests and the demo: netns hosts, a cluster on them,
a private containerd, a local OCI registry and a tiny busybox image."""

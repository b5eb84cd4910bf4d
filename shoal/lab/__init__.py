"""shoal-lab: a multi-host Shoal cluster on one Linux machine. Hosts are network
namespaces on a private underlay; each worker host has its own containerd; a local
registry serves a tiny busybox image. The tests and benchmarks build on the same parts."""

"""The manager: control API, store, leader-only reconcilers, embedded etcd."""

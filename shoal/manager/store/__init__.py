"""The object store on etcd and its watch-fed in-memory cache."""

from shoal.manager.store.cache import Cache, Subscription
from shoal.manager.store.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    NotLeader,
    StoreError,
    Unavailable,
)
from shoal.manager.store.etcd import (
    EtcdAuth,
    EtcdConnection,
    EtcdTLS,
    client_config,
    parse_endpoints,
)
from shoal.manager.store.kinds import Keys, Kind, Object, kind_of, name_of
from shoal.manager.store.store import Create, Delete, Fence, Op, Store, Update
from shoal.manager.store.watch import Change, Changes, ObjectWatcher, Resync

__all__ = [
    "AlreadyExists",
    "Cache",
    "Change",
    "Changes",
    "Conflict",
    "Create",
    "Delete",
    "EtcdAuth",
    "EtcdConnection",
    "EtcdTLS",
    "Fence",
    "Keys",
    "Kind",
    "NotFound",
    "NotLeader",
    "Object",
    "ObjectWatcher",
    "Op",
    "Resync",
    "Store",
    "StoreError",
    "Subscription",
    "Unavailable",
    "Update",
    "client_config",
    "kind_of",
    "name_of",
    "parse_endpoints",
]

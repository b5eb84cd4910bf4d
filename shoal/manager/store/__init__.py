"""The object store on etcd and its watch-fed in-memory cache."""

from shoal.manager.store.cache import Cache, Subscription
from shoal.manager.store.errors import (
    AlreadyExists,
    Compacted,
    Conflict,
    LeaseExpired,
    NotFound,
    NotLeader,
    Refused,
    Removed,
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
from shoal.manager.store.store import KeyClaim, Store, chunks
from shoal.manager.store.txn import Create, Delete, Fence, Op, Update
from shoal.manager.store.watch import Change, Changes, ObjectWatcher, Resync

__all__ = [
    "AlreadyExists",
    "Cache",
    "Change",
    "Changes",
    "Compacted",
    "Conflict",
    "Create",
    "Delete",
    "EtcdAuth",
    "EtcdConnection",
    "EtcdTLS",
    "Fence",
    "KeyClaim",
    "Keys",
    "Kind",
    "LeaseExpired",
    "NotFound",
    "NotLeader",
    "Object",
    "ObjectWatcher",
    "Op",
    "Refused",
    "Removed",
    "Resync",
    "Store",
    "StoreError",
    "Subscription",
    "Unavailable",
    "Update",
    "chunks",
    "client_config",
    "kind_of",
    "name_of",
    "parse_endpoints",
]

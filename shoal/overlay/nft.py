"""nftables through libnftables, one context per network namespace.

A context's netlink socket lives in the namespace it was created in, so a
context made once (in a thread that entered the namespace) programs that
namespace from any thread afterwards. Making a context costs ~15 ms, running
a script on it well under 1 ms: one per namespace, kept for its life. A
script runs as one transaction: all of it applies, or none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

from shoal.overlay import netns


class NftError(Exception):
    pass


def _load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_lib = _load()


def available() -> bool:
    return _lib is not None


def fresh_chains(table: str, chains: dict[str, str]) -> list[str]:
    """Script lines that make the table and its base chains (name -> "type ... hook ...
    priority N") if missing, then empty the chains: what follows refills them, all in
    one transaction, without re-registering hooks (which costs far more)."""
    lines = [f"table ip {table} {{"]
    lines += [f"  chain {name} {{ {spec}; policy accept; }}" for name, spec in chains.items()]
    lines.append("}")
    lines += [f"flush chain ip {table} {name}" for name in chains]
    return lines


class Nft:
    """An nftables context bound to one network namespace (None: this process's)."""

    def __init__(self, netns_path: str | None = None) -> None:
        if _lib is None:
            raise NftError("libnftables is not installed (apt-get install nftables)")
        lib = _lib

        def make() -> int:
            if netns_path is not None:
                fd = os.open(netns_path, os.O_RDONLY)
                try:
                    netns.enter(fd)
                finally:
                    os.close(fd)
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise NftError("nft_ctx_new failed")
            lib.nft_ctx_buffer_error(ctx)
            lib.nft_ctx_buffer_output(ctx)
            return int(ctx)

        self._ctx: int | None = netns.in_thread(make) if netns_path else make()
        self._lock = threading.Lock()

    def run(self, script: str) -> str:
        """Runs a script as one transaction; returns nft's output, raises NftError."""
        assert _lib is not None
        with self._lock:
            if self._ctx is None:
                raise NftError("the nftables context is closed")
            rc = _lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            err = (_lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            out = (_lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed ({rc})")
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None and _lib is not None:
                _lib.nft_ctx_free(self._ctx)
            self._ctx = None

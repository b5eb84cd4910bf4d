"""Secret, config and key-rotation RPCs (the logic is in manager/secrets.py)."""

from __future__ import annotations

from typing import Any

from shoal.manager import secrets
from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.store import AlreadyExists, Kind
from shoal.proto import control_pb2 as api


class SecretRPCs(ControlBase):
    # ------------------------------------------------------------ shared

    async def _create(self, kind: Kind, request: api.CreateSecretRequest) -> api.SecretResponse:
        await self.cache.sync()
        keys = await secrets.require_keys(self.keys).follow()
        if self.cache.id_by_name(kind, request.annotations.name):
            raise AlreadyExists(f"{secrets.word(kind)} {request.annotations.name!r} already exists")
        ops = secrets.new_object(kind, request.annotations, request.data, keys)
        await self.store.batch(ops)
        return secrets.info(self.cache, kind, ops[0].obj)  # type: ignore[arg-type]

    async def _update(self, kind: Kind, request: api.UpdateSecretRequest) -> api.SecretResponse:
        await self.cache.sync()
        keys = await secrets.require_keys(self.keys).follow()
        current = self.resolve(kind, request.ref)
        ops, rolled = secrets.update_ops(self.cache, kind, current, request.data, keys)
        revision = await self.store.batch(ops)
        await self.cache.wait_for(revision)
        return secrets.info(self.cache, kind, ops[0].obj, rolled)  # type: ignore[arg-type]

    async def _get(self, kind: Kind, request: api.SecretRefRequest) -> api.SecretResponse:
        await self.cache.sync()
        return secrets.info(self.cache, kind, self.resolve(kind, request.ref))

    async def _remove(self, kind: Kind, request: api.SecretRefRequest) -> api.SecretResponse:
        await self.cache.sync()
        obj = self.resolve(kind, request.ref)
        try:
            ops = secrets.remove_ops(self.cache, kind, obj)
        except secrets.InUse as err:
            raise Precondition(str(err)) from None
        await self.store.batch(ops)
        return secrets.info(self.cache, kind, obj)

    def _list(self, kind: Kind) -> list[Any]:
        return sorted(self.cache.list_objects(kind), key=lambda o: o.spec.annotations.name)

    # ------------------------------------------------------------ secrets

    @rpc
    async def CreateSecret(
        self, request: api.CreateSecretRequest, context: Any
    ) -> api.SecretResponse:
        return await self._create(Kind.SECRET, request)

    @rpc
    async def UpdateSecret(
        self, request: api.UpdateSecretRequest, context: Any
    ) -> api.SecretResponse:
        return await self._update(Kind.SECRET, request)

    @rpc
    async def GetSecret(self, request: api.SecretRefRequest, context: Any) -> api.SecretResponse:
        return await self._get(Kind.SECRET, request)

    @rpc
    async def RemoveSecret(self, request: api.SecretRefRequest, context: Any) -> api.SecretResponse:
        return await self._remove(Kind.SECRET, request)

    @rpc
    async def ListSecrets(
        self, request: api.ListSecretsRequest, context: Any
    ) -> api.ListSecretsResponse:
        await self.cache.sync()
        return api.ListSecretsResponse(secrets=self._list(Kind.SECRET))

    # ------------------------------------------------------------ configs

    @rpc
    async def CreateConfig(
        self, request: api.CreateSecretRequest, context: Any
    ) -> api.SecretResponse:
        return await self._create(Kind.CONFIG, request)

    @rpc
    async def UpdateConfig(
        self, request: api.UpdateSecretRequest, context: Any
    ) -> api.SecretResponse:
        return await self._update(Kind.CONFIG, request)

    @rpc
    async def GetConfig(self, request: api.SecretRefRequest, context: Any) -> api.SecretResponse:
        return await self._get(Kind.CONFIG, request)

    @rpc
    async def RemoveConfig(self, request: api.SecretRefRequest, context: Any) -> api.SecretResponse:
        return await self._remove(Kind.CONFIG, request)

    @rpc
    async def ListConfigs(
        self, request: api.ListSecretsRequest, context: Any
    ) -> api.ListSecretsResponse:
        await self.cache.sync()
        return api.ListSecretsResponse(configs=self._list(Kind.CONFIG))

    # ------------------------------------------------------------ key rotation

    @rpc
    async def RotateKey(self, request: api.RotateKeyRequest, context: Any) -> api.RotateKeyResponse:
        keys = secrets.require_keys(self.keys)
        kek_id, count = await keys.rotate()
        return api.RotateKeyResponse(kek_id=kek_id, rewrapped=count)

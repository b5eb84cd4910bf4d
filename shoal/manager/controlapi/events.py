"""The Events RPC (`swarmctl events`): the stream itself lives in shoal/manager/events.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from shoal.manager.controlapi.base import ControlBase
from shoal.manager.events import Journal, serve_events
from shoal.proto import control_pb2 as api


class EventRPCs(ControlBase):
    # Set by the manager once its cache runs (None: the RPC says it is unavailable).
    journal: Journal | None = None

    async def Events(
        self, request: api.EventsRequest, context: Any
    ) -> AsyncIterator[api.EventsResponse]:
        async for batch in serve_events(self.journal, request, context):
            yield batch

"""A list + watch of one cluster-scoped custom resource (an informer), for CoreDevices.

kopf 1.45 indexes objects in quadratic time before its first handler runs (2,000
devices start in 25 s, 5,000 in 533 s: docs/scale.md); this lists them in pages and
watches from the listing's resourceVersion, in one task on the controller's loop:

- the first listing fills ``index`` ((namespace, name) -> parsed object) and ``listed``
  is set once it is complete: the controller's first pass waits for it;
- each watch event updates ``index`` and then calls ``on_change(type, body)``, as kopf
  updated its index before calling the event handler;
- a watch the server ends (``timeout_s``) is opened again from the last version seen
  (bookmarks keep it fresh); a 410 Gone lists again and reports only what differs
  (``hedgerow.core.informer.plan_listing``); any other failure is retried from the same
  version after a capped, jittered backoff.

HTTP is aiohttp (kopf's own client) with the kubernetes client's configuration: the
same credentials as the controller's status writes. The decisions are the core's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from hedgerow.controller import kube
from hedgerow.core import backoff, base
from hedgerow.core import informer as informer_

logger = logging.getLogger(__name__)

_RETRY_BASE_S: Final = 0.5
_RETRY_CAP_S: Final = 30.0
PAGE: Final = 500  # objects per listing request (what client-go's informers ask for)


class _ExpiredError(Exception):
    """The server no longer has the version we asked from (410 Gone)."""


class _FailedError(Exception):
    """A list or watch that failed otherwise: retried after a backoff."""


class Informer:
    def __init__(self, plural: str, parse: Callable[[Mapping[str, Any]], Any],
                 on_change: Callable[[str | None, Mapping[str, Any]], None], *,
                 timeout_s: int = 300, page: int = PAGE) -> None:
        self.plural = plural
        self.parse = parse  # body -> object, or None when it cannot be read
        self.on_change = on_change
        self.timeout_s = timeout_s
        self.page = page
        self.index: dict[informer_.Key, Any] = {}
        self.versions: dict[informer_.Key, str] = {}  # what a re-list compares against
        self.resource_version: str | None = None  # where the next watch starts; None: list
        self.listed = asyncio.Event()  # the first listing is complete
        self.lists = 0  # listings completed (a re-list after a 410 counts)
        self.watches = 0  # watch requests opened
        self.expired = 0  # 410 Gone answers

    @property
    def _path(self) -> str:
        return f"/apis/{base.GROUP}/{base.VERSION}/{self.plural}"

    async def run(self) -> None:
        """List (unless a version to watch from is known), then watch, until cancelled."""
        failures = expired = 0  # in a row
        while True:
            try:
                endpoint = kube.endpoint()
                connector = aiohttp.TCPConnector(ssl=endpoint.ssl)
                async with aiohttp.ClientSession(endpoint.host, connector=connector,
                                                 headers=endpoint.headers) as session:
                    while True:
                        if self.resource_version is None:
                            await self._list(session)
                        await self._watch(session)
                        failures = expired = 0  # the server ended a watch that worked
            except _ExpiredError:
                self.expired += 1
                expired += 1
                self.resource_version = None
                logger.info("the watch of %s expired (410 Gone): listing again", self.plural)
                if expired > 1:  # expired again at once: never list in a tight loop
                    await asyncio.sleep(backoff.resolve_delay(
                        expired - 2, _RETRY_BASE_S, _RETRY_CAP_S, random.random))
            except Exception as exc:
                # The informer must outlive any failure (the server's, the network's, or a
                # consumer's): else the controller's view of the fleet silently freezes.
                if not isinstance(exc, (_FailedError, aiohttp.ClientError, TimeoutError,
                                        OSError, ValueError)):
                    logger.exception("the %s informer failed", self.plural)
                failures += 1
                delay = backoff.resolve_delay(failures - 1, _RETRY_BASE_S, _RETRY_CAP_S,
                                              random.random)
                logger.warning("%s of %s failed (%s): again in %.1f s",
                               "watch" if self.resource_version else "listing", self.plural,
                               exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _get(self, session: aiohttp.ClientSession, params: dict[str, str],
                   timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        response = await session.get(self._path, params=params, timeout=timeout)
        action = informer_.resolve_response(response.status)
        if action is None:
            return response
        text = (await response.text())[:200]
        response.release()
        if action is informer_.Action.RELIST:
            raise _ExpiredError(text)
        raise _FailedError(f"HTTP {response.status}: {text}")

    async def _list(self, session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        listed: dict[informer_.Key, tuple[str, Mapping[str, Any], Any]] = {}
        params = {"limit": str(self.page)}
        version = ""
        while True:
            response = await self._get(session, params, aiohttp.ClientTimeout(total=120))
            async with response:
                raw = await response.read()
            # Decoding and parsing a page of 500 objects takes a while: off the loop, so
            # the Lease and the reports are served meanwhile.
            page, version, more = await asyncio.to_thread(self._decode_page, raw)
            listed.update(page)
            if not more:
                break
            params = {"limit": str(self.page), "continue": more}
        events = informer_.plan_listing(
            self.versions, {key: v for key, (v, _, _) in listed.items()})
        for kind, key in events:
            if kind == informer_.DELETED:
                self._forget(key)
                self.on_change(kind, _stub(key))
            else:
                v, body, model = listed[key]
                self._keep(key, v, model)
                self.on_change(kind, body)
        self.resource_version = version
        self.lists += 1
        logger.info("listed %d %s in %.1f s (%d changes, resourceVersion %s)", len(listed),
                    self.plural, time.perf_counter() - started, len(events), version)
        self.listed.set()

    def _decode_page(self, raw: bytes) -> tuple[
            dict[informer_.Key, tuple[str, Mapping[str, Any], Any]], str, str]:
        doc = json.loads(raw)
        meta = doc.get("metadata") or {}
        page = {}
        for item in doc.get("items") or []:
            item.setdefault("apiVersion", doc.get("apiVersion"))
            item.setdefault("kind", str(doc.get("kind", "")).removesuffix("List"))
            page[informer_.key_of(item)] = (informer_.version_of(item), item,
                                            self.parse(item))
        return page, str(meta.get("resourceVersion") or ""), str(meta.get("continue") or "")

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        assert self.resource_version is not None
        params = {"watch": "1", "resourceVersion": self.resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(self.timeout_s)}
        # The server ends the watch after timeout_s; silence much longer than that is a
        # connection that died without a word.
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=self.timeout_s + 60)
        response = await self._get(session, params, timeout)
        self.watches += 1
        async with response:
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if line.strip():
                        self._on_event(json.loads(line))

    def _on_event(self, event: Mapping[str, Any]) -> None:
        action = informer_.resolve_event(event)
        obj: Mapping[str, Any] = event.get("object") or {}
        if action is informer_.Action.RELIST:
            raise _ExpiredError(str(obj.get("message", "")))
        if action is informer_.Action.RETRY:
            raise _FailedError(f"watch event {event.get('type')}: {obj.get('message', '')}")
        version = informer_.version_of(obj)
        if version:
            self.resource_version = version
        if action is informer_.Action.BOOKMARK:
            return
        key = informer_.key_of(obj)
        kind = str(event["type"])
        if kind == informer_.DELETED:
            self._forget(key)
        else:
            self._keep(key, version, self.parse(obj))
        self.on_change(kind, obj)

    def _keep(self, key: informer_.Key, version: str, model: Any) -> None:
        self.versions[key] = version
        if model is None:  # unreadable: not in the index (as a kopf index returning None)
            self.index.pop(key, None)
        else:
            self.index[key] = model

    def _forget(self, key: informer_.Key) -> None:
        self.versions.pop(key, None)
        self.index.pop(key, None)


def _stub(key: informer_.Key) -> dict[str, Any]:
    """The body of an object a re-list found gone: its last body is not kept (10,000
    of them would double the memory); a deletion is told by its name."""
    return {"metadata": {"name": key[1], **({"namespace": key[0]} if key[0] else {})}}

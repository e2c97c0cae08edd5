"""The zarr stores ``Store.zarr_store`` hands out: zarr's own store for the backend, wrapped so that
its failures are mira's errors and a transient one is retried like any other request.

Without it zarr's S3 access (``FsspecStore`` over s3fs) raises botocore's and aiohttp's
exceptions (``EndpointConnectionError``...) untranslated, and a network blip reads as bad data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from mira.errors import MiraError
from storage.errors import classify, retry_async


class TranslatingZarrStore(WrapperStore[Store]):
    """Every request to the wrapped zarr store has its errors translated (naming ``url``) and a
    transient failure retried. Listings are translated but not retried: a half-consumed listing
    cannot be replayed."""

    def __init__(self, store: Store, url: str) -> None:
        super().__init__(store)
        self.url = url

    def _with_store(self, store: Store) -> TranslatingZarrStore:
        return TranslatingZarrStore(store, self.url)

    def __reduce__(self) -> tuple[Any, ...]:
        return (TranslatingZarrStore, (self._store, self.url))

    def __repr__(self) -> str:
        return f"TranslatingZarrStore({self._store!r}, {self.url!r})"

    def _url(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await retry_async(
            lambda: self._store.get(key, prototype, byte_range), self._url(key)
        )

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        wanted = list(key_ranges)
        return await retry_async(
            lambda: self._store.get_partial_values(prototype, wanted), self.url
        )

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return await retry_async(lambda: self._store.exists(key), self._url(key))

    async def getsize(self, key: str) -> int:
        return await retry_async(lambda: self._store.getsize(key), self._url(key))

    async def set(self, key: str, value: Buffer) -> None:
        await retry_async(lambda: self._store.set(key, value), self._url(key))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await retry_async(lambda: self._store.set_if_not_exists(key, value), self._url(key))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def delete(self, key: str) -> None:
        await retry_async(lambda: self._store.delete(key), self._url(key))

    async def delete_dir(self, prefix: str) -> None:
        await retry_async(lambda: self._store.delete_dir(prefix), self._url(prefix))

    async def is_empty(self, prefix: str) -> bool:
        return await retry_async(lambda: self._store.is_empty(prefix), self._url(prefix))

    async def clear(self) -> None:
        await retry_async(self._store.clear, self.url)

    def list(self) -> AsyncIterator[str]:
        return self._translated(self._store.list(), self.url)

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._translated(self._store.list_prefix(prefix), self._url(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._translated(self._store.list_dir(prefix), self._url(prefix))

    @staticmethod
    async def _translated(keys: AsyncIterator[str], url: str) -> AsyncIterator[str]:
        try:
            async for key in keys:
                yield key
        except MiraError:
            raise
        except Exception as err:
            raise classify(err, url) from err

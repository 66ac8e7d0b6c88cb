"""The I/O of references (see ``_references``): listing and hashing their sources when they
are added, fetching them for a download. Imported when first used, in a worker thread: it
loads aiohttp and botocore."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiohttp
import anyio
import anyio.to_thread
import blake3
from botocore.exceptions import ClientError

from ._backends.fileio import temp_beside
from ._backends.s3_blobs import S3BlobStore
from ._domain.events import Entry
from ._errors import BackendUnavailableError, IntegrityError, InvalidInputError, NotFoundError
from ._names import check_entry_path
from ._references import derived_digest, is_checked, ref_uri
from ._transfer import _stale, hash_files, run_pool

_CHUNK = 4 << 20  # bytes read or hashed at a time


# -- adding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    """One object of a reference: its entry path, URI, size and ETag (None: not known)."""

    path: str
    uri: str
    size: int
    etag: str | None = None


async def reference_entries(uri: str, name: str | None, checksum: bool, limit: int) -> list[Entry]:
    """The entries of a checked ``uri`` (see ``_references.reference_entries``)."""
    prefix = check_entry_path(name.rstrip("/")) if name else ""
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        return await _file_entries(uri, prefix, checksum, limit)
    if scheme in ("http", "https"):
        return await _http_entries(uri, prefix, checksum)
    return await _s3_entries(uri, prefix, checksum, limit)


def _entry(found: _Found, digest: str | None, size: int | None) -> Entry:
    """The entry of ``found``: its content's digest and size, or (None) derived ones."""
    if digest is None:
        ref = found.uri if found.etag is None else f"{found.uri}\n{found.etag}"
        return Entry(found.path, derived_digest(ref), found.size, ref)
    return Entry(found.path, digest, found.size if size is None else size, found.uri)


def _join(prefix: str, rest: str) -> str:
    return check_entry_path(f"{prefix}/{rest}" if prefix else rest)


def _named(prefix: str, uri: str, base: str) -> str:
    if not (prefix or base):
        raise InvalidInputError(f"{uri} names no file: pass name=")
    return check_entry_path(prefix or base)


def _too_many(uri: str, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"{uri} holds more than {limit} objects (max_objects); pass a larger max_objects, or "
        "reference a narrower directory or prefix"
    )


# file://


def _local_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise InvalidInputError(f"{uri} is not a local file URI: use file:///absolute/path")
    return unquote(parts.path)


def _file_uri(path: str) -> str:
    return "file://" + quote(path)


def _list_local(uri: str, prefix: str, limit: int) -> list[tuple[_Found, str]]:
    """The files of a file:// reference, with their local paths (blocking)."""
    path = _local_path(uri)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"cannot add reference {uri}: no such file or directory") from None
    except OSError as e:
        raise InvalidInputError(f"cannot add reference {uri}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode):
        found = _Found(_named(prefix, uri, os.path.basename(path)), _file_uri(path), st.st_size)
        return [(found, path)]
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"cannot add reference {uri}: not a regular file or directory")
    out: list[tuple[_Found, str]] = []
    for folder, dirs, files in os.walk(path):  # symlinked directories are not followed
        dirs.sort()
        for file in sorted(files):
            local = os.path.join(folder, file)
            try:
                st = os.stat(local)
            except OSError:
                continue  # a broken link
            if not stat.S_ISREG(st.st_mode):
                continue  # a FIFO, device ...: never read
            if len(out) >= limit:
                raise _too_many(uri, limit)
            rel = os.path.relpath(local, path).replace(os.sep, "/")
            out.append((_Found(_join(prefix, rel), _file_uri(local), st.st_size), local))
    if not out:
        raise NotFoundError(f"cannot add reference {uri}: the directory holds no file")
    return out


async def _file_entries(uri: str, prefix: str, checksum: bool, limit: int) -> list[Entry]:
    listed = await anyio.to_thread.run_sync(_list_local, uri, prefix, limit)
    if not checksum:
        return [_entry(found, None, None) for found, _ in listed]
    hashed = await hash_files([(found.path, local) for found, local in listed])
    return [_entry(f, e.digest, e.size) for (f, _), e in zip(listed, hashed, strict=True)]


# http(s)://


def _check_reply(reply: aiohttp.ClientResponse, uri: str) -> None:
    if reply.status == 404:
        raise NotFoundError(f"reference {uri}: the server answered 404 (not found)")
    if reply.status >= 400:
        raise BackendUnavailableError(f"reference {uri}: the server answered {reply.status}")


async def _http_entries(uri: str, prefix: str, checksum: bool) -> list[Entry]:
    name = _named(prefix, uri, os.path.basename(unquote(urlsplit(uri).path)))
    try:
        async with aiohttp.ClientSession() as session:
            method = session.get if checksum else session.head
            async with method(uri, allow_redirects=True) as reply:
                _check_reply(reply, uri)
                found = _Found(name, uri, reply.content_length or 0, reply.headers.get("ETag"))
                if not checksum:
                    return [_entry(found, None, None)]
                digest, size = await _hash_chunks(reply.content.iter_chunked(_CHUNK))
    except aiohttp.ClientError as e:
        raise BackendUnavailableError(f"cannot read reference {uri}: {e}") from None
    return [_entry(found, digest, size)]


async def _gathered(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """``chunks`` gathered into lists of about ``_CHUNK`` bytes (one thread hop each)."""
    batch: list[bytes] = []
    held = 0
    async for chunk in chunks:
        batch.append(chunk)
        held += len(chunk)
        if held >= _CHUNK:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


async def _hash_chunks(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    """BLAKE3 digest and size of a stream, hashed in worker threads."""
    hasher = blake3.blake3()
    size = 0
    async for batch in _gathered(chunks):
        size += await anyio.to_thread.run_sync(_update, hasher, batch)
    return hasher.hexdigest(), size


def _update(hasher: Any, batch: list[bytes]) -> int:
    for data in batch:
        hasher.update(data)
    return sum(map(len, batch))


# s3://


@dataclass(frozen=True)
class _S3Ref:
    bucket: str
    key: str
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> _S3Ref:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise InvalidInputError(f"{uri} names no bucket: use s3://BUCKET/KEY-OR-PREFIX")
        versions = parse_qs(parts.query).get("versionId")
        return cls(parts.netloc, unquote(parts.path).lstrip("/"), versions[0] if versions else None)

    def uri(self, key: str, version: str | None = None) -> str:
        tail = f"?versionId={quote(version, safe='')}" if version else ""
        return f"s3://{self.bucket}/{quote(key)}{tail}"


def _s3_store(bucket: str) -> S3BlobStore:
    """A client setup for ``bucket``, configured as the S3 blob store is (AWS variables)."""
    return S3BlobStore.from_url(f"s3://{bucket}")


def _s3_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


async def _s3_entries(uri: str, prefix: str, checksum: bool, limit: int) -> list[Entry]:
    where = _S3Ref.parse(uri)
    store = _s3_store(where.bucket)
    async with store.held(), store._use() as client:
        listed = await _s3_objects(store, client, where, uri, prefix, limit)
        if not checksum:
            return [_entry(found, None, None) for found, _ in listed]

        async def one(item: tuple[_Found, str]) -> Entry:
            found, key = item
            args = _s3_args(where.bucket, key, where.version if key == where.key else None)
            with store._errors("GetObject"):
                reply = await client.get_object(**args)
                async with reply["Body"] as body:
                    digest, size = await _hash_chunks(body.iter_chunks(_CHUNK))
            version = reply.get("VersionId")
            version = None if version in (None, "null") else version
            return _entry(_Found(found.path, where.uri(key, version), size), digest, size)

        results = await run_pool([[item] for item in listed], lambda b: one(b[0]), 8)
    return sorted(results, key=lambda e: e.path)


def _s3_args(bucket: str, key: str, version: str | None) -> dict[str, str]:
    args = {"Bucket": bucket, "Key": key}
    if version:
        args["VersionId"] = version
    return args


async def _s3_objects(
    store: S3BlobStore, client: Any, where: _S3Ref, uri: str, prefix: str, limit: int
) -> list[tuple[_Found, str]]:
    """The objects of an s3:// reference, with their keys: the object at the key, else the
    objects under the key as a prefix (``key/``)."""
    if where.key and not where.key.endswith("/"):
        try:
            store.requests["HeadObject"] += 1
            head = await client.head_object(**_s3_args(where.bucket, where.key, where.version))
        except ClientError as e:
            if _s3_code(e) not in ("404", "NoSuchKey", "NotFound"):
                raise store._client_error(e, None) from None
        else:
            name = _named(prefix, uri, where.key.rsplit("/", 1)[-1])
            found = _Found(name, where.uri(where.key, where.version), int(head["ContentLength"]))
            return [(_with_etag(found, head), where.key)]
    under = where.key if not where.key or where.key.endswith("/") else where.key + "/"
    out: list[tuple[_Found, str]] = []
    token: str | None = None
    while True:
        args: dict[str, Any] = {"Bucket": where.bucket, "Prefix": under, "MaxKeys": 1000}
        if token:
            args["ContinuationToken"] = token
        with store._errors("ListObjectsV2"):
            page = await client.list_objects_v2(**args)
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue  # a folder marker
            if len(out) >= limit:
                raise _too_many(uri, limit)
            found = _Found(_join(prefix, key[len(under) :]), where.uri(key), int(item["Size"]))
            out.append((_with_etag(found, item), key))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    if not out:
        raise NotFoundError(f"cannot add reference {uri}: no object at that key or under it")
    return out


def _with_etag(found: _Found, reply: dict[str, Any]) -> _Found:
    etag = reply.get("ETag")
    return found if not etag else _Found(found.path, found.uri, found.size, str(etag))


# -- downloading -------------------------------------------------------------------------------


async def fetch_references(entries: list[Entry], targets: list[str], concurrency: int) -> int:
    """See ``_references.fetch_references``."""
    pairs = list(zip(entries, targets, strict=True))
    sizes = {e.digest: e.size for e in entries if is_checked(e)}
    checked = [(e.digest, dest) for e, dest in pairs if is_checked(e)]
    stale = {dest for _, dest in await anyio.to_thread.run_sync(_stale, checked, sizes)}
    todo = [(e, dest) for e, dest in pairs if not is_checked(e) or dest in stale]

    async with contextlib.AsyncExitStack() as stack:
        buckets = _Buckets(stack)

        async def one(batch: list[tuple[Entry, str]]) -> int:
            entry, dest = batch[0]
            assert entry.ref is not None
            return await _fetch(entry, ref_uri(entry.ref), dest, buckets)

        done = await run_pool([[item] for item in todo], one, concurrency)
    return sum(done)


class _Buckets:
    """One S3 client per bucket for a whole download, held open until it ends."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack
        self._stores: dict[str, S3BlobStore] = {}

    async def store(self, bucket: str) -> S3BlobStore:
        store = self._stores.get(bucket)
        if store is None:
            store = self._stores[bucket] = _s3_store(bucket)
            await self._stack.enter_async_context(store.held())
        return store


async def _fetch(entry: Entry, uri: str, dest: str, buckets: _Buckets) -> int:
    sink = await anyio.to_thread.run_sync(_Sink, dest)
    try:
        scheme = urlsplit(uri).scheme
        if scheme == "file":
            await anyio.to_thread.run_sync(sink.copy_from, _local_path(uri), uri)
        elif scheme in ("http", "https"):
            await _fetch_http(uri, sink)
        else:
            await _fetch_s3(uri, sink, buckets)
        return await anyio.to_thread.run_sync(sink.finish, entry, uri)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sink.discard)
        raise


async def _fetch_http(uri: str, sink: _Sink) -> None:
    try:
        async with aiohttp.ClientSession() as session, session.get(uri) as reply:
            _check_reply(reply, uri)
            async for batch in _gathered(reply.content.iter_chunked(_CHUNK)):
                await anyio.to_thread.run_sync(sink.write, batch)
    except aiohttp.ClientError as e:
        raise BackendUnavailableError(f"cannot read reference {uri}: {e}") from None


async def _fetch_s3(uri: str, sink: _Sink, buckets: _Buckets) -> None:
    where = _S3Ref.parse(uri)
    store = await buckets.store(where.bucket)
    async with store._use() as client:
        try:
            store.requests["GetObject"] += 1
            reply = await client.get_object(**_s3_args(where.bucket, where.key, where.version))
        except ClientError as e:
            if _s3_code(e) in ("404", "NoSuchKey", "NoSuchVersion"):
                raise NotFoundError(f"reference {uri}: no such object (or version)") from None
            raise store._client_error(e, None) from None
        with store._errors("GetObject"):
            async with reply["Body"] as body:
                async for batch in _gathered(body.iter_chunks(_CHUNK)):
                    await anyio.to_thread.run_sync(sink.write, batch)


class _Sink:
    """A temporary file beside the destination that hashes what is written (blocking calls)."""

    def __init__(self, dest: str) -> None:
        self.dest, self.temp = dest, temp_beside(dest)
        self.hasher = blake3.blake3()
        self.size = 0
        self._file = open(self.temp, "xb")  # noqa: SIM115 (closed by finish or discard)

    def write(self, batch: list[bytes]) -> None:
        for data in batch:
            self._file.write(data)
            self.hasher.update(data)
            self.size += len(data)

    def copy_from(self, path: str, uri: str) -> None:
        try:
            with open(path, "rb") as source:
                for data in iter(lambda: source.read(_CHUNK), b""):
                    self.write([data])
        except FileNotFoundError:
            raise NotFoundError(f"reference {uri}: no such file") from None
        except OSError as e:
            raise InvalidInputError(f"cannot read reference {uri}: {e.strerror or e}") from None

    def finish(self, entry: Entry, uri: str) -> int:
        """Check the bytes (a checked entry) and rename the file into place."""
        self._file.close()
        got = self.hasher.hexdigest()
        if is_checked(entry) and (got, self.size) != (entry.digest, entry.size):
            raise IntegrityError(
                f"{entry.path}: the bytes at its reference {uri} changed since it was added "
                f"(BLAKE3 {got[:16]}..., {self.size} bytes; recorded {entry.digest[:16]}..., "
                f"{entry.size} bytes); add the reference again to log the new content"
            )
        os.replace(self.temp, self.dest)
        return self.size

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)

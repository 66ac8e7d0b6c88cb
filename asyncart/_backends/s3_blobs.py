"""The S3 blob store: each blob one object, ``PREFIX/blobs/<2 hex>/<digest>``, in one bucket.

Writes never replace a good blob: a single PUT carries ``If-None-Match: *`` (a 412 means the blob
is there, which is success), and so does the completion of a multipart upload. A file is hashed
as it is read, before its bytes can become the object: a small file is read and hashed whole in
a worker thread and then sent (the same bytes); a large one is read part by part, in order, into
a hasher while earlier parts upload in parallel, and the upload is completed only if the digest
matches (else aborted: nothing is left, not even the parts). Bytes in memory are bounded by one
budget per call (:data:`BUFFER_BYTES`), whatever the number and size of the files.

``missing`` asks with as few requests as it can (the cost rule is in :meth:`S3BlobStore.missing`).
Reads are verified (BLAKE3) and downloads streamed to a temp file beside the destination, then
renamed (the HTTP store's sink). ``flush`` has nothing to do: S3 acknowledges a PUT once durable.

Every request goes through :class:`aiobotocore` (pure Python on aiohttp: see
bench/bench_s3_client.py for why not obstore). Client errors become asyncart's: an unreachable
endpoint, a missing bucket or refused credentials are a one-line
:class:`~asyncart.BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import blake3
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from .._errors import BackendUnavailableError, IntegrityError, InvalidInputError, NotFoundError
from .base import StoredBlob, UploadItem
from .fileio import open_regular, temp_beside, why_unreadable
from .http_blobs import FILES_AT_ONCE, _changed, _first_error, _gather, _Sink, _verify

PART_THRESHOLD = 16 << 20
"""Files at least this large are uploaded in parts (multipart), in parallel."""
PART_SIZE = 8 << 20
"""S3's smallest part is 5 MiB (SeaweedFS enforces it too: EntityTooSmall)."""
PARTS_AT_ONCE = 4  # parts of one file in flight at once
READ_FILES = 32  # small files read and hashed per worker-thread hop ...
READ_BYTES = 4 << 20  # ... or about this many bytes
BUFFER_BYTES = 64 << 20
"""The most file bytes one put_files call holds in memory at once (parts and small files)."""
LIST_FROM = 8
"""``missing`` lists instead of HEADing once it is asked this many digests (see there)."""
LIST_PAGE = 100
"""Keys asked per LIST page (S3 allows 1,000): botocore parses a page on the event loop, at
about 0.1 ms of CPU per key, so smaller pages keep that under the loop's stall budget; the
CPU per key is the same, only the requests are more."""
_DELETE_AT = 1000  # keys per DeleteObjects (S3's most)
_DIGEST = re.compile(r"[0-9a-f]{64}")
COPY_PART = 1 << 30
"""Bytes of one part of the copy that turns an incoming upload into a blob (S3: at most 5 GiB)."""
_CHUNK = 4 << 20  # downloads: bytes gathered from the socket per thread hop
_HASH_INLINE = 1 << 20  # bytes hashed on the loop; more go to a thread
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}


@dataclass(frozen=True)
class S3Credentials:
    """Static S3 credentials (``AWS_ACCESS_KEY_ID`` ... in the environment)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"S3Credentials(access_key_id={self.access_key_id!r})"


class S3BlobStore:
    """A :class:`~asyncart._backends.base.BlobStore` in an S3 bucket (AWS or compatible).

    Args:
        bucket: the bucket, which must exist.
        prefix: the folder of the store in the bucket ("" for the bucket's root).
        endpoint: the server's URL (``http://127.0.0.1:8333``); None for AWS.
        region: the bucket's region.
        credentials: None: botocore's usual chain (profile, instance role ...).

    Nothing is sent before the first call. Outside :meth:`held`, each call opens and closes
    its own client; inside, one client serves every call.

    Example::

        store = S3BlobStore.from_url("s3://my-bucket/datasets")
        async with store.held():
            absent = await store.missing({digest: size})
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | None = None,
        part_size: int = PART_SIZE,
        part_threshold: int = PART_THRESHOLD,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        if not bucket:
            raise InvalidInputError("an S3 blob store needs a bucket: s3://BUCKET/PREFIX")
        if buffer_bytes < max(part_size, 1):
            raise InvalidInputError("buffer_bytes must hold at least one part")
        self.bucket, self.endpoint = bucket, endpoint
        self.region = region or "us-east-1"
        self.prefix = prefix.strip("/")
        self.part_size, self.part_threshold = part_size, part_threshold
        self.buffer_bytes = buffer_bytes
        self.requests: Counter[str] = Counter()
        """Requests sent, by S3 operation (``HeadObject``, ``ListObjectsV2`` ...)."""
        self.peak_buffered = 0
        """The most file bytes held in memory at once by an upload so far."""
        self.peak_parts = 0
        """The most parts of one file uploading at once so far."""
        self._credentials = credentials
        self._session = AioSession()
        self._warmed = False
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._holders = 0
        self._lock = anyio.Lock()

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> S3BlobStore:
        """A store at ``s3://BUCKET/PREFIX``, configured by the usual AWS variables of ``env``
        (default: the environment): ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (http
        allowed), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
        ``AWS_REGION`` or ``AWS_DEFAULT_REGION``.

        Raises:
            InvalidInputError: not an ``s3://`` URL with a bucket.
        """
        env = os.environ if env is None else env
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidInputError(f"not an S3 store URL: {url!r}; use s3://BUCKET/PREFIX")
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        credentials = (
            S3Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
            if key and secret
            else None
        )
        return cls(
            parts.netloc,
            parts.path,
            endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            credentials=credentials,
        )

    @property
    def location(self) -> str:
        """``s3://bucket/prefix`` (and the endpoint), for messages."""
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def key(self, digest: str) -> str:
        """The object key of blob ``digest``."""
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}blobs/{digest[:2]}/{digest}"

    # -- connections ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[S3BlobStore]:
        """Keep one client (and its connection pool) open for the block (re-entrant)."""
        await self._hold()
        try:
            yield self
        finally:
            self._holders -= 1
            if self._holders == 0:
                await self.aclose()

    async def aclose(self) -> None:
        """Close the client now, even inside :meth:`held` (the next call opens a new one)."""
        stack, self._exit, self._client = self._exit, None, None
        if stack is not None:
            with anyio.CancelScope(shield=True):  # a cancelled holder still closes the pool
                await stack.aclose()

    async def _hold(self) -> Any:
        self._holders += 1
        try:  # also a cancellation while another task opens the client: no holder leaks
            async with self._lock:
                if self._client is None:
                    await self._warm()
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(self._new_client())
                    self._exit = stack
        except BaseException:
            self._holders -= 1
            raise
        return self._client

    @contextlib.asynccontextmanager
    async def _use(self) -> AsyncIterator[Any]:
        """The client for one call: the held one, or one of the call's own."""
        client = await self._hold()
        try:
            yield client
        finally:
            self._holders -= 1
            if self._holders == 0:
                await self.aclose()

    def _new_client(self) -> Any:
        creds = self._credentials
        return self._session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=creds.access_key_id if creds else None,
            aws_secret_access_key=creds.secret_access_key if creds else None,
            aws_session_token=creds.session_token if creds else None,
            config=AioConfig(
                signature_version="s3v4",  # presigned URLs too (botocore's default is v2)
                s3={"addressing_style": "path"} if self.endpoint else None,
                # S3 checks what it stores against our BLAKE3 digests; a CRC32 of every body
                # too would cost CPU on the event loop's thread for nothing more.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
                max_pool_connections=32,
            ),
        )

    async def _warm(self) -> None:
        """Read, in a worker thread, what botocore reads from disk to build a client (config
        files, service models), once per store: those are blocking calls that must not run
        on the event loop. Its loader caches the files it found but not the ones it looked
        for in vain, so the models it builds are cached here as well."""
        if not self._warmed:
            await anyio.to_thread.run_sync(_warm_session, self._session)
            self._warmed = True

    @contextlib.contextmanager
    def _errors(
        self, operation: str, digest: str | None = None, *, exists_ok: bool = False
    ) -> Iterator[None]:
        """Count the request, and translate what the client raises into asyncart's errors.

        ``exists_ok``: a conditional write's 412 (the key exists) ends the block quietly.
        """
        self.requests[operation] += 1
        try:
            yield
        except ClientError as e:
            if exists_ok and _code(e) in ("PreconditionFailed", "412"):
                return
            raise self._client_error(e, digest) from None
        except EndpointConnectionError as e:
            raise BackendUnavailableError(
                f"cannot reach the S3 endpoint of {self.location} ({e}); check "
                "AWS_ENDPOINT_URL and that the server runs"
            ) from None
        except BotoCoreError as e:
            raise BackendUnavailableError(f"S3 request to {self.location} failed: {e}") from None

    def _client_error(self, error: ClientError, digest: str | None) -> Exception:
        code = _code(error)
        if code == "NoSuchBucket":
            return BackendUnavailableError(
                f"the bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}; create "
                f"it (aws s3 mb s3://{self.bucket}, with --endpoint-url for another server)"
            )
        if code in _AUTH_CODES:
            return BackendUnavailableError(
                f"S3 refused the credentials for {self.location} ({code}); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the key's rights on the bucket"
            )
        if digest is not None and code in ("NoSuchKey", "404"):
            return NotFoundError(
                f"blob {digest} is missing from the store at {self.location}; the store is "
                "damaged (run asyncart.audit to see what is affected)"
            )
        message = error.response.get("Error", {}).get("Message", "")
        return BackendUnavailableError(f"S3 at {self.location} answered {code}: {message}")

    async def check(self) -> None:
        """Check that the bucket is there and the credentials open it (one HEAD request).

        Raises:
            BackendUnavailableError: the endpoint cannot be reached, the bucket is missing or
                the credentials are refused; the message says which.
        """
        async with self._use() as client:
            with self._errors("HeadBucket"):
                try:
                    await client.head_bucket(Bucket=self.bucket)
                except ClientError as e:
                    if _code(e) in ("404", "NoSuchBucket"):  # HEAD has no body: no code
                        e.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
                    raise

    # -- missing ----------------------------------------------------------------------------

    async def missing(self, sizes: Mapping[str, int]) -> set[str]:
        """The digests of ``sizes`` that are not stored with that size.

        Cost rule: fewer than :data:`LIST_FROM` digests cost one HEAD each, in parallel. More
        are sorted (an object's key sorts as its digest does, fan-out folder included) and
        listed instead: each LIST starts just before the smallest digest not yet settled and
        settles every asked digest up to the last key it returns, so it never costs more
        requests than the HEADs would, and usually far fewer (1 request for a fresh store;
        about one per :data:`LIST_PAGE` stored blobs in the range asked). The sorted digests
        are cut into up to 8 ranges listed at once.

        A stored object of another size can only be a foreign write (S3 writes are atomic, so
        not a torn one of ours): it is hashed; if it is the blob it stays (the caller's size is
        wrong) and counts as present; if not, it is copied aside to ``PREFIX/damaged/`` as
        evidence, removed, and counts as missing, so that the upload that follows stores a
        good copy.
        """
        if not sizes:
            return set()
        async with self._use() as client:
            if len(sizes) < LIST_FROM:
                found = await _gather(list(sizes), lambda d: self._head(client, d))
                stored = {d: s for d, s in zip(sizes, found, strict=True) if s >= 0}
            else:
                stored = await self._list(client, sorted(sizes))
            absent = {d for d in sizes if d not in stored}
            for digest, size in stored.items():
                if size != sizes[digest] and await self._set_aside_if_bad(client, digest):
                    absent.add(digest)
        return absent

    async def _head(self, client: Any, digest: str) -> int:
        """The stored size of blob ``digest``, -1 if absent."""
        try:
            with self._errors("HeadObject", digest):
                reply = await client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except NotFoundError:
            return -1
        return int(reply["ContentLength"])

    async def _list(self, client: Any, digests: list[str]) -> dict[str, int]:
        """The stored size of each of the sorted ``digests`` that is stored, by listing."""
        ranges = max(1, min(8, len(digests) // LIST_FROM))
        step = -(-len(digests) // ranges)
        chunks = [digests[i : i + step] for i in range(0, len(digests), step)]
        found: dict[str, int] = {}

        async def one(chunk: list[str]) -> int:
            found.update(await self._list_range(client, chunk))
            return 0

        await _gather(chunks, one)
        return found

    async def _list_range(self, client: Any, digests: list[str]) -> dict[str, int]:
        head = f"{self.prefix}/blobs/" if self.prefix else "blobs/"
        found: dict[str, int] = {}
        wanted = set(digests)
        i, last = 0, ""
        while i < len(digests):
            start = self.key(digests[i])[:-1]  # just before the key: the key itself is listed
            with self._errors("ListObjectsV2"):
                reply = await client.list_objects_v2(
                    Bucket=self.bucket,
                    Prefix=head,
                    StartAfter=max(start, last),  # past a page of foreign keys, never back
                    MaxKeys=LIST_PAGE,
                )
            objects = reply.get("Contents", [])
            for obj in objects:
                digest = obj["Key"].rsplit("/", 1)[-1]
                if digest in wanted:
                    found[digest] = int(obj["Size"])
            if not reply.get("IsTruncated") or not objects:
                break  # the listing ended: nothing after it is stored
            last = objects[-1]["Key"]
            while i < len(digests) and self.key(digests[i]) <= last:
                i += 1
        return found

    async def _set_aside_if_bad(self, client: Any, digest: str) -> bool:
        """Unless the object of ``digest`` is the blob, copy it to ``damaged/`` and remove it;
        True if it was removed (or was gone already).

        Only the object that was checked is removed: another writer may have put the good blob
        in its place meanwhile (and a version may use it already). The copy and the delete are
        conditional on its ETag, and the ETag is checked again just before the delete, for a
        server that ignores ``If-Match`` on delete.
        """
        etag = await self._etag(client, digest)
        if etag is None:
            return True
        try:
            await self._read_verified(client, digest)
        except NotFoundError:
            return True
        except IntegrityError:
            pass  # not the blob: set it aside
        else:
            return False
        if await self._etag(client, digest) != etag:
            return False  # replaced since it was checked: missing() asks again next time
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        head = f"{self.prefix}/" if self.prefix else ""
        with self._errors("CopyObject"):
            await client.copy_object(
                Bucket=self.bucket,
                Key=f"{head}damaged/{digest}.{stamp}",
                CopySource={"Bucket": self.bucket, "Key": self.key(digest)},
                CopySourceIfMatch=etag,
            )
        if await self._etag(client, digest) != etag:
            return False
        with self._errors("DeleteObject"):
            try:
                await client.delete_object(Bucket=self.bucket, Key=self.key(digest), IfMatch=etag)
            except ClientError as e:
                if _code(e) in ("PreconditionFailed", "412"):
                    return False  # replaced meanwhile
                raise
        return True

    async def _etag(self, client: Any, digest: str) -> str | None:
        """The ETag of blob ``digest``'s object (None: there is none)."""
        try:
            with self._errors("HeadObject", digest):
                reply = await client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except NotFoundError:
            return None
        etag: str = reply["ETag"]
        return etag

    # -- uploads ----------------------------------------------------------------------------

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        if not items:
            return 0
        budget = _Budget(self.buffer_bytes, self)
        small = [item for item in items if item.size < self.part_threshold]
        large = [item for item in items if item.size >= self.part_threshold]
        async with self._use() as client:
            written = await self._put_small(client, small, budget)
            return written + sum(
                await _gather(large, lambda item: self._put_parts(client, item, budget))
            )

    async def _put_small(self, client: Any, items: list[UploadItem], budget: _Budget) -> int:
        """One PUT each, FILES_AT_ONCE at a time, the files read and hashed a chunk at a time
        in one worker thread: under load, a thread hop per file cost as much CPU as its PUT."""
        if not items:
            return 0
        written = 0
        send, receive = anyio.create_memory_object_stream[tuple[UploadItem, bytes]](FILES_AT_ONCE)

        async def read() -> None:
            async with send:
                for chunk in _read_chunks(items):
                    await budget.take(sum(item.size + 1 for item in chunk))
                    datas = await anyio.to_thread.run_sync(_read_checked, chunk)
                    for pair in zip(chunk, datas, strict=True):
                        await send.send(pair)

        async def put(inbox: anyio.abc.ObjectReceiveStream[tuple[UploadItem, bytes]]) -> None:
            nonlocal written
            async with inbox:
                async for item, data in inbox:
                    await self._put_object(client, item.digest, data)
                    await budget.give(item.size + 1)
                    written += item.size

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                for _ in range(min(FILES_AT_ONCE, len(items))):
                    tg.start_soon(put, receive.clone())
                receive.close()
        except BaseExceptionGroup as group:
            raise _first_error(group) from None  # callers expect our errors, not a group
        return written

    async def _put_object(self, client: Any, digest: str, data: bytes) -> None:
        """PUT unless the key exists (then the blob is stored already, and kept as it is)."""
        with self._errors("PutObject", exists_ok=True):
            await client.put_object(
                Bucket=self.bucket, Key=self.key(digest), Body=data, IfNoneMatch="*"
            )

    async def _put_parts(self, client: Any, item: UploadItem, budget: _Budget) -> int:
        """A multipart upload: parts read and hashed in order, sent PARTS_AT_ONCE at a time,
        completed only when the whole file hashed to its digest; aborted on any failure."""
        key = self.key(item.digest)
        with self._errors("CreateMultipartUpload"):
            started = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload = started["UploadId"]
        try:
            etags = await self._send_parts(client, item, key, upload, budget)
            await self._complete_new(client, key, upload, etags)
        except BaseException:
            await self._abort(client, key, upload)
            raise
        return item.size

    async def _send_parts(
        self, client: Any, item: UploadItem, key: str, upload: str, budget: _Budget
    ) -> dict[int, str]:
        hasher = blake3.blake3()
        etags: dict[int, str] = {}
        sending = anyio.Semaphore(PARTS_AT_ONCE)
        in_flight = 0

        async def send(number: int, data: bytes, release: anyio.Event) -> None:
            nonlocal in_flight
            in_flight += 1
            self.peak_parts = max(self.peak_parts, in_flight)
            try:
                with self._errors("UploadPart"):
                    reply = await client.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
                    )
                etags[number] = reply["ETag"]
            finally:
                in_flight -= 1
                release.set()
                sending.release()

        async with anyio.create_task_group() as tg:
            offset, number = 0, 1
            while offset < item.size:
                length = min(self.part_size, item.size - offset)
                await sending.acquire()
                released = anyio.Event()
                await budget.take(length)
                tg.start_soon(budget.give_when, length, released)
                try:
                    data = await anyio.to_thread.run_sync(_read_into, item, offset, length, hasher)
                except BaseException:
                    released.set()
                    sending.release()
                    raise
                tg.start_soon(send, number, data, released)
                offset, number = offset + length, number + 1
            tail = await anyio.to_thread.run_sync(_read_tail, item)
            if tail or hasher.hexdigest() != item.digest:
                why = "it grew" if tail else f"its bytes hash to {hasher.hexdigest()[:16]}..."
                raise _changed(item, why)  # the task group cancels the parts in flight
        return etags

    async def _complete_new(
        self, client: Any, key: str, upload: str, etags: dict[int, str]
    ) -> None:
        """Complete a multipart upload of a blob's key only if the key is not stored yet
        (``If-None-Match: *``: good bytes are never replaced); if it is, drop the parts."""
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        completed = False
        with self._errors("CompleteMultipartUpload", exists_ok=True):
            await client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
            completed = True
        if not completed:  # stored already: drop our parts
            await self._abort(client, key, upload)

    async def _abort(self, client: Any, key: str, upload: str) -> None:
        with (
            anyio.CancelScope(shield=True),
            contextlib.suppress(BackendUnavailableError),
            self._errors("AbortMultipartUpload"),
        ):
            await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)

    async def put_bytes(self, data: bytes) -> str:
        digest = await _hash(data)
        async with self._use() as client:
            await self._put_object(client, digest, data)
        return digest

    # -- downloads --------------------------------------------------------------------------

    async def get_bytes(self, digest: str) -> bytes:
        async with self._use() as client:
            return await self._read_verified(client, digest)

    async def _read_verified(self, client: Any, digest: str) -> bytes:
        with self._errors("GetObject", digest):
            reply = await client.get_object(Bucket=self.bucket, Key=self.key(digest))
            async with reply["Body"] as body:
                data: bytes = await body.read()
        _verify(digest, await _hash(data))
        return data

    async def get_files(self, items: Sequence[tuple[str, str]]) -> int:
        async with self._use() as client:
            return sum(await _gather(items, lambda pair: self._get_file(client, *pair)))

    async def _get_file(self, client: Any, digest: str, dest: str) -> int:
        """Stream one blob to a temp file beside ``dest`` (written and hashed in a thread,
        4 MiB at a time, while the next 4 MiB arrive), verify it, then rename it into place."""
        sink = _Sink(temp_beside(dest))
        try:
            with self._errors("GetObject", digest):
                reply = await client.get_object(Bucket=self.bucket, Key=self.key(digest))
                async with reply["Body"] as body:
                    if int(reply["ContentLength"]) <= _CHUNK:  # one hop to a thread, not two
                        data = await body.read()
                        return await anyio.to_thread.run_sync(sink.write_all, data, digest, dest)
                    await sink.fill(lambda send: _batches(body.iter_chunks(_CHUNK), send))
            return await anyio.to_thread.run_sync(sink.finish, digest, dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(sink.discard)
            raise

    async def flush(self) -> None:
        """Nothing to do: S3 acknowledges a PUT (or a completed multipart upload) only once the
        object is durable, so every blob stored so far already is."""

    # -- presigned URLs ---------------------------------------------------------------------

    async def presign(self, method: str, digest: str, expires: int = 3600) -> str:
        """A URL that lets its holder ``GET`` or ``PUT`` blob ``digest`` for ``expires``
        seconds without credentials (for a server to hand to its clients). A presigned PUT
        is a plain PUT: whoever receives one must be trusted to send the right bytes (the
        server verifies them before it references the blob).

        Raises:
            InvalidInputError: ``method`` is neither GET nor PUT.
        """
        operations = {"GET": "get_object", "PUT": "put_object"}
        if method.upper() not in operations:
            raise InvalidInputError(f"presign: method must be GET or PUT, not {method!r}")
        async with self._use() as client:
            url: str = await client.generate_presigned_url(
                operations[method.upper()],
                Params={"Bucket": self.bucket, "Key": self.key(digest)},
                ExpiresIn=expires,
            )
        return url

    # -- incoming uploads: a server's multipart uploads, verified before they become blobs ---
    #
    # A client's large upload is assembled under PREFIX/incoming/UPLOAD (never under a digest:
    # nobody may plant bytes where a blob will be read), then hashed here and copied to its
    # blob's key. Everything about it is in S3 (the upload, its parts, their age), so any
    # server process can continue, complete or expire what another one started.

    def incoming_key(self, upload: str) -> str:
        """The object key that incoming upload ``upload`` assembles."""
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}incoming/{upload}"

    async def start_incoming(self, upload: str) -> str:
        """Start the S3 multipart upload of ``upload``'s key; return its S3 upload id."""
        async with self._use() as client:
            with self._errors("CreateMultipartUpload"):
                started = await client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.incoming_key(upload)
                )
        upload_id: str = started["UploadId"]
        return upload_id

    async def find_incoming(self, upload: str) -> str | None:
        """The S3 upload id of ``upload`` (None: it was completed, aborted or never started)."""
        key = self.incoming_key(upload)
        async with self._use() as client:
            with self._errors("ListMultipartUploads"):
                reply = await client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        found = [u["UploadId"] for u in reply.get("Uploads", []) if u["Key"] == key]
        return found[0] if found else None

    async def presign_parts(
        self, upload: str, upload_id: str, numbers: range, expires: int
    ) -> list[str]:
        """URLs that let their holder PUT parts ``numbers`` of ``upload`` for ``expires``
        seconds without credentials (nothing else: not another key, not the completion)."""
        urls = []
        async with self._use() as client:
            for number in numbers:
                params = {
                    "Bucket": self.bucket,
                    "Key": self.incoming_key(upload),
                    "UploadId": upload_id,
                    "PartNumber": number,
                }
                urls.append(
                    await client.generate_presigned_url(
                        "upload_part", Params=params, ExpiresIn=expires
                    )
                )
                if number % 256 == 0:  # signing is CPU on the loop: let other requests in
                    await anyio.lowlevel.checkpoint()
        return urls

    async def put_incoming_part(
        self, upload: str, upload_id: str, number: int, length: int, body: AsyncIterator[bytes]
    ) -> None:
        """Stream ``length`` bytes of ``body`` into part ``number`` of ``upload`` (one chunk in
        memory at a time: the part is PUT to a URL presigned for it, as a client would)."""
        (url,) = await self.presign_parts(upload, upload_id, range(number, number + 1), 600)
        self.requests["UploadPart"] += 1
        headers = {"Content-Length": str(length)}
        try:
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.put(url, data=body, headers=headers) as reply,
            ):
                text = await reply.text(errors="replace")
        except aiohttp.ClientError as e:  # (a failing body raises its own error, not this)
            raise BackendUnavailableError(f"S3 at {self.location} failed a part: {e}") from None
        if reply.status == 404:
            raise NotFoundError(f"incoming upload {upload} is gone (expired or completed)")
        if reply.status != 200:
            raise BackendUnavailableError(
                f"S3 at {self.location} answered {reply.status} to a part: {_xml_code(text)}"
            )

    async def incoming_parts(self, upload: str, upload_id: str) -> dict[int, tuple[int, str]]:
        """part number -> (size, ETag) of every part S3 holds for ``upload`` (as S3 lists
        them: a client's word about its parts is not needed). NotFoundError: it is gone."""
        key, parts, marker = self.incoming_key(upload), {}, 0
        async with self._use() as client:
            while True:
                with self._errors("ListParts"), self._gone(upload):
                    reply = await client.list_parts(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumberMarker=marker,
                        MaxParts=LIST_PAGE,
                    )
                for part in reply.get("Parts", []):
                    parts[int(part["PartNumber"])] = (int(part["Size"]), part["ETag"])
                if not reply.get("IsTruncated"):
                    return parts
                marker = int(reply["NextPartNumberMarker"])

    async def complete_incoming(
        self, upload: str, upload_id: str, parts: Mapping[int, tuple[int, str]]
    ) -> None:
        """Join the listed ``parts`` into ``upload``'s object (NotFoundError: another request
        completed it, or it expired; InvalidInputError: S3 refused the parts)."""
        listed = [{"PartNumber": n, "ETag": parts[n][1]} for n in sorted(parts)]
        async with self._use() as client:
            with self._errors("CompleteMultipartUpload"), self._gone(upload):
                try:
                    await client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=self.incoming_key(upload),
                        UploadId=upload_id,
                        MultipartUpload={"Parts": listed},
                    )
                except ClientError as e:
                    if _code(e) in ("EntityTooSmall", "InvalidPart", "InvalidPartOrder"):
                        raise InvalidInputError(
                            f"S3 refused the parts of upload {upload}: {_code(e)}"
                        ) from None
                    raise

    @contextlib.contextmanager
    def _gone(self, upload: str) -> Iterator[None]:
        """S3's NoSuchUpload as a NotFoundError (inside :meth:`_errors`)."""
        try:
            yield
        except ClientError as e:
            if _code(e) == "NoSuchUpload":
                raise NotFoundError(f"incoming upload {upload} is gone") from None
            raise

    async def adopt_incoming(self, upload: str, digest: str, size: int) -> tuple[str, int]:
        """Make ``upload``'s object blob ``digest`` if it is: hash it as S3 returns it (BLAKE3,
        in worker threads, 4 MiB at a time) while S3 copies it to the blob's key, and complete
        that copy only if it hashed to ``digest`` with ``size`` bytes (else abort it: nothing
        is stored). Return the digest and size it has.

        The copy is conditional on the ETag of the bytes being hashed, so it copies those
        bytes or fails; it is a multipart copy (CopyObject stops at 5 GB) of parts of up to
        :data:`COPY_PART`, completed with ``If-None-Match: *`` (a 412: the blob was stored
        meanwhile, which is success). Overlapping the two reads costs S3 no more than one
        after the other, and takes about the time of the longer one.
        """
        key, source = self.key(digest), {"Bucket": self.bucket, "Key": self.incoming_key(upload)}
        step = max(COPY_PART, -(-size // 10_000))
        async with self._use() as client:
            with self._errors("GetObject"):
                reply = await client.get_object(Bucket=self.bucket, Key=self.incoming_key(upload))
            etag = reply["ETag"]
            with self._errors("CreateMultipartUpload"):
                started = await client.create_multipart_upload(Bucket=self.bucket, Key=key)
            upload_id = started["UploadId"]
            etags: dict[int, str] = {}

            async def copy(start: int) -> int:
                number = start // step + 1
                with self._errors("UploadPartCopy"):
                    copied = await client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=source,
                        CopySourceIfMatch=etag,
                        CopySourceRange=f"bytes={start}-{min(start + step, size) - 1}",
                    )
                etags[number] = copied["CopyPartResult"]["ETag"]
                return 0

            try:
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_gather, range(0, size, step), copy)
                        with self._errors("GetObject"):
                            async with reply["Body"] as body:
                                got, held = await _hash_stream(body)
                        if (got, held) != (digest, size):
                            tg.cancel_scope.cancel()  # the copy is aborted below
                except BaseExceptionGroup as group:
                    raise _first_error(group) from None
                if (got, held) != (digest, size):
                    await self._abort(client, key, upload_id)
                    return got, held
                await self._complete_new(client, key, upload_id, etags)
            except BaseException:
                await self._abort(client, key, upload_id)
                raise
        return got, held

    async def drop_incoming(self, upload: str, upload_id: str | None = None) -> None:
        """Remove ``upload``: its object, and its multipart upload when ``upload_id`` is given
        (shielded: a cancelled request still cleans up; errors are left to the expiry)."""
        key = self.incoming_key(upload)
        with anyio.CancelScope(shield=True), contextlib.suppress(BackendUnavailableError):
            async with self._use() as client:
                if upload_id is not None:
                    await self._abort(client, key, upload_id)
                with self._errors("DeleteObject"):
                    await client.delete_object(Bucket=self.bucket, Key=key)

    async def sweep_incoming(self, cutoff: float) -> list[str]:
        """Abort the incoming uploads started before ``cutoff`` (seconds since the epoch, S3's
        clock) and delete incoming objects older than it (a server that died between joining
        and deleting them left those); return their keys."""
        head = self.incoming_key("")
        removed = []
        async with self._use() as client:
            paginator = client.get_paginator("list_multipart_uploads")
            with self._errors("ListMultipartUploads"):
                async for page in paginator.paginate(
                    Bucket=self.bucket, Prefix=head, PaginationConfig={"PageSize": LIST_PAGE}
                ):
                    for up in page.get("Uploads", []):
                        if up["Initiated"].timestamp() < cutoff:
                            await self._abort(client, up["Key"], up["UploadId"])
                            removed.append(up["Key"])
            paginator = client.get_paginator("list_objects_v2")
            with self._errors("ListObjectsV2"):
                async for page in paginator.paginate(
                    Bucket=self.bucket, Prefix=head, PaginationConfig={"PageSize": LIST_PAGE}
                ):
                    for obj in page.get("Contents", []):
                        if obj["LastModified"].timestamp() < cutoff:
                            with self._errors("DeleteObject"):
                                await client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                            removed.append(obj["Key"])
        return removed

    # -- what the garbage collector needs (see asyncart/_gc.py) ------------------------------

    async def listed(self, shard: str) -> list[StoredBlob]:
        """The blobs whose digests start with ``shard``, as S3 lists them (its clock)."""
        head = self.key(shard + "0" * 62).rsplit("/", 1)[0] + "/"
        found = []
        async with self._use() as client:
            paginator = client.get_paginator("list_objects_v2")
            with self._errors("ListObjectsV2"):
                async for page in paginator.paginate(
                    Bucket=self.bucket, Prefix=head, PaginationConfig={"PageSize": LIST_PAGE}
                ):
                    for obj in page.get("Contents", []):
                        digest = obj["Key"][len(head) :]
                        if _DIGEST.fullmatch(digest) and digest.startswith(shard):
                            found.append(
                                StoredBlob(digest, obj["Size"], obj["LastModified"].timestamp())
                            )
        return found

    async def remove(self, digests: Sequence[str]) -> None:
        """Delete these blobs (``DeleteObjects``, up to 1,000 keys a request)."""
        async with self._use() as client:
            for i in range(0, len(digests), _DELETE_AT):
                keys = [{"Key": self.key(d)} for d in digests[i : i + _DELETE_AT]]
                with self._errors("DeleteObjects"):
                    reply = await client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
                failed = [e for e in reply.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if failed:
                    raise BackendUnavailableError(
                        f"S3 at {self.location} did not delete {len(failed)} blobs "
                        f"({failed[0].get('Key')}: {failed[0].get('Code')})"
                    )

    async def stale_uploads(self, before: float, remove: bool) -> tuple[int, int]:
        """Multipart uploads of blobs (a writer's own, or a server's incoming ones) with no
        part written since ``before``, and incoming objects older than it: a process that
        died mid-upload left them (a live one's newest part is younger). (How many, bytes),
        aborted or deleted when ``remove``."""
        head = f"{self.prefix}/" if self.prefix else ""
        count = size = 0
        async with self._use() as client:
            for prefix in (f"{head}blobs/", self.incoming_key("")):
                paginator = client.get_paginator("list_multipart_uploads")
                with self._errors("ListMultipartUploads"):
                    pages = [
                        page
                        async for page in paginator.paginate(
                            Bucket=self.bucket,
                            Prefix=prefix,
                            PaginationConfig={"PageSize": LIST_PAGE},
                        )
                    ]
                for up in (up for page in pages for up in page.get("Uploads", [])):
                    if up["Initiated"].timestamp() >= before:
                        continue
                    parts = await self._parts(client, up["Key"], up["UploadId"])
                    if any(written >= before for written, _ in parts):
                        continue
                    count, size = count + 1, size + sum(n for _, n in parts)
                    if remove:
                        await self._abort(client, up["Key"], up["UploadId"])
            paginator = client.get_paginator("list_objects_v2")
            with self._errors("ListObjectsV2"):
                async for page in paginator.paginate(
                    Bucket=self.bucket,
                    Prefix=self.incoming_key(""),
                    PaginationConfig={"PageSize": LIST_PAGE},
                ):
                    for obj in page.get("Contents", []):
                        if obj["LastModified"].timestamp() < before:
                            count, size = count + 1, size + obj["Size"]
                            if remove:
                                with self._errors("DeleteObject"):
                                    await client.delete_object(Bucket=self.bucket, Key=obj["Key"])
        return count, size

    async def _parts(self, client: Any, key: str, upload: str) -> list[tuple[float, int]]:
        """(written, size) of each part of a multipart upload."""
        paginator = client.get_paginator("list_parts")
        found = []
        with self._errors("ListParts"):
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload):
                for part in page.get("Parts", []):
                    found.append((part["LastModified"].timestamp(), int(part["Size"])))
        return found

    @contextlib.asynccontextmanager
    async def reading(
        self, digest: str, start: int = 0
    ) -> AsyncIterator[tuple[int, int, AsyncIterator[bytes]]]:
        """(the blob's size, the bytes that follow, the bytes from ``start`` on, streamed from
        S3 and not verified: the reader verifies). NotFoundError: no such blob;
        InvalidInputError: ``start`` is past its end."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(digest)}
        if start:
            params["Range"] = f"bytes={start}-"
        async with self._use() as client:
            with self._errors("GetObject", digest):
                try:
                    reply = await client.get_object(**params)
                except ClientError as e:
                    if _code(e) == "InvalidRange":
                        raise InvalidInputError(f"blob {digest} has no byte {start}") from None
                    raise
            length = int(reply["ContentLength"])
            total = int(reply["ContentRange"].rsplit("/", 1)[1]) if start else length
            async with reply["Body"] as body:
                yield total, length, body.iter_chunks(_CHUNK)

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location!r})"


async def _batches(
    chunks: AsyncIterator[bytes], send: anyio.abc.ObjectSendStream[list[bytes]]
) -> None:
    """Send ``chunks`` on in batches of about ``_CHUNK`` bytes (one thread hop each)."""
    batch: list[bytes] = []
    batched = 0
    async for chunk in chunks:
        batch.append(chunk)
        batched += len(chunk)
        if batched >= _CHUNK:
            await send.send(batch)
            batch, batched = [], 0
    await send.send(batch)


class _Budget:
    """File bytes held in memory by one upload call, bounded; the peak is recorded on
    ``owner.peak_buffered``."""

    def __init__(self, limit: int, owner: S3BlobStore) -> None:
        self.limit, self.used, self.owner = limit, 0, owner
        self._changed = anyio.Condition()

    async def take(self, n: int) -> None:
        n = min(n, self.limit)  # a lone file larger than the budget still goes, alone
        async with self._changed:
            while self.used + n > self.limit:
                await self._changed.wait()
            self.used += n
            self.owner.peak_buffered = max(self.owner.peak_buffered, self.used)

    async def give(self, n: int) -> None:
        async with self._changed:
            self.used -= min(n, self.limit)
            self._changed.notify_all()

    async def give_when(self, n: int, event: anyio.Event) -> None:
        with anyio.CancelScope(shield=True):
            await event.wait()
            await self.give(n)

    @contextlib.asynccontextmanager
    async def taken(self, n: int) -> AsyncIterator[None]:
        await self.take(n)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.give(n)


def _warm_session(session: AioSession) -> None:
    """Load the config and S3 models into ``session``'s caches (blocking: in a thread)."""
    session.get_scoped_config()
    loader = session.get_component("data_loader")
    original, models = loader.load_service_model, {}

    def cached(service: str, kind: str, api_version: str | None = None) -> Any:
        key = (service, kind, api_version)
        if key not in models:
            models[key] = original(service, kind, api_version)
        return models[key]

    loader.load_service_model = cached
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"):
        with contextlib.suppress(Exception):  # the last two are optional for a client
            cached("s3", kind)
    for name in ("endpoints", "partitions", "_retry", "sdk-default-configuration"):
        loader.load_data(name)


def _open(item: UploadItem) -> int:
    try:
        return open_regular(item.source)
    except OSError as e:
        raise _changed(item, why_unreadable(e)) from None


def _read_chunks(items: list[UploadItem]) -> Iterator[list[UploadItem]]:
    """``items`` in chunks of up to READ_FILES files and about READ_BYTES bytes."""
    chunk: list[UploadItem] = []
    held = 0
    for item in items:
        if chunk and (len(chunk) >= READ_FILES or held + item.size > READ_BYTES):
            yield chunk
            chunk, held = [], 0
        chunk.append(item)
        held += item.size
    if chunk:
        yield chunk


def _read_checked(items: list[UploadItem]) -> list[bytes]:
    """Each file's bytes, checked against the size and digest it was added with (blocking)."""
    out = []
    for item in items:
        fd = _open(item)
        try:
            data = os.pread(fd, item.size + 1, 0)
        finally:
            os.close(fd)
        if len(data) != item.size:
            raise _changed(item, f"it now has {len(data)} bytes or more")
        digest = blake3.blake3(data).hexdigest()
        if digest != item.digest:
            raise _changed(item, f"its bytes hash to {digest[:16]}...")
        out.append(data)
    return out


def _read_into(item: UploadItem, offset: int, length: int, hasher: Any) -> bytes:
    """Exactly ``length`` bytes from ``offset``, fed to ``hasher`` (blocking)."""
    fd = _open(item)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise _changed(item, f"it ends at byte {offset + len(data)}, before {item.size}")
    hasher.update(data)
    return data


def _read_tail(item: UploadItem) -> bytes:
    """Whatever the file holds past its expected size (b"" if it did not grow)."""
    fd = _open(item)
    try:
        return os.pread(fd, 1, item.size)
    finally:
        os.close(fd)


async def _hash(data: bytes) -> str:
    if len(data) > _HASH_INLINE:
        return await anyio.to_thread.run_sync(lambda: blake3.blake3(data).hexdigest())
    return blake3.blake3(data).hexdigest()


async def _hash_stream(body: Any) -> tuple[str, int]:
    """BLAKE3 digest and size of an S3 body, hashed in worker threads 4 MiB at a time."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    batch: list[bytes] = []
    size = batched = 0
    async for chunk in body.iter_chunks(_CHUNK):
        batch.append(chunk)
        batched += len(chunk)
        if batched >= _CHUNK:
            await anyio.to_thread.run_sync(_update_all, hasher, batch)
            size, batch, batched = size + batched, [], 0
    await anyio.to_thread.run_sync(_update_all, hasher, batch)
    return hasher.hexdigest(), size + batched


def _update_all(hasher: Any, batch: list[bytes]) -> None:
    for data in batch:
        hasher.update(data)


def _xml_code(text: str) -> str:
    """The ``<Code>`` of an S3 error body (its first 100 characters when there is none)."""
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6 : end] if 0 <= start < end else text[:100]


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))

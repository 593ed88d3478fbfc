"""Serving people's files (profile pictures, attachments) safely, with byte ranges.

Every such response names its exact type (never sniffed), runs sandboxed with nothing
allowed to load, may not be embedded by another site, and is a download unless its type
is safe to show inline. A single `Range` lets audio and video seek.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterable

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.http import content_disposition_header

FILE_CSP = "sandbox; default-src 'none'"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(Exception):
    """A Range header that asks for no byte of the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) asked for by a single-range header, or None for the whole file
    (no header, or one this server does not serve as a range: several ranges, other
    units). Raises RangeNotSatisfiable when the range starts past the end."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    # no file has 19 digits of bytes: a longer first position is past the end, a longer
    # last one (or suffix) the end itself; and int() is never handed thousands of digits
    if len(first) > 18:
        raise RangeNotSatisfiable()
    if len(last) > 18:
        last = str(size)
    if not first:
        if not last or int(last) == 0:
            raise RangeNotSatisfiable()
        return max(size - int(last), 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable()
    return start, end


def ranged_response(
    request: HttpRequest,
    *,
    size: int,
    content_type: str,
    read: Callable[[int, int], Iterable[bytes]],
) -> HttpResponse:
    """A 200 with the whole body, or a 206 for a single Range, or a 416; read(start, end)
    yields the bytes [start, end) as a stream."""
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end = wanted or (0, size)
    body = read(start, end) if request.method != "HEAD" else iter(())
    if isinstance(request, ASGIRequest):
        body = _async_chunks(body)
    response = StreamingHttpResponse(body, status=206 if wanted else 200, content_type=content_type)
    response["Content-Length"] = str(end - start)
    response["Accept-Ranges"] = "bytes"
    if wanted:
        response["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return response


async def _async_chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """The chunks, each read in a worker thread. Under ASGI, Django turns a synchronous
    streaming body into a list first (the whole file in memory); an asynchronous one is
    sent a chunk at a time."""
    iterator = iter(chunks)
    next_chunk = sync_to_async(next, thread_sensitive=False)
    try:
        while (chunk := await next_chunk(iterator, None)) is not None:
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()


def user_file_response(
    request: HttpRequest,
    *,
    size: int,
    content_type: str,
    read: Callable[[int, int], Iterable[bytes]],
    name: str | None = None,
    inline: bool = True,
    cache_s: int = 300,
) -> HttpResponse:
    """A person's file, served with the headers that keep it from acting as a page."""
    response = ranged_response(request, size=size, content_type=content_type, read=read)
    set_user_file_headers(response, name=name, inline=inline, cache_s=cache_s)
    return response


def set_user_file_headers(
    response: HttpResponse, *, name: str | None, inline: bool, cache_s: int
) -> None:
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = FILE_CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    response["Cache-Control"] = f"private, max-age={cache_s}"
    if name is not None or not inline:
        response["Content-Disposition"] = content_disposition_header(
            as_attachment=not inline, filename=name or "file"
        )


def iter_open_file(path, start: int, end: int, chunk: int = 256 * 1024) -> Iterable[bytes]:
    """The bytes [start, end) of the file at path, read in chunks."""
    with open(path, "rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data

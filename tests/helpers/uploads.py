"""A file through the upload handler, as the upload view hands it over, without HTTP."""

from __future__ import annotations

import contextlib

from django.core.files.uploadhandler import StopFutureHandlers

from messaging import files


def uploaded(data: bytes, name: str = "photo.png") -> files.Upload:
    """data through the upload handler, in the pieces Django hands it over."""
    handler = files.EncryptingUploadHandler()
    with contextlib.suppress(StopFutureHandlers):
        handler.new_file("file", name, "image/png", len(data))
    for start in range(0, len(data), handler.chunk_size):
        handler.receive_data_chunk(data[start : start + handler.chunk_size], start)
    handler.file_complete(len(data))
    return files.finish_upload(handler.uploads.pop())

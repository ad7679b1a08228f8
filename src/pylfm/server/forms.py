"""Reading request bodies with their size limits: the multipart form of ``POST
/v1/audio/transcriptions`` (and parsing its fields), and a plain body (`read_body`: the
JSON of ``POST /v1/audio/speech``).

The form is parsed as it arrives, with the limits enforced while reading: the file part
at most ``--max-upload-mib``, every other field at most 64 KiB, the whole body at most
the file limit plus 1 MiB. A declared Content-Length over that is refused before
anything is read. The file is kept in memory (never on disk), in one buffer that
becomes the ``bytes`` handed to the decoder without another copy.
"""

import io
import math
from typing import Any, Dict, List, Optional, Tuple

from .errors import APIError

MIB = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (prompt, model, ...)
FORM_OVERHEAD = MIB  # multipart headers and the other fields, on top of the file limit
DRAIN_LIMIT = 64 * MIB  # read (and discard) this much of an oversized body so the client sees the 413


async def read_form(request: Any, max_file_bytes: int) -> Tuple[Dict[str, str], Tuple[str, bytes]]:
    """The multipart form, read as it arrives with the size limits enforced: returns
    (fields, (filename, bytes) of the ``file`` part). Nothing touches disk.

    Raises `APIError`: 400 (not multipart, malformed, no ``file`` part, the client
    left), 413 (the file or a field over its limit)."""
    from starlette.requests import ClientDisconnect

    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise APIError(400, "send the request as multipart/form-data with the recording in a 'file' field")
    max_total = max_file_bytes + FORM_OVERHEAD
    too_large = APIError(413, f"the upload is larger than this server's limit of {mb(max_file_bytes)} "
                              "(pylfm serve --max-upload-mib)", code="file_too_large", param="file")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_total:
        raise too_large  # refused before reading anything

    fields: Dict[str, str] = {}
    upload: List[Any] = []  # [filename, BytesIO] of the file part
    part: Dict[str, Any] = {}
    header: List[bytes] = [b"", b""]
    over: List[APIError] = []

    def on_part_begin() -> None:
        part.clear()
        # BytesIO.getvalue() hands over its buffer: the upload is never held twice
        part.update(headers={}, data=io.BytesIO(), size=0, limit=MAX_FIELD_BYTES)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header[0].strip().lower()] = header[1].strip()
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = disp.get(b"filename")
        if part["filename"] is not None:
            part["limit"] = max_file_bytes

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if over:
            return
        if part["size"] + (end - start) > part["limit"]:
            over.append(too_large if part.get("filename") is not None else
                        APIError(413, f"form field {part.get('name')!r} is longer than {MAX_FIELD_BYTES} bytes",
                                 param=part.get("name")))
            part["data"] = io.BytesIO()  # drop what was read
            return
        part["size"] += end - start
        part["data"].write(data[start:end])

    def on_part_end() -> None:
        if over:
            return
        name = part.get("name", "")
        if part.get("filename") is not None:
            if name == "file" and not upload:
                upload.extend([part["filename"].decode("utf-8", "replace"), part["data"]])
            return  # other file parts are ignored
        fields[name] = part["data"].getvalue().decode("utf-8", "replace")

    parser = MultipartParser(params[b"boundary"], callbacks={
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_total and not over:
                over.append(too_large)
            if over:
                if received > max_total + DRAIN_LIMIT:
                    break  # stop reading; the connection is closed after the answer
                continue  # keep reading (and dropping) so the client gets to see the 413
            parser.write(chunk)
        if not over:
            parser.finalize()
    except APIError:
        raise
    except ClientDisconnect:
        raise APIError(400, "the client disconnected during the upload") from None
    except Exception as e:  # a malformed body
        raise APIError(400, f"could not parse the multipart form: {e}") from None
    if over:
        raise over[0]
    if not upload:
        raise APIError(400, "no audio: send the recording as a file in the 'file' form field", param="file")
    filename, buf = upload
    return fields, (filename, buf.getvalue())


async def read_body(request: Any, limit: int, what: str, *, code: str = "body_too_large", hint: str = "") -> bytes:
    """The whole body, at most ``limit`` bytes: a declared Content-Length over it is
    refused before anything is read, a body that grows past it while arriving is refused
    then (413 with ``code``, naming ``what``, the limit and the ``hint``; a little more is
    read and dropped so that the client sees the answer). 400 when the client leaves
    during the upload."""
    from starlette.requests import ClientDisconnect

    too_large = APIError(413, f"the {what} is larger than this server's limit of {size(limit)}{hint}", code=code)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    parts: List[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                parts.clear()
                if received > limit + DRAIN_LIMIT:
                    break  # stop reading; the connection is closed after the answer
                continue
            parts.append(chunk)
    except ClientDisconnect:
        raise APIError(400, "the client disconnected during the upload") from None
    if received > limit:
        raise too_large
    return b"".join(parts)


def size(n: int) -> str:
    """``n`` bytes in KiB or MiB, as the limits are stated."""
    return f"{n / 1024:g} KiB" if n < MIB else mb(n)


def mb(n: int) -> str:
    return f"{n / MIB:g} MiB"


def flag(value: Optional[str], name: str) -> bool:
    """A boolean form field ("true"/"false", "1"/"0", ...; empty or absent is False)."""
    if value is None or value.strip() == "":
        return False
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise APIError(400, f"{name} must be true or false, got {value!r}", param=name)


def temperature(value: Optional[str]) -> float:
    """The ``temperature`` field: 0 (greedy) when empty or absent, else 0..2."""
    if value is None or value.strip() == "":
        return 0.0
    try:
        t = float(value)
    except ValueError:
        raise APIError(400, f"temperature must be a number, got {value!r}", param="temperature") from None
    if not math.isfinite(t):
        raise APIError(400, f"temperature must be a finite number between 0 and 2, got {value}", param="temperature")
    if not 0.0 <= t <= 2.0:
        raise APIError(400, f"temperature must be between 0 and 2, got {value}", param="temperature")
    return t

"""Split a JSON byte stream into one piece per record, without holding more than one record in memory.

Three framings: JSON Lines (one record per line); a top-level JSON array (`[{...}, {...}]`, what
`json.dump` and many dataset exports write to `.json` files); and pretty-printed objects one after
another (`json.dump(obj, indent=2)` of one record or of a metadata file, `jq .` over JSON Lines). They
are told apart by the stream's first non-blank byte and whether the first line is a whole JSON value.
All yield the same tuples, so the reader validates a record the same way whatever framed it, and all
stop with ReadError after the last complete record when the stream breaks.
"""
from __future__ import annotations

import itertools
import json
import re
from typing import IO, Iterable, Iterator, Optional

CHUNK = 1 << 20
_HEAD = 4096  # bytes of an oversized record kept for its quarantine preview
_BLANK = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"

Piece = tuple[int, Optional[bytes], int, bytes]
"""(position, record bytes or None if over the limit, size in bytes, head of an oversized record).
The position is the 1-based line number (JSON Lines), element number (array) or object number."""


class ReadError(Exception):
    """The stream broke after the last complete record (truncated archive, I/O error, broken framing)."""


def chunks(stream: IO[bytes]) -> Iterator[bytes]:
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # read1: one decompression step, nothing buffered lost
    while True:
        try:
            chunk = read(CHUNK)
        except Exception as exc:
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            return
        yield chunk


def records(stream: IO[bytes], limit: int) -> Iterator[Piece]:
    """The records of a JSON Lines file, the elements of a file whose first non-blank byte opens an
    array, or the objects of a file whose first line opens an object it does not close."""
    pieces = chunks(stream)
    head = b""
    for chunk in pieces:  # enough bytes to see the first non-blank one
        head += chunk
        if head.removeprefix(_BOM).lstrip(_BLANK):
            break
    start = head.removeprefix(_BOM).lstrip(_BLANK)
    if start.startswith(b"[") and _spans_lines(start):
        return array_elements(itertools.chain([head], pieces), limit)
    if start.startswith(b"{") and _spans_lines(start):
        return _objects_or_lines(itertools.chain([head], pieces), limit)
    return lines(itertools.chain([head], pieces), limit)


def _spans_lines(start: bytes) -> bool:
    """Whether the value `start` opens is more than its first line. Not where that line is a whole JSON
    value and more lines follow: a JSON Lines file (whose first record, if an array, is quarantined as
    no object), whose other records must still be read."""
    first, newline, rest = start.partition(b"\n")
    if not newline or not rest.strip(_BLANK):
        return True
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return True
    return False


def _objects_or_lines(source: Iterator[bytes], limit: int) -> Iterator[Piece]:
    """Pretty-printed objects one after another, if the first of them is valid JSON within the record
    limit; else JSON Lines whose first line is damaged (a cut record must not swallow the records
    after it). At most the limit and a chunk are held while the first object is looked for."""
    seen: list[bytes] = []
    probing = True

    def replayable() -> Iterator[bytes]:
        for chunk in source:
            if probing:
                seen.append(chunk)
                if sum(map(len, seen)) > limit + CHUNK:
                    return  # the probe sees an oversized first object; the lines framing reads on
            yield chunk

    objects = array_elements(replayable(), limit, in_array=False)
    try:
        first, error = next(objects, None), None
    except ReadError as exc:  # the stream broke before the first object was whole
        first, error = None, exc
    probing = False
    if first is None or first[1] is None or not _parses(first[1]):
        yield from lines(itertools.chain(seen, source), limit)
        if error is not None:
            raise error
        return
    seen.clear()
    yield first
    yield from objects


def _parses(data: bytes) -> bool:
    try:
        json.loads(data, strict=False)
    except (ValueError, RecursionError):
        return False
    return True


def lines(chunks: Iterable[bytes], limit: int) -> Iterator[Piece]:
    """One piece per line, without its newline. Every complete line before a broken tail is yielded."""
    number, pending, size, oversized = 0, b"", 0, False
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            size += len(piece)
            if not oversized:
                pending += piece
                if len(pending) > limit:
                    oversized, pending = True, pending[:_HEAD]
            if nl < 0:
                break
            number += 1
            yield (number, None, size, pending) if oversized else (number, pending, size, b"")
            pending, size, oversized = b"", 0, False
            start = nl + 1
    if size:
        number += 1
        yield (number, None, size, pending) if oversized else (number, pending, size, b"")


_OUTSIDE_STRING = re.compile(rb'[\[\]{}",]')
_INSIDE_STRING = re.compile(rb'["\\]')


def _string_end(chunk: bytes, pos: int) -> int:
    """Where the JSON string whose body starts at `pos` ends (after its closing quote); -1 if not in `chunk`."""
    while True:
        quote = chunk.find(b'"', pos)
        if quote < 0:
            return -1
        backslash = quote
        while chunk[backslash - 1] == 0x5C:  # stops at the opening quote at the latest
            backslash -= 1
        if (quote - backslash) % 2 == 0:  # not escaped
            return quote + 1
        pos = quote + 1


class _Element:
    """The bytes of the array element being scanned, cut to a preview once over the limit."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.size, self.oversized = limit, [], 0, False

    def add(self, part: bytes) -> None:
        self.size += len(part)
        if not self.oversized:
            self.parts.append(part)
            if self.size > self.limit:
                self.oversized, self.parts = True, [b"".join(self.parts)[:_HEAD]]

    def piece(self, position: int) -> Optional[Piece]:
        """This element as a piece, or None for a blank one (after a trailing comma)."""
        data = b"".join(self.parts)
        if self.oversized:
            return position, None, self.size, data.strip(_BLANK)
        data = data.strip(_BLANK)
        return (position, data, len(data), b"") if data else None


def array_elements(chunks: Iterable[bytes], limit: int, in_array: bool = True) -> Iterator[Piece]:
    """One piece per element of the top-level array the stream holds; with `in_array` False, one per
    top-level value of a stream of values (as if it were wrapped in brackets and a value also ended
    where its closing bracket brings the depth back to the top).

    Only strings and bracket depth are tracked, so a damaged element (a stray bracket) is still cut
    at the next top-level comma and left to the JSON parser to reject. A blank element (a trailing
    comma) is no record. A stream that ends inside the array, or holds more than blanks after it,
    raises ReadError after the elements before.
    """
    depth, in_string, escaped, number, closed = (0 if in_array else 1), False, False, 0, False
    element = _Element(limit)
    for chunk in chunks:
        pos, cut = 0, 0  # scan position; where the current element's unsaved bytes begin
        if escaped:  # the byte after a backslash that ended the previous chunk
            pos, escaped = 1, False
        while True:
            if closed:
                if chunk[pos:].strip(_BLANK):
                    raise ReadError(f"content after the JSON array's closing bracket (element {number})")
                break
            if depth == 0:  # before the array: a BOM and blanks, then its opening bracket
                rest = chunk[pos:].removeprefix(_BOM).lstrip(_BLANK)
                if not rest:
                    break
                if not rest.startswith(b"["):
                    raise ReadError("not a JSON array")
                pos, depth, cut = len(chunk) - len(rest) + 1, 1, len(chunk) - len(rest) + 1
                continue
            match = (_INSIDE_STRING if in_string else _OUTSIDE_STRING).search(chunk, pos)
            if match is None:
                break
            char, pos = match.group(), match.end()
            if in_string:
                if char == b"\\":
                    if pos == len(chunk):
                        escaped = True
                    pos += 1
                else:
                    in_string = False
            elif char == b'"':  # skip the whole string at once; one the chunk cuts is scanned on
                end = _string_end(chunk, pos)
                if end < 0:
                    in_string = True
                else:
                    pos = end
            elif char in b"[{":
                depth += 1
            elif depth > 1:  # inside the element: a closing bracket leaves a level, a comma stays
                if char != b",":
                    depth -= 1
                    if depth == 1 and not in_array:  # the value is whole
                        element.add(chunk[cut:pos])
                        piece = element.piece(number + 1)
                        if piece is not None:
                            number += 1
                            yield piece
                        element, cut = _Element(limit), pos
            elif char == b"}" or not in_array and char == b"]":  # stray at the top: part of a damaged element
                pass
            else:  # a top-level comma or the closing bracket ends the element
                element.add(chunk[cut:pos - 1])
                piece = element.piece(number + 1)
                if piece is not None:
                    number += 1
                    yield piece
                element, cut, closed = _Element(limit), pos, char == b"]"
        if depth and not closed:
            element.add(chunk[cut:])
    if depth and not closed:
        piece = element.piece(number + 1)
        if piece is not None:
            yield piece
            number += 1
        if in_array or depth > 1:
            raise ReadError(f"the stream ended inside the JSON {'array' if in_array else 'object'} "
                            f"(after {'element' if in_array else 'value'} {number})")

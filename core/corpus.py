"""Reading and checking XiaChuFang-format recipe corpora: one JSON object a line.

``check_line(raw)`` turns one raw line into a clean recipe or the reason it was rejected;
``open_corpus(path)`` opens .json/.jsonl, .gz or .zip inputs as a binary stream with a
progress position, held to Limits (inflated size, inflation ratio); ``iter_blocks`` cuts it into
blocks of whole lines in linear time, a line beyond the cap counted, not kept. Used by pipeline.prepare_data (in worker processes) and core.recipe_library.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path

import orjson

from core.recipe_format import dish_name

try:  # ISA-L's inflate: the same API as zlib's and gzip's, two to three times faster
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is in requirements.txt
    import gzip as _gzip
    import zlib as _zlib

# Every rejected line gets exactly one of these reasons (stats.json "rejected" keys).
REASONS = {
    "line_too_long": "the line is longer than the cap on a line (RECIPE_PREPARE_MAX_LINE_BYTES, 1 MiB)",
    "bad_utf8": "the line is not valid UTF-8",
    "blank": "empty line",
    "invalid_json": "not valid JSON (often a truncated line)",
    "not_object": "valid JSON but not an object",
    "missing_field": "recipeIngredient or recipeInstructions is absent",
    "wrong_type": "a field has the wrong type (ingredients/steps must be lists of strings)",
    "no_name": "no dish name in keywords, dish or name",
    "empty_ingredients": "no ingredient left after cleaning",
    "empty_instructions": "no step left after cleaning",
    "too_long": "the conversation is longer than the training length",
}

BOM = b"\xef\xbb\xbf"

# Removed from every string: control characters, zero-width and bidi marks, emoji variation
# selectors, BOM, lone surrogates, emoji (astral plane) and tag characters. Whitespace runs become one space.
_JUNK = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufe0e\ufe0f\ufeff"
    "\ud800-\udfff\U0001f000-\U0001faff\U000e0000-\U000e007f]+"
)
_SPACE = re.compile(r"[\s\u3000\xa0]+")


def clean_text(s: str) -> str:
    """Strip control characters, emoji and surrounding whitespace; collapse inner whitespace."""
    return _SPACE.sub(" ", _JUNK.sub("", s)).strip()


def _is_clean(raw: bytes | None, joined: str) -> bool:
    """True when every string joined by single spaces in `joined` is already what clean_text
    makes of it (no junk, no surrounding or double whitespace, not empty).

    isprintable() is False for every control, format (zero-width, bidi, BOM, tags) and
    non-space whitespace character, so the only whitespace left is ' ': a double space then
    means a double space inside a string, a leading or trailing space of one, or an empty
    one. The junk that is printable is U+FE0E, U+FE0F and emoji in U+1F000-1FAFF: astral-plane
    characters show as 4-byte UTF-8 lead bytes in the raw line, or as escaped surrogates."""
    return (
        raw is not None
        and b"\xf0" not in raw
        and (b"\\" not in raw or (b"\\ud" not in raw and b"\\uD" not in raw))
        and joined.isprintable()
        and "  " not in joined
        and joined[:1] not in ("", " ")
        and joined[-1] != " "
        and "\ufe0f" not in joined
        and "\ufe0e" not in joined
    )


@dataclass(slots=True)
class Recipe:
    """A validated, cleaned recipe."""

    name: str
    ingredients: list[str]
    steps: list[str]
    description: str = ""
    author: str = ""

    def as_corpus(self) -> dict:
        """The recipe in the corpus format (what recipe_format and the library read)."""
        return {
            "name": self.name,
            "dish": self.name,
            "keywords": [f"{self.name}的做法"],
            "recipeIngredient": self.ingredients,
            "recipeInstructions": self.steps,
            "description": self.description,
            "author": self.author,
        }


def fingerprint_bytes(name: str, ingredients: list[str]) -> bytes:
    """fingerprint() as 8 little-endian bytes (what the converter's workers collect)."""
    text = "\x1f".join((name, *sorted(ingredients)))
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def split_digest(name: str, ingredients: list[str], key: bytes) -> bytes:
    """16 bytes of BLAKE2b keyed by the run's seed: a dish's fingerprint for deduplication (the
    first 8, little-endian) and its split key (the last 8), from its name and ingredients (any order)."""
    text = "\x1f".join((name, *sorted(ingredients)))
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16, key=key).digest()


def seed_key(seed: int) -> bytes:
    """The BLAKE2b key of a split seed (ValueError for a seed of more than 64 digits)."""
    key = str(int(seed)).encode()
    if len(key) > 64:
        raise ValueError("--seed must have at most 64 digits")
    return key


def fingerprint(name: str, ingredients: list[str]) -> int:
    """64-bit digest of a dish: same name and same ingredients (any order) -> same digest."""
    return int.from_bytes(fingerprint_bytes(name, ingredients), "little")


def _strip_all(items: list) -> list[str] | None:
    try:
        return [x.strip() for x in items]
    except AttributeError:  # an item that is not a string
        return None


def check_recipe(obj, raw: bytes | None = None, meta: bool = True) -> Recipe | tuple[str, str]:
    """Validate and clean a parsed corpus object: a Recipe, or (reason, detail).

    raw: the line it was parsed from, which allows a fast path for lines without junk.
    meta=False skips cleaning description and author (not needed for training data)."""
    if type(obj) is not dict:
        return "not_object", type(obj).__name__
    ings = obj.get("recipeIngredient")
    steps = obj.get("recipeInstructions")
    if ings is None and "recipeIngredient" not in obj:
        return "missing_field", "recipeIngredient"
    if steps is None and "recipeInstructions" not in obj:
        return "missing_field", "recipeInstructions"
    if type(ings) is not list:
        return "wrong_type", f"recipeIngredient is {type(ings).__name__}"
    if type(steps) is not list:
        return "wrong_type", f"recipeInstructions is {type(steps).__name__}"
    for key in ("name", "dish", "description", "author"):
        v = obj.get(key)
        if v is not None and type(v) is not str:
            return "wrong_type", f"{key} is {type(v).__name__}"
    kws = obj.get("keywords")
    if kws is not None:
        if type(kws) is not list:
            return "wrong_type", f"keywords is {type(kws).__name__}"
        if kws and type(kws[0]) is not str:
            return "wrong_type", "keywords has a non-string item"
        if kws and kws[0].strip().lower() == "unknown":
            obj = {**obj, "keywords": kws[1:]}
    name = dish_name(obj)
    try:
        clean = bool(name) and _is_clean(raw, " ".join([*ings, *steps, name]))
    except TypeError:  # a non-string item
        clean = False
    if not clean:  # slow path: clean every string
        ings = _strip_all(ings)
        if ings is None:
            return "wrong_type", "recipeIngredient has a non-string item"
        steps = _strip_all(steps)
        if steps is None:
            return "wrong_type", "recipeInstructions has a non-string item"
        ings = [x for x in map(clean_text, ings) if x]
        steps = [x for x in map(clean_text, steps) if x]
        name = clean_text(name)
    if not name or name.lower() == "unknown":
        return "no_name", ""
    if not ings:
        return "empty_ingredients", ""
    if not steps:
        return "empty_instructions", ""
    if meta:
        return Recipe(name, ings, steps, clean_text(obj.get("description") or ""), clean_text(obj.get("author") or ""))
    return Recipe(name, ings, steps)


def parse_line_slow(raw: bytes):
    """After orjson refused a line: the object a lenient reader gets, or (reason, detail)."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    raw = raw.rstrip(b"\r")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _Failure("bad_utf8", f"byte {e.start}")
    if not text.strip():
        return _Failure("blank", "")
    try:
        return json.loads(text, strict=False)  # raw control characters inside strings
    except ValueError as e:
        return _Failure("invalid_json", str(e)[:80])
    except RecursionError:  # arrays or objects nested thousands deep
        return _Failure("invalid_json", "nested too deeply")


class _Failure(tuple):
    """(reason, detail) returned by parse_line_slow; distinct from any parsed JSON value."""

    def __new__(cls, reason: str, detail: str):
        return super().__new__(cls, (reason, detail))


def check_line(raw: bytes, meta: bool = True) -> Recipe | tuple[str, str]:
    """One raw line -> a clean Recipe or (reason, detail)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = parse_line_slow(raw)
        if type(obj) is _Failure:
            return obj
        return check_recipe(obj, None, meta)
    return check_recipe(obj, raw, meta)


# ---- opening inputs -------------------------------------------------------------------------
class CorpusError(ValueError):
    """The input cannot be read as a corpus; the message says what to do."""


# Caps that keep a hostile input (a decompression bomb, a file without newlines) from taking
# the machine's memory or hours: each can be changed by its environment variable.
MAX_LINE_BYTES = 1 << 20  # a recipe line is a few KB; longer lines are rejected (line_too_long)
MAX_INFLATION = 100  # JSON text inflates 3-10x; a member that inflates more is refused
MAX_INFLATED_BYTES = 64 << 30  # what a compressed input may inflate to in all
_SLACK = 8 << 20  # inflated bytes allowed beyond MAX_INFLATION x the compressed bytes read
LIMIT_ENV = {
    "line_bytes": "RECIPE_PREPARE_MAX_LINE_BYTES",
    "inflation": "RECIPE_PREPARE_MAX_INFLATION",
    "inflated_bytes": "RECIPE_PREPARE_MAX_INFLATED_BYTES",
}


@dataclass(frozen=True)
class Limits:
    line_bytes: int = MAX_LINE_BYTES
    inflation: float = MAX_INFLATION
    inflated_bytes: int = MAX_INFLATED_BYTES

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, each replaced by its environment variable (LIMIT_ENV) where set."""
        values = {}
        for field, var in LIMIT_ENV.items():
            raw = os.environ.get(var, "").strip()
            if not raw:
                continue
            try:
                value = float(raw) if field == "inflation" else int(raw)
            except ValueError:
                raise CorpusError(f"{var}={raw!r} is not a number; unset it or give a positive number") from None
            if value <= 0:
                raise CorpusError(f"{var}={raw!r} must be positive; unset it for the default")
            values[field] = value
        return cls(**values)


def _size(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):,.1f} GiB"


def damaged(what: str, why) -> CorpusError:
    """The error for a compressed input that cannot be read to its end, and what to do."""
    return CorpusError(f"{what} is damaged ({why}); download or copy it again")


class CorpusStream:
    """The bytes of a corpus: a plain file, a .gz, or every corpus member of a .zip one after
    the other (each ending in a newline, a BOM at its start removed). ``total`` and
    ``position()`` measure progress in the same unit; ``skipped`` names the archive members
    that are not corpus files (not read)."""

    def __init__(self, members, total: int, position, closers: list, skipped: list[str] | None = None):
        self._members = members  # an iterator of readers (read(n) -> bytes), one a member
        self.total, self.position, self.closers, self.skipped = total, position, closers, skipped or []
        self.plain: Path | None = None  # a plain file's path: its readers may read byte ranges (iter_ranges)
        self._cur = None
        self._start = False
        self._last = b"\n"

    def read(self, n: int) -> bytes:
        while True:
            if self._cur is None:
                self._cur = next(self._members, None)
                if self._cur is None:
                    return b""
                self._start = True
            data = self._cur.read(n)
            if not data:  # this member is done: end its last line
                self._cur = None
                if self._last != b"\n":
                    self._last = b"\n"
                    return b"\n"
                continue
            if self._start:
                self._start = False
                if data.startswith(BOM):
                    data = data[len(BOM) :]
                    if not data:
                        continue
            self._last = data[-1:]
            return data

    def close(self) -> None:
        for c in reversed(self.closers):
            c.close()


class _Inflating:
    """A decompressing reader held to the Limits: what it inflates is counted against the
    compressed bytes consumed (``compressed()``) and the cap on the inflated size; its errors
    become CorpusErrors that say what to do."""

    def __init__(self, f, what: str, compressed, limits: Limits, counter: list):
        self.f, self.what, self.compressed, self.limits = f, what, compressed, limits
        self.counter = counter  # [bytes inflated so far], shared by the members of one input

    def read(self, n: int) -> bytes:
        try:
            data = self.f.read(n)
        except CorpusError:
            raise
        except (OSError, EOFError, _zlib.error, zipfile.BadZipFile) as e:
            raise damaged(self.what, e) from None
        self.counter[0] += len(data)
        out, lim = self.counter[0], self.limits
        if out > lim.inflated_bytes:
            raise CorpusError(
                f"{self.what} inflates to more than {_size(lim.inflated_bytes)}, the cap on an inflated "
                f"corpus; if it really is one, raise {LIMIT_ENV['inflated_bytes']} (bytes)"
            )
        if out > lim.inflation * self.compressed() + _SLACK:
            raise CorpusError(
                f"{self.what} inflates more than {lim.inflation:g}x ({_size(out)} from "
                f"{_size(self.compressed())} compressed): not a text corpus (a decompression bomb?); "
                f"if it really is one, raise {LIMIT_ENV['inflation']}"
            )
        return data


def open_corpus(path: str | os.PathLike, limits: Limits | None = None) -> CorpusStream:
    """Open a .json/.jsonl (one object a line), .gz or .zip corpus for binary reading. A zip's
    .json/.jsonl members are all read, in archive order (every member where none is named so)."""
    path = Path(path)
    limits = limits or Limits()
    if not path.is_file():
        raise CorpusError(f"input {path} does not exist or is not a file")
    name = path.name.lower()
    if name.endswith(".zip"):
        return _open_zip(path, limits)
    raw = open(path, "rb")
    total = os.fstat(raw.fileno()).st_size
    if name.endswith(".gz"):
        f = _Inflating(_gzip.GzipFile(fileobj=raw, mode="rb"), str(path), raw.tell, limits, [0])
        return CorpusStream(iter([f]), total, raw.tell, [raw])
    stream = CorpusStream(iter([raw]), total, raw.tell, [raw])
    stream.plain = path
    return stream


def iter_ranges(path: str | os.PathLike, size: int):
    """Cut a plain file into byte ranges (start, end) of whole lines of about `size` bytes, a
    BOM at its start left out: each range but the last ends after a newline. Only the bytes
    around each cut are read (a line that crosses a cut is scanned to its end, not held), so
    that the reader of each range (a worker process) reads the file itself."""
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        pos = len(BOM) if f.read(len(BOM)) == BOM else 0
        while pos < total:
            at = pos + size - 1  # the last byte of a range of `size` bytes: a newline ends it there
            if at >= total - 1:
                yield pos, total
                return
            f.seek(at)
            end = total
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                nl = chunk.find(b"\n")
                if nl >= 0:
                    end = at + nl + 1
                    break
                at += len(chunk)
            yield pos, end
            pos = end


class _Range:
    """Bytes [start, end) of a file as a stream (read(n) -> bytes)."""

    def __init__(self, f, start: int, end: int):
        self.f, self.left = f, end - start
        f.seek(start)

    def read(self, n: int) -> bytes:
        data = self.f.read(min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data


def read_range(path: str | os.PathLike, start: int, end: int, size: int, max_line: int):
    """The lines of bytes [start, end) of a file (a range of iter_ranges): one bytes object
    when the range is at most size + max_line bytes, else the blocks and Overlong lines of
    iter_blocks over it (memory of about size + max_line whatever the range)."""
    with open(path, "rb") as f:
        if end - start <= size + max_line:
            f.seek(start)
            yield f.read(end - start)
            return
        yield from iter_blocks(_Range(f, start, end), size, max_line)


def _open_zip(path: Path, limits: Limits) -> CorpusStream:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CorpusError(f"{path} is not a readable zip file ({e})") from None
    files = [m for m in zf.infolist() if not m.is_dir()]
    members = [m for m in files if m.filename.lower().endswith((".json", ".jsonl"))] or files
    if not members:
        zf.close()
        raise CorpusError(f"{path} contains no file; expected a .json/.jsonl corpus inside")
    for m in members:
        why = None
        if m.flag_bits & 0x1:
            why = f"{m.filename} is encrypted; unzip it with its password first"
        elif m.file_size > limits.inflation * m.compress_size + _SLACK:
            why = (
                f"{m.filename} says it inflates {m.file_size / max(m.compress_size, 1):,.0f}x ({_size(m.file_size)} "
                f"from {_size(m.compress_size)}), more than the {limits.inflation:g}x of a text corpus (a "
                f"decompression bomb?); if it really is one, raise {LIMIT_ENV['inflation']}"
            )
        if why:
            zf.close()
            raise CorpusError(f"{path}: {why}")
    declared = sum(m.file_size for m in members)
    if declared > limits.inflated_bytes:
        zf.close()
        raise CorpusError(
            f"{path} says it inflates to {_size(declared)}, more than the cap of "
            f"{_size(limits.inflated_bytes)}; if it really is a corpus, raise "
            f"{LIMIT_ENV['inflated_bytes']} (bytes)"
        )
    counter = [0]
    closers = [zf]

    def readers():
        before = 0  # compressed bytes of the members already read
        for m in members:
            what = f"{path}: {m.filename}"
            if m.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
                f = _ZipMember(path, m)
                consumed = f.consumed
            else:  # bzip2, lzma: Python's own reader (how much it consumed is not known)
                f = zf.open(m)
                consumed = (lambda size: lambda: size)(m.compress_size)
            closers.append(f)
            yield _Inflating(f, what, (lambda b, c: lambda: b + c())(before, consumed), limits, counter)
            f.close()
            before += m.compress_size

    return CorpusStream(
        readers(), declared, lambda: counter[0], closers, [m.filename for m in files if m not in members]
    )


class _ZipMember:
    """A deflated or stored zip member as a stream: its raw bytes through ISA-L's inflate
    (zipfile would use zlib's), checked against its CRC-32 and size at the end."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        self.path, self.info = path, info
        self.f = open(path, "rb")
        self.f.seek(info.header_offset)
        head = self.f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            self.f.close()
            raise CorpusError(f"{path} is not a readable zip file (no local header for {info.filename})")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        self.f.seek(info.header_offset + 30 + name_len + extra_len)
        self.left = info.compress_size  # compressed bytes not read yet
        self.inflate = _zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        self.tail = b""  # read, not yet inflated
        self.crc = self.pos = 0
        self.done = False

    def _damaged(self, why: str) -> CorpusError:
        return damaged(f"{self.path}: {self.info.filename}", why)

    def consumed(self) -> int:
        """Compressed bytes inflated so far."""
        return self.info.compress_size - self.left - len(self.tail)

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 20
        while not self.done:
            if not self.tail and self.left:
                self.tail = self.f.read(min(self.left, 1 << 16))
                if not self.tail:
                    raise self._damaged("it ends early")
                self.left -= len(self.tail)
            if self.inflate is None:
                out, self.tail = self.tail[:n], self.tail[n:]
            else:
                try:
                    out = self.inflate.decompress(self.tail, n)
                except _zlib.error as e:
                    raise self._damaged(str(e)) from None
                self.tail = self.inflate.unconsumed_tail
            if not self.tail and not self.left:
                if self.inflate is not None:
                    out += self.inflate.flush()
                self.done = True
            self.crc = _zlib.crc32(out, self.crc)
            self.pos += len(out)
            if self.done and (self.crc != self.info.CRC or self.pos != self.info.file_size):
                raise self._damaged("CRC-32 or size does not match")
            if out:
                return out
        return b""

    def close(self) -> None:
        self.f.close()


@dataclass
class Overlong:
    """A line longer than the cap (Limits.line_bytes), skipped without being held: its length
    in bytes (without the newline) and its first bytes."""

    length: int
    head: bytes

    def __len__(self) -> int:
        return self.length


def iter_blocks(stream: CorpusStream, size: int = 1 << 20, max_line: int = MAX_LINE_BYTES):
    """Yield blocks of whole lines of about `size` bytes (each ends with a newline, but the
    last may not) and an Overlong in place of each line longer than `max_line` that does not
    fit in one read (a longer line inside a block is left to the reader of the block).

    Linear time and memory of about size + max_line whatever the input: a line is joined once,
    when it ends, and a line beyond the cap is counted, not kept."""
    held: list[bytes] = []  # the start of a line not ended yet
    held_len = 0
    skip: Overlong | None = None

    def hold(rest: bytes) -> None:
        nonlocal held, held_len, skip
        if len(rest) > max_line:
            skip, held, held_len = Overlong(len(rest), rest[:120]), [], 0
        elif rest:
            held, held_len = [rest], len(rest)

    while True:
        chunk = stream.read(size)
        if not chunk:
            break
        pos = 0
        if skip is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                skip.length += len(chunk)
                continue
            skip.length += nl
            yield skip
            skip, pos = None, nl + 1
        if held:
            nl = chunk.find(b"\n", pos)
            length = held_len + (nl if nl >= 0 else len(chunk)) - pos
            if length > max_line:
                skip = Overlong(length, (b"".join(held) + chunk[pos : pos + 120])[:120])
                held, held_len = [], 0
                if nl < 0:
                    continue
                yield skip
                skip, pos = None, nl + 1
            elif nl < 0:
                held.append(chunk[pos:] if pos else chunk)
                held_len = length
                continue
        cut = chunk.rfind(b"\n", pos)
        if cut < 0:  # nothing held here: the rest of the chunk starts a line
            hold(chunk[pos:] if pos else chunk)
            continue
        piece = chunk if pos == 0 and cut == len(chunk) - 1 else chunk[pos : cut + 1]
        if held:
            piece = b"".join((*held, piece))
            held, held_len = [], 0
        yield piece
        hold(chunk[cut + 1 :])
    if skip is not None:
        yield skip
    elif held:
        yield b"".join(held)


def iter_recipes(path: str | os.PathLike):
    """Yield the valid recipes of a corpus as corpus-format dicts (no dedup)."""
    stream = open_corpus(path)
    try:
        for block in iter_blocks(stream):
            if isinstance(block, Overlong):
                continue
            for raw in block.split(b"\n"):
                if raw.strip():
                    r = check_line(raw)
                    if isinstance(r, Recipe):
                        yield r.as_corpus()
    finally:
        stream.close()

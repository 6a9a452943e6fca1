"""Reading and checking XiaChuFang-format recipe corpora: one JSON object a line.

``check_line(raw)`` turns one raw line into a clean recipe or the reason it was rejected;
``open_corpus(path)`` opens .json/.jsonl, .gz or .zip inputs as a binary stream with a
progress position. Used by pipeline.prepare_data (in worker processes) and backend.library.
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

from pipeline.recipe_format import dish_name

try:  # ISA-L's inflate: the same API as zlib's and gzip's, two to three times faster
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is in requirements.txt
    import gzip as _gzip
    import zlib as _zlib

# Every rejected line gets exactly one of these reasons (stats.json "rejected" keys).
REASONS = {
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
    return (raw is not None and b"\xf0" not in raw
            and (b"\\" not in raw or (b"\\ud" not in raw and b"\\uD" not in raw)) and joined.isprintable()
            and "  " not in joined and joined[:1] not in ("", " ") and joined[-1] != " "
            and "\ufe0f" not in joined and "\ufe0e" not in joined)


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
        raw = raw[len(BOM):]
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


@dataclass
class CorpusStream:
    file: object  # binary file-like with read()
    total: int  # bytes to read (compressed size for .gz), for progress
    position: object  # () -> bytes read so far, same unit as total
    closers: list

    def close(self) -> None:
        for c in reversed(self.closers):
            c.close()


def open_corpus(path: str | os.PathLike) -> CorpusStream:
    """Open a .json/.jsonl (one object a line), .gz or .zip corpus for binary reading."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"input {path} does not exist or is not a file")
    name = path.name.lower()
    if name.endswith(".zip"):
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise CorpusError(f"{path} is not a readable zip file ({e})") from None
        members = [m for m in zf.infolist() if not m.is_dir()]
        jsons = [m for m in members if m.filename.lower().endswith((".json", ".jsonl"))] or members
        if not jsons:
            raise CorpusError(f"{path} contains no file; expected a .json/.jsonl corpus inside")
        member = max(jsons, key=lambda m: m.file_size)
        if member.flag_bits & 0x1:
            raise CorpusError(f"{path}: {member.filename} is encrypted; unzip it with its password first")
        if member.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
            f = _ZipMember(path, member)
            return CorpusStream(f, member.file_size, f.tell, [zf, f])
        f = zf.open(member)  # bzip2, lzma: Python's own reader
        return CorpusStream(_Checked(f, path), member.file_size, f.tell, [zf, f])
    raw = open(path, "rb")
    total = os.fstat(raw.fileno()).st_size
    if name.endswith(".gz"):
        f = _gzip.GzipFile(fileobj=raw, mode="rb")
        return CorpusStream(_Checked(f, path), total, raw.tell, [raw, f])
    return CorpusStream(raw, total, raw.tell, [raw])


def damaged(what: str, why) -> CorpusError:
    """The error for a compressed input that cannot be read to its end, and what to do."""
    return CorpusError(f"{what} is damaged ({why}); download or copy it again")


class _ZipMember:
    """A deflated or stored zip member as a stream: its raw bytes through ISA-L's inflate
    (zipfile would use zlib's), checked against its CRC-32 and size at the end."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        self.path, self.info = path, info
        self.f = open(path, "rb")
        self.f.seek(info.header_offset)
        head = self.f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
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

    def read(self, n: int = -1) -> bytes:
        n = n if n and n > 0 else 1 << 20
        while not self.done:
            if not self.tail and self.left:
                self.tail = self.f.read(min(self.left, 1 << 18))
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

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.f.close()


class _Checked:
    """A decompressing reader whose errors become CorpusErrors that say what to do."""

    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except (OSError, EOFError, _zlib.error, zipfile.BadZipFile) as e:
            raise damaged(str(self.path), e) from None


def iter_blocks(stream: CorpusStream, size: int = 1 << 20):
    """Yield byte blocks that end at a line boundary (the last one may not); BOM removed."""
    rest = b""
    first = True
    while True:
        chunk = stream.file.read(size)
        if not chunk:
            break
        if first:
            first = False
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM):]
        buf = rest + chunk if rest else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
            continue
        rest = buf[cut + 1:]
        yield buf[: cut + 1]
    if rest:
        yield rest


def iter_recipes(path: str | os.PathLike):
    """Yield the valid recipes of a corpus as corpus-format dicts (no dedup)."""
    stream = open_corpus(path)
    try:
        for block in iter_blocks(stream):
            for raw in block.split(b"\n"):
                if raw.strip():
                    r = check_line(raw)
                    if isinstance(r, Recipe):
                        yield r.as_corpus()
    finally:
        stream.close()

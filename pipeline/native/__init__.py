"""The compiled fast path of the corpus converter (recipe_convert.c), built on first use.

``load()`` compiles the C sources here with the system C compiler (``cc``; no Python headers
needed) into a cache folder keyed by the sources' hash, and returns the library loaded through
ctypes, or None, with the reason in ``why_not()``, where there is no compiler, the build fails,
or RECIPE_NATIVE=0. The converter then runs its pure-Python path, which gives the same bytes
(tests/test_native_convert.py), only slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = sorted(HERE.glob("*.c"))  # recipe_convert.c (the converter), blake2b64.c; headers beside them
CFLAGS = ("-O2", "-std=c99", "-shared", "-fPIC", "-Wall", "-Werror")
_state: dict = {}


def cache_dir() -> Path:
    """RECIPE_NATIVE_CACHE, else $XDG_CACHE_HOME or ~/.cache, /recipe-assistant."""
    if os.environ.get("RECIPE_NATIVE_CACHE"):
        return Path(os.environ["RECIPE_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recipe-assistant"


def library_path() -> Path:
    text = b"".join(p.read_bytes() for p in sorted([*HERE.glob("*.c"), *HERE.glob("*.h")]))
    tag = hashlib.sha256(text + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return cache_dir() / f"recipe_convert-{tag}-{platform.machine()}-{sys.platform}.so"


def build(target: Path) -> None:
    """Compile the source into target (atomically: concurrent builds are harmless)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH; install one (apt install gcc) for the "
                           "fast converter")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *CFLAGS, "-o", tmp, *map(str, SOURCES)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load():
    """The ctypes library, or None (see why_not())."""
    if "lib" in _state:
        return _state["lib"]
    lib, why = None, ""
    if os.environ.get("RECIPE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        why = "turned off by RECIPE_NATIVE=0"
    else:
        try:
            path = library_path()
            if not path.exists():
                build(path)
            lib = _declare(ctypes.CDLL(str(path)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            why = f"compiled converter unavailable ({e}); using the pure-Python path"
    _state.update(lib=lib, why=why)
    return lib


def why_not() -> str:
    """Why load() returned None ("" when it did not)."""
    load()
    return _state["why"]


def reset() -> None:
    """Forget the loaded library (tests)."""
    _state.clear()


def _declare(lib):
    c = ctypes
    lib.rc_blake2b64.argtypes = [c.c_char_p, c.c_size_t]
    lib.rc_blake2b64.restype = c.c_uint64
    lib.rc_mix.argtypes = [c.c_uint64]
    lib.rc_mix.restype = c.c_uint64
    lib.rc_init.argtypes = [c.c_char_p, c.c_char_p, c.c_uint64, c.c_int64, c.c_int64, c.c_int,
                            c.POINTER(c.c_char_p), c.POINTER(c.c_size_t), c.POINTER(c.c_int64)]
    lib.rc_init.restype = c.c_int
    lib.rc_cache_clear.argtypes = []
    lib.rc_cache_clear.restype = None
    lib.rc_count_lines.argtypes = [c.c_void_p, c.c_size_t]
    lib.rc_count_lines.restype = c.c_long
    lib.rc_convert.argtypes = [c.c_void_p, c.c_size_t, c.c_long] + [c.c_void_p] * 7 + [
        c.c_void_p, c.c_size_t, c.POINTER(c.c_size_t)]
    lib.rc_convert.restype = c.c_long
    return lib


"""The one place that knows paths, environment variables and defaults.

Values come from, lowest to highest priority: built-in defaults, ``<workspace>/settings.toml``,
environment variables (``RECIPE_*``). The workspace itself comes only from ``RECIPE_WORKSPACE``
(default ``./workspace`` relative to the project root).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("auto", "turbomind", "pytorch", "transformers", "openai", "library")
SETTINGS_FILE = "settings.toml"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message says which and what is allowed."""


@dataclass(frozen=True)
class Settings:
    workspace: Path
    model: str = ""  # path of the model to chat with; empty = none (library answers)
    engine: str = "auto"
    admin_password: str = ""  # empty = generated at first start (backend.auth)
    corpus: str = ""  # path of the XiaChuFang corpus for the Admin page's prepare stage
    base_model: str = ""  # base model folder for training
    ceval_data: str = ""  # OpenCompass data folder holding ceval/formal_ceval
    max_new_tokens: int = 1024
    session_len: int = 4096
    cache_max_entry_count: float = 0.5  # TurboMind KV-cache share of free GPU memory
    quant_policy: int = 0  # TurboMind KV cache quantisation: 0, 4 or 8
    device: str = "auto"  # transformers engine: auto, cpu, cuda
    api_base: str = ""  # openai engine: an OpenAI-compatible server, e.g. http://127.0.0.1:23333/v1
    api_model: str = ""  # openai engine: the served model (empty = the first the server lists)
    source: dict = field(default_factory=dict, compare=False)  # key -> "default" | "file" | "env"

    # ---- derived paths -------------------------------------------------------------------
    @property
    def app_db(self) -> Path:
        """History (conversations, messages, feedback) and jobs."""
        return self.workspace / "app.db"

    @property
    def library_db(self) -> Path:
        """The recipe library (recipes + full-text index)."""
        return self.workspace / "library.db"

    @property
    def data_dir(self) -> Path:
        return self.workspace / "data"

    @property
    def runs_dir(self) -> Path:
        return self.workspace / "runs"

    @property
    def models_dir(self) -> Path:
        return self.workspace / "models"

    @property
    def eval_dir(self) -> Path:
        return self.workspace / "eval"

    @property
    def logs_dir(self) -> Path:
        return self.workspace / "logs"

    def ensure_dirs(self) -> None:
        for d in (self.workspace, self.data_dir, self.runs_dir, self.models_dir, self.eval_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    def inside_workspace(self, user_path: str | os.PathLike) -> Path:
        """Resolve a path typed by a user; relative paths are taken from the workspace.

        Raises SettingsError when the result lies outside the workspace (``..``, absolute
        paths elsewhere, symlinks pointing out)."""
        resolved = self._absolute(user_path)
        root = self.workspace.resolve()
        if resolved != root and root not in resolved.parents:
            raise SettingsError(f"path '{user_path}' is outside the workspace {root}; choose a path inside it")
        return resolved

    def user_path(self, user_path: str | os.PathLike, allowed: tuple = ()) -> Path:
        """Like inside_workspace, but a path equal to one of ``allowed`` (paths the operator
        configured in settings, or files shipped with the project) is accepted wherever it is."""
        wanted = self._absolute(user_path)
        for a in allowed:
            if a and self._absolute(a) == wanted:
                return wanted
        return self.inside_workspace(user_path)

    def _absolute(self, path: str | os.PathLike) -> Path:
        """``path`` resolved, a relative one taken from the workspace."""
        p = Path(path).expanduser()
        return (p if p.is_absolute() else self.workspace / p).resolve()


# key -> (environment variable, type)
_KEYS: dict[str, tuple[str, type]] = {
    "model": ("RECIPE_MODEL", str),
    "engine": ("RECIPE_ENGINE", str),
    "admin_password": ("RECIPE_ADMIN_PASSWORD", str),
    "corpus": ("RECIPE_CORPUS", str),
    "base_model": ("RECIPE_BASE_MODEL", str),
    "ceval_data": ("RECIPE_CEVAL_DATA", str),
    "max_new_tokens": ("RECIPE_MAX_NEW_TOKENS", int),
    "session_len": ("RECIPE_SESSION_LEN", int),
    "cache_max_entry_count": ("RECIPE_CACHE_MAX_ENTRY_COUNT", float),
    "quant_policy": ("RECIPE_QUANT_POLICY", int),
    "device": ("RECIPE_DEVICE", str),
    "api_base": ("RECIPE_API_BASE", str),
    "api_model": ("RECIPE_API_MODEL", str),
}
API_KEY_VAR = "RECIPE_API_KEY"  # the openai engine's key: here or in Streamlit secrets, never in settings
ENV_VARS = {"workspace": "RECIPE_WORKSPACE", **{k: v[0] for k, v in _KEYS.items()}}


def _convert(key: str, raw, origin: str):
    typ = _KEYS[key][1]
    try:
        if typ is str:
            return str(raw).strip()
        if isinstance(raw, bool):
            raise ValueError
        return typ(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{origin}: {key} must be a {typ.__name__}, got {raw!r}") from None


def _validate(values: dict, source: dict) -> None:
    def where(k):
        return f"{_KEYS[k][0]} (from {source[k]})" if source.get(k) != "default" else k

    if values["engine"] not in ENGINES:
        raise SettingsError(
            f"{where('engine')}={values['engine']!r} is not an engine; allowed values: {', '.join(ENGINES)}"
        )
    if values["quant_policy"] not in (0, 4, 8):
        raise SettingsError(f"{where('quant_policy')}={values['quant_policy']!r}; allowed values: 0, 4, 8")
    if not 0 < values["cache_max_entry_count"] <= 1:
        raise SettingsError(f"{where('cache_max_entry_count')} must be in (0, 1]")
    if values["device"] not in ("auto", "cpu", "cuda"):
        raise SettingsError(f"{where('device')}={values['device']!r}; allowed values: auto, cpu, cuda")
    for k in ("max_new_tokens", "session_len"):
        if values[k] <= 0:
            raise SettingsError(f"{where(k)} must be a positive integer")


def api_key(environ: dict | None = None) -> str:
    """The OpenAI-compatible server's key: ``RECIPE_API_KEY``, else ``api_key`` (or
    ``RECIPE_API_KEY``) in .streamlit/secrets.toml; "" when none. Kept out of Settings so it is
    never shown (the System panel and logs print settings) nor written to settings.toml."""
    env = os.environ if environ is None else environ
    if env.get(API_KEY_VAR):
        return env[API_KEY_VAR]
    try:
        import streamlit as st

        if st.secrets.load_if_toml_exists():
            return str(st.secrets.get("api_key") or st.secrets.get(API_KEY_VAR) or "")
    except Exception:  # noqa: BLE001 - no streamlit or unreadable secrets: no key
        pass
    return ""


def load_settings(environ: dict | None = None) -> Settings:
    """Read settings from the workspace's settings.toml and the environment."""
    env = os.environ if environ is None else environ
    ws = Path(env.get("RECIPE_WORKSPACE") or PROJECT_ROOT / "workspace").expanduser()
    if not ws.is_absolute():
        ws = (Path.cwd() / ws)
    ws = ws.resolve()
    defaults = {f.name: f.default for f in fields(Settings) if f.name in _KEYS}
    values = dict(defaults)
    source = {k: "default" for k in values}
    file = ws / SETTINGS_FILE
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"{file} is not valid TOML: {e}") from None
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise SettingsError(f"{file}: unknown keys {unknown}; known keys: {', '.join(_KEYS)}")
        for k, raw in data.items():
            values[k] = _convert(k, raw, str(file))
            source[k] = "file"
    for k, (var, _) in _KEYS.items():
        if var in env and env[var] != "":
            values[k] = _convert(k, env[var], var)
            source[k] = "env"
    _validate(values, source)
    return Settings(workspace=ws, source=source, **values)


def save_settings(settings: Settings, **changes) -> Settings:
    """Write changed keys into <workspace>/settings.toml (atomically) and return new settings.

    Environment variables still win over the file, as on every load."""
    file = settings.workspace / SETTINGS_FILE
    data = {}
    if file.exists():
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if k not in _KEYS:
            raise SettingsError(f"unknown setting {k!r}")
        data[k] = v
    lines = []
    for k, v in data.items():
        if isinstance(v, str):
            v = v.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{k} = "{v}"')
        else:
            lines.append(f"{k} = {v}")
    from backend.fileio import atomic_write_text

    settings.workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, "\n".join(lines) + "\n")
    return load_settings({**os.environ, "RECIPE_WORKSPACE": str(settings.workspace)})

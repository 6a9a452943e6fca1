"""The one place that knows paths, environment variables and defaults.

Values come from, lowest to highest priority: built-in defaults, ``<workspace>/settings.toml``,
environment variables (``RECIPE_*``). The workspace itself comes only from ``RECIPE_WORKSPACE``
(default ``./workspace`` relative to the project root).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from pydantic import ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("auto", "turbomind", "pytorch", "transformers", "openai", "library")
SETTINGS_FILE = "settings.toml"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message says which and what is allowed."""


@dataclass(frozen=True)
class Settings:
    workspace: Path
    # the values of SettingValues' keys (their defaults, types and allowed values are there)
    model: str
    engine: str
    admin_password: str
    corpus: str
    base_model: str
    ceval_data: str
    max_new_tokens: int
    session_len: int
    cache_max_entry_count: float
    quant_policy: int
    device: str
    api_base: str
    api_model: str
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


class SettingValues(BaseSettings):
    """The keys of settings.toml and their ``RECIPE_*`` environment variables: types, defaults and
    allowed values in one place. pydantic-settings reads them in order of priority: environment
    variables (empty ones ignored), then settings.toml, then these defaults."""

    model_config = SettingsConfigDict(
        env_prefix="RECIPE_",
        env_ignore_empty=True,
        extra="forbid",
        str_strip_whitespace=True,
        coerce_numbers_to_str=True,
        validate_default=True,
    )

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

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"not an engine; allowed values: {', '.join(ENGINES)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda"):
            raise ValueError("allowed values: auto, cpu, cuda")
        return v

    @field_validator("quant_policy")
    @classmethod
    def _quant_policy(cls, v: int) -> int:
        if v not in (0, 4, 8):
            raise ValueError("allowed values: 0, 4, 8")
        return v

    @field_validator("cache_max_entry_count")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("max_new_tokens", "session_len")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive integer")
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        environ, file = _reading.get()
        return _EnvironSource(settings_cls, environ), TomlConfigSettingsSource(settings_cls, toml_file=file)


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (load_settings(environ))."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env_vars = parse_env_vars(environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


_reading: ContextVar[tuple[Mapping[str, str], Path]] = ContextVar("settings_reading")
_KEYS = tuple(SettingValues.model_fields)
API_KEY_VAR = "RECIPE_API_KEY"  # the openai engine's key: here or in Streamlit secrets, never in settings
ENV_VARS = {"workspace": "RECIPE_WORKSPACE", **{k: f"RECIPE_{k.upper()}" for k in _KEYS}}


def _settings_error(e: ValidationError, file: Path, env: Mapping[str, str]) -> SettingsError:
    """One message naming each bad key where it came from, the value and what is allowed."""
    problems = []
    for err in e.errors():
        key = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "extra_forbidden":
            problems.append(f"{file}: unknown keys ['{key}']; known keys: {', '.join(_KEYS)}")
            continue
        var = ENV_VARS.get(key, key)
        where = f"{var} (from env)" if env.get(var, "") != "" else f"{file}: {key}"
        what = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("int_parsing", "float_parsing", "int_from_float", "int_type", "float_type"):
            what = f"must be {'a number' if 'float' in err['type'] else 'an integer'}"
        problems.append(f"{where}={err['input']!r}: {what}")
    return SettingsError("; ".join(problems))


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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the workspace's settings.toml and the environment (``environ``,
    default os.environ)."""
    env = os.environ if environ is None else environ
    ws = Path(env.get("RECIPE_WORKSPACE") or PROJECT_ROOT / "workspace").expanduser()
    if not ws.is_absolute():
        ws = Path.cwd() / ws
    ws = ws.resolve()
    file = ws / SETTINGS_FILE
    token = _reading.set((env, file))
    try:
        values = SettingValues()
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{file} is not valid TOML: {e}; fix or delete it") from None
    except ValidationError as e:
        raise _settings_error(e, file, env) from None
    finally:
        _reading.reset(token)
    source = {
        k: "env" if env.get(ENV_VARS[k], "") != "" else "file" if k in values.model_fields_set else "default"
        for k in _KEYS
    }
    return Settings(workspace=ws, source=source, **values.model_dump())


def save_settings(settings: Settings, **changes) -> Settings:
    """Write changed keys into <workspace>/settings.toml (tomli-w, atomically) and return new settings.

    Environment variables still win over the file, as on every load."""
    from core.fileio import atomic_write_text

    file = settings.workspace / SETTINGS_FILE
    data = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"{file} is not valid TOML: {e}; fix or delete it") from None
    for k, v in changes.items():
        if k not in _KEYS:
            raise SettingsError(f"unknown setting {k!r}; known keys: {', '.join(_KEYS)}")
        data[k] = v
    settings.workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, tomli_w.dumps(data))
    return load_settings({**os.environ, "RECIPE_WORKSPACE": str(settings.workspace)})

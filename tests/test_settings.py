"""Settings: defaults, settings.toml, environment overrides, clear errors, workspace paths."""

import tomllib

import pytest

from core.settings import ENGINES, SettingsError, load_settings, save_settings


def test_defaults(workspace):
    s = load_settings()
    assert s.workspace == workspace.resolve()
    assert s.engine == "auto" and s.model == "" and s.admin_password == ""
    assert s.app_db == workspace.resolve() / "app.db"
    assert all(v == "default" for v in s.source.values())


def test_file_is_read_and_env_overrides_file(workspace, monkeypatch):
    (workspace / "settings.toml").write_text('engine = "library"\nmodel = "/models/a"\nmax_new_tokens = 256\n')
    s = load_settings()
    assert (s.engine, s.model, s.max_new_tokens) == ("library", "/models/a", 256)
    assert s.source["engine"] == "file"
    monkeypatch.setenv("RECIPE_ENGINE", "transformers")
    monkeypatch.setenv("RECIPE_MAX_NEW_TOKENS", "64")
    s = load_settings()
    assert (s.engine, s.model, s.max_new_tokens) == ("transformers", "/models/a", 64)
    assert s.source["engine"] == "env" and s.source["model"] == "file"


def test_bad_engine_names_allowed_values(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ENGINE", "gpu9")
    with pytest.raises(SettingsError) as e:
        load_settings()
    msg = str(e.value)
    assert "RECIPE_ENGINE" in msg and "gpu9" in msg
    for name in ENGINES:
        assert name in msg


@pytest.mark.parametrize(
    "var,value,needle",
    [
        ("RECIPE_MAX_NEW_TOKENS", "lots", "int"),
        ("RECIPE_QUANT_POLICY", "3", "0, 4, 8"),
        ("RECIPE_CACHE_MAX_ENTRY_COUNT", "2", "(0, 1]"),
        ("RECIPE_DEVICE", "tpu", "cpu"),
    ],
)
def test_other_bad_values(workspace, monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=None) as e:
        load_settings()
    assert needle in str(e.value)


def test_bad_toml_and_unknown_key(workspace):
    (workspace / "settings.toml").write_text("engine = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings()
    (workspace / "settings.toml").write_text('engin = "auto"\n')
    with pytest.raises(SettingsError, match="unknown keys"):
        load_settings()


def test_save_settings_roundtrip(workspace):
    s = load_settings()
    s2 = save_settings(s, model='/tmp/my "model"', quant_policy=8)
    assert s2.model == '/tmp/my "model"' and s2.quant_policy == 8
    assert load_settings().model == '/tmp/my "model"'
    assert not list(workspace.glob(".settings.toml.*"))  # no temp file left behind


AWKWARD = [
    '/tmp/my "model"',
    "C:\\models\\new\\chef",
    "line one\nline two\r\n",
    "tab\there",
    "控制\x00\x01\x1f\x7f字符",
    "emoji 🍳 and \u202e bidi",
    "'''triple''' \"\"\" quotes",
    "trailing \\",
    '\\"',
    "= [x] # not a comment",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_save_settings_round_trips_any_string(workspace, value):
    """tomli-w writes every string so that it reads back as it was (the old hand-written writer
    escaped only backslash and double quote: a newline or a control character made settings.toml
    unreadable, and the app with it)."""
    s = save_settings(load_settings(), api_model=value)
    assert s.api_model == value.strip()  # values are stripped on load, as before
    assert tomllib.loads((workspace / "settings.toml").read_text(encoding="utf-8"))["api_model"] == value


def test_save_settings_keeps_other_keys_and_the_environment_still_wins(workspace, monkeypatch):
    (workspace / "settings.toml").write_text('corpus = "/data/corpus.jsonl"\nmax_new_tokens = 256\n')
    monkeypatch.setenv("RECIPE_MAX_NEW_TOKENS", "64")
    s = save_settings(load_settings(), model="/models/b")
    assert (s.corpus, s.model, s.max_new_tokens) == ("/data/corpus.jsonl", "/models/b", 64)
    assert (s.source["corpus"], s.source["model"], s.source["max_new_tokens"]) == ("file", "file", "env")
    monkeypatch.setenv("RECIPE_MAX_NEW_TOKENS", "")  # an empty variable does not override
    assert load_settings().max_new_tokens == 256
    with pytest.raises(SettingsError, match="unknown setting 'modle'"):
        save_settings(s, modle="x")


def test_a_bad_value_in_the_file_names_the_file_and_the_key(workspace):
    (workspace / "settings.toml").write_text('quant_policy = 3\nengine = "gpu9"\n')
    with pytest.raises(SettingsError) as e:
        load_settings()
    msg = str(e.value)
    assert "settings.toml: quant_policy=3" in msg and "0, 4, 8" in msg and "engine='gpu9'" in msg


def test_an_explicit_environment_mapping_is_read_instead_of_os_environ(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ENGINE", "library")
    s = load_settings({"RECIPE_WORKSPACE": str(workspace), "RECIPE_ENGINE": "transformers"})
    assert s.engine == "transformers" and s.source["engine"] == "env"
    assert load_settings({"RECIPE_WORKSPACE": str(workspace)}).engine == "auto"


def test_paths_stay_inside_workspace(workspace, tmp_path):
    s = load_settings()
    assert s.inside_workspace("data/x.jsonl") == workspace.resolve() / "data" / "x.jsonl"
    assert s.inside_workspace(workspace / "models") == workspace.resolve() / "models"
    for bad in ("../escape", "/etc/passwd", "data/../../x"):
        with pytest.raises(SettingsError, match="outside the workspace"):
            s.inside_workspace(bad)
    (workspace / "link").symlink_to(tmp_path)
    with pytest.raises(SettingsError):
        s.inside_workspace("link/file")


def test_configured_paths_may_live_outside_the_workspace(workspace, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    monkeypatch.setenv("RECIPE_CORPUS", str(corpus))
    s = load_settings()
    assert s.user_path(str(corpus), (s.corpus,)) == corpus.resolve()
    with pytest.raises(SettingsError, match="outside the workspace"):
        s.user_path(str(tmp_path / "other.jsonl"), (s.corpus,))
    assert s.user_path("data/x", (s.corpus,)) == workspace.resolve() / "data" / "x"


def test_every_setting_is_documented_in_the_readme_with_its_default():
    """README's settings table names each key (environment variable and settings.toml key) with
    the default load_settings() really uses."""
    from dataclasses import fields

    from core.settings import Settings, SettingValues
    from tests.conftest import ROOT

    rows = {
        line.split("|")[1].strip(" `"): line
        for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `RECIPE_")
    }
    for f in fields(Settings):
        if f.name == "source":
            continue
        row = rows.get(f"RECIPE_{f.name.upper()}")
        assert row is not None, f"RECIPE_{f.name.upper()} is not in the README's settings table"
        if f.name == "workspace":
            assert "`./workspace`" in row
            continue
        assert f"`{f.name}`" in row, row
        default = SettingValues.model_fields[f.name].default
        if default != "":
            assert f"`{default}`" in row, (f.name, default, row)
    assert set(SettingValues.model_fields) == {f.name for f in fields(Settings)} - {"workspace", "source"}

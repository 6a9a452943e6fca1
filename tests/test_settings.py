"""Settings: defaults, settings.toml, environment overrides, clear errors, workspace paths."""
import pytest

from backend.settings import ENGINES, SettingsError, load_settings, save_settings


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
    [("RECIPE_MAX_NEW_TOKENS", "lots", "int"), ("RECIPE_QUANT_POLICY", "3", "0, 4, 8"),
     ("RECIPE_CACHE_MAX_ENTRY_COUNT", "2", "(0, 1]"), ("RECIPE_DEVICE", "tpu", "cpu")],
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
    from dataclasses import MISSING, fields

    from backend.settings import Settings
    from tests.conftest import ROOT

    rows = {line.split("|")[1].strip(" `"): line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `RECIPE_")}
    for f in fields(Settings):
        if f.name == "source":
            continue
        row = rows.get(f"RECIPE_{f.name.upper()}")
        assert row is not None, f"RECIPE_{f.name.upper()} is not in the README's settings table"
        if f.name == "workspace":
            assert "`./workspace`" in row
            continue
        assert f"`{f.name}`" in row, row
        if f.default not in (MISSING, ""):
            assert f"`{f.default}`" in row, (f.name, f.default, row)

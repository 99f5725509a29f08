from __future__ import annotations

import pytest

from llama_tui.core import config
from llama_tui.core.errors import ConfigError, UserError


def test_defaults_without_preset():
    s = config.load_settings(env={})
    assert s.preset is None
    assert s.get("fleet.instances") == 2 and s.sources["fleet.instances"] == "default"


def test_precedence_cli_over_env_over_user_over_preset(isolated_dirs, tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "config.toml").write_text('[fleet]\ninstances = 5\nparallel = 7\nctx_per_slot = 999\n')
    env = {"LLAMA_TUI_FLEET_PARALLEL": "9", "LLAMA_TUI_FLEET_CTX_PER_SLOT": "1000"}
    s = config.load_settings(preset="demo", cli={"fleet.ctx_per_slot": "1234", "fleet.threads": None}, env=env)
    assert s.get("fleet.model") == "tiny" and s.sources["fleet.model"].endswith("demo.toml")  # preset
    assert s.get("fleet.instances") == 5 and s.sources["fleet.instances"].endswith("config.toml")  # user file
    assert s.get("fleet.parallel") == 9 and "LLAMA_TUI_FLEET_PARALLEL" in s.sources["fleet.parallel"]  # env
    assert s.get("fleet.ctx_per_slot") == 1234 and s.sources["fleet.ctx_per_slot"] == "cli"  # cli
    assert s.get("fleet.threads") == 1  # None on the CLI means "not given": the preset's value stands


def test_preset_chosen_by_env_or_user_file(tmp_path):
    assert config.load_settings(env={"LLAMA_TUI_PRESET": "nvidia-80gb"}).get("fleet.gpu_layers") == 999
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.toml").write_text('preset = "demo"\n')
    assert config.load_settings(env={}).preset == "demo"


def test_every_shipped_preset_loads_and_is_commented():
    names = {p.name for p in config.list_presets()}
    assert {"demo", "cpu-laptop", "mac-mini-16gb", "mac-studio-64gb", "nvidia-24gb", "nvidia-80gb"} <= names
    for p in config.list_presets():
        s = config.load_settings(preset=p.name, env={})
        assert s.get("sweep.instances") and p.description
        assert p.path.read_text().lstrip().startswith("#"), f"{p.path} needs a comment saying why"


def test_user_preset_overrides_shipped(tmp_path):
    d = tmp_path / "config" / "presets"
    d.mkdir(parents=True)
    (d / "demo.toml").write_text('description = "mine"\n[fleet]\ninstances = 3\n')
    info = {p.name: p for p in config.list_presets()}["demo"]
    assert info.origin == "user"
    assert config.load_settings(preset="demo", env={}).get("fleet.instances") == 3


def test_invalid_toml_names_file_and_line(tmp_path):
    d = tmp_path / "config" / "presets"
    d.mkdir(parents=True)
    (d / "broken.toml").write_text('[fleet]\ninstances = 2\nparallel = = 3\n')
    with pytest.raises(ConfigError) as err:
        config.load_settings(preset="broken", env={})
    assert "broken.toml" in err.value.cause and "line 3" in err.value.cause


def test_bad_value_names_file_and_key(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.toml").write_text('[fleet]\ninstances = "two"\n')
    with pytest.raises(ConfigError, match=r"config\.toml.*fleet\.instances"):
        config.load_settings(env={})
    with pytest.raises(ConfigError, match="unknown key fleet.instancez"):
        (tmp_path / "config" / "config.toml").write_text('[fleet]\ninstancez = 2\n')
        config.load_settings(env={})


def test_bad_env_and_cli_values():
    with pytest.raises(ConfigError, match="LLAMA_TUI_FLEET_INSTANCES"):
        config.load_settings(env={"LLAMA_TUI_FLEET_INSTANCES": "0"})
    with pytest.raises(UserError, match="--parallel"):
        config.load_settings(cli={"fleet.parallel": "-1"}, env={})
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        config.load_settings(preset="nope", env={})


@pytest.mark.parametrize("text,expected", [("1,2,4", (1, 2, 4)), ("8", (8,)), ("1-3,8", (1, 2, 3, 8)),
                                           ([2, 4], (2, 4)), (" 1 , 2 ", (1, 2))])
def test_parse_int_list(text, expected):
    assert config.parse_int_list(text) == expected


@pytest.mark.parametrize("text", ["1,,2", "a,b", "1.5", "", "0,1", "4-2", "1;2"])
def test_parse_int_list_rejects(text):
    with pytest.raises(UserError):
        config.parse_int_list(text, "--concurrency")


def test_fleet_options_map_every_fleet_flag_to_a_settings_key():
    from llama_tui import cli

    for dest, key in config.FLEET_OPTIONS.items():
        section, name = key.split(".")
        assert section == "fleet" and name in config.SCHEMA["fleet"], key
    tui = cli.build_parser()
    up = cli.build_parser().parse_args(["fleet", "up"])
    assert all(hasattr(tui.parse_args([]), dest) and hasattr(up, dest) for dest in config.FLEET_OPTIONS)
    args = tui.parse_args(["--instances", "3", "--no-pin-cpus", "--gpus", "0,1"])
    given = {k: v for k, v in config.fleet_overrides(args).items() if v is not None}
    assert given == {"fleet.instances": "3", "fleet.pin_cpus": False, "fleet.gpus": "0,1"}
    settings = config.load_settings(cli=config.fleet_overrides(args))
    assert (settings.get("fleet.instances"), settings.get("fleet.gpus")) == (3, (0, 1))

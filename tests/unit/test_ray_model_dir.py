"""`--model-dir LABEL=DIR` (the Ray engine): its syntax, the path each node resolves, the one-line errors
of the check before anything is placed, and the setting's way through the CLI, the state file and a sweep.
The real cluster's side is in tests/ray_cases.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_tui.core import config
from llama_tui.core.errors import UserError
from llama_tui.core.fleet import FleetSpec, model_dirs, ray_cluster
from llama_tui.core.fleet.ray_actor import with_endpoint

from conftest import REPO

MODEL = Path("/head/models/qwen.gguf")


def test_pairs_keep_their_order_from_every_way_of_giving_them():
    want = (("gpu_box", "/srv/models"), ("mac", "/Users/me/models"))
    assert model_dirs.parse(["gpu_box=/srv/models", "mac=/Users/me/models/"]) == want  # the CLI, repeated
    assert model_dirs.parse("gpu_box=/srv/models, mac=/Users/me/models") == want  # the environment
    assert model_dirs.parse(["gpu_box=/srv/models,mac=/Users/me//models"]) == want  # one option, two entries
    assert model_dirs.parse({"gpu_box": "/srv/models", "mac": "/Users/me/models"}) == want  # a TOML table
    assert model_dirs.parse([["gpu_box", "/srv/models"], ["mac", "/Users/me/models"]]) == want  # the state file
    assert model_dirs.parse(None) == model_dirs.parse([]) == model_dirs.parse("") == ()


@pytest.mark.parametrize("bad, cause, fix", [
    ("gpu_box", "has no '='", "LABEL=DIR"),
    ("=/srv/models", "is not a node label", "LABEL=DIR"),
    ("gpu box=/srv", "is not a node label", "LABEL=DIR"),
    ("gpu_box=", "names no directory", "LABEL=DIR"),
    ("gpu_box=models", "is not an absolute path", "gpu_box=/srv/models"),
    ("gpu_box=~/models", "is not an absolute path", "from the root"),
    (["a=/x", "a=/y"], "gives the label 'a' twice", "one directory"),
    (",", "is empty", "LABEL=DIR"),
    (7, "neither LABEL=DIR nor a list", "LABEL=DIR"),
])
def test_bad_entries_name_the_entry_and_the_fix(bad, cause, fix):
    with pytest.raises(UserError, match=cause) as e:
        model_dirs.parse(bad)
    assert fix in e.value.fix


def test_a_node_loads_the_file_from_the_dir_of_its_first_label_else_the_model_as_given():
    pairs = model_dirs.parse(["gpu_box=/srv/models", "mac=/Users/me/models"])
    assert model_dirs.model_on_node(str(MODEL), pairs, {"CPU": 8.0, "gpu_box": 1.0}) == "/srv/models/qwen.gguf"
    assert model_dirs.model_on_node(str(MODEL), pairs, {"mac": 1.0}) == "/Users/me/models/qwen.gguf"
    assert model_dirs.model_on_node(str(MODEL), pairs, {"mac": 1.0, "gpu_box": 1.0}) == "/srv/models/qwen.gguf"
    assert model_dirs.model_on_node(str(MODEL), pairs, {"CPU": 8.0}) == str(MODEL)  # no label: as given
    assert model_dirs.model_on_node(str(MODEL), pairs, {"gpu_box": 0.0}) == str(MODEL)  # a used-up/absent resource
    assert model_dirs.model_on_node(str(MODEL), (), {"gpu_box": 1.0}) == str(MODEL)


def test_the_instances_command_line_loads_the_nodes_path():
    spec = FleetSpec(model=MODEL, engine="ray")
    cmd = spec.command("/head/llama-server", 0, 2)
    argv = with_endpoint(model_dirs.with_model(cmd, "/srv/models/qwen.gguf"), "10.0.0.7", 41234, "/node/llama-server")
    assert argv[argv.index("-m") + 1] == "/srv/models/qwen.gguf" and str(MODEL) not in argv
    assert argv[argv.index("--alias") + 1] == "qwen.gguf"  # the same name in the API on every node
    assert model_dirs.with_model(["/bin/x"], "/m.gguf") == ["/bin/x", "-m", "/m.gguf"]


def test_the_spec_keeps_the_dirs_in_the_state_file_and_only_with_the_ray_engine():
    pairs = (("gpu_box", "/srv/models"),)
    with pytest.raises(UserError, match="--model-dir places instances on Ray nodes") as e:
        FleetSpec(model=MODEL, model_dirs=pairs).check_engine()
    assert "--engine ray" in e.value.fix
    spec = FleetSpec(model=MODEL, engine="ray", model_dirs=pairs)
    spec.check_engine()
    import orjson

    assert FleetSpec.from_dict(orjson.loads(orjson.dumps(spec.to_dict()))) == spec


def test_settings_take_it_from_the_cli_the_environment_and_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_TUI_CONFIG_DIR", str(tmp_path / "cfg"))
    s = config.load_settings(cli={"fleet.model_dir": ["gpu_box=/srv/models"]}, env={})
    assert s.get("fleet.model_dir") == (("gpu_box", "/srv/models"),)
    s = config.load_settings(env={"LLAMA_TUI_FLEET_MODEL_DIR": "a=/x,b=/y"})
    assert s.get("fleet.model_dir") == (("a", "/x"), ("b", "/y"))
    with pytest.raises(UserError, match="bad value for --model-dir: --model-dir 'gpu_box' has no '='"):
        config.load_settings(cli={"fleet.model_dir": ["gpu_box"]}, env={})
    user = tmp_path / "cfg" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[fleet.model_dir]\ngpu_box = "/srv/models"\n')
    assert config.load_settings(env={}).get("fleet.model_dir") == (("gpu_box", "/srv/models"),)
    user.write_text('[fleet]\nmodel_dir = ["gpu_box=srv"]\n')
    with pytest.raises(UserError, match=r"config.toml: bad value for fleet.model_dir .* is not an absolute path"):
        config.load_settings(env={})


def test_a_sweep_carries_the_dirs_to_each_fleet_and_through_resume(tmp_path):
    from llama_tui.core.sweep.config import SweepConfig, build_config, command_line

    options = {"model": "tiny", "engine": "ray", "ray_address": "10.0.0.1:6379",
               "model_dir": ["gpu_box=/srv/models", "mac=/m"], "out": str(tmp_path / "sw")}
    cfg, _ = build_config(options)
    assert cfg.model_dirs == (("gpu_box", "/srv/models"), ("mac", "/m"))
    import orjson

    assert SweepConfig.from_json(orjson.loads(orjson.dumps(cfg.to_json()))) == cfg
    argv = command_line({"model_dir": options["model_dir"]})
    assert model_dirs.parse(argv[argv.index("--model-dir") + 1]) == cfg.model_dirs  # the recorded command re-parses


# --------------------------------------------------------------------------------------------- the check


def _node(ip: str, **res: float) -> dict:
    return {"NodeManagerAddress": ip, "NodeID": ip, "Alive": True, "Resources": {"CPU": 4.0, **res}}


def _found(ip: str, model: bool, model_dir: bool = True, server: str | None = "/bin/llama-server") -> dict:
    return {"ip": ip, "node_id": ip, "hostname": f"box-{ip}", "model": model, "model_dir": model_dir,
            "llama_server": server}


def test_a_label_no_node_has_is_refused_by_name():
    spec = FleetSpec(model=MODEL, engine="ray", model_dirs=(("gpu_box", "/srv"), ("gpubox", "/srv")))
    nodes = [_node("10.0.0.1", gpu_box=1.0), {**_node("10.0.0.2", gpubox=1.0), "Alive": False}]
    with pytest.raises(UserError, match=r"--model-dir gpubox=\.\.\.: no node of the Ray cluster at 10\.0\.0\.1:6379 "
                                        r"has the resource 'gpubox'") as e:
        ray_cluster.check_model_dirs(spec, nodes, "10.0.0.1:6379")  # a dead node does not count
    assert "ray start" in e.value.fix and "ray status" in e.value.fix
    ray_cluster.check_model_dirs(spec, [nodes[0], {**nodes[1], "Alive": True}], "10.0.0.1:6379")


def test_a_missing_file_or_dir_names_the_node_and_the_path_it_looked_at():
    spec = FleetSpec(model=MODEL, engine="ray", model_dirs=(("gpu_box", "/srv/models"),))
    labelled = {"CPU": 4.0, "gpu_box": 1.0}
    ray_cluster.check_found(spec, labelled, _found("10.0.0.2", model=True))
    with pytest.raises(UserError) as e:
        ray_cluster.check_found(spec, labelled, _found("10.0.0.2", model=False))
    assert e.value.cause == ("the model qwen.gguf is missing in /srv/models (--model-dir gpu_box=/srv/models) on "
                             "Ray node 10.0.0.2 (box-10.0.0.2)")
    assert "copy qwen.gguf into /srv/models there" in e.value.fix
    with pytest.raises(UserError) as e:
        ray_cluster.check_found(spec, labelled, _found("10.0.0.2", model=False, model_dir=False))
    assert e.value.cause == ("the directory /srv/models of --model-dir gpu_box=/srv/models is missing on Ray node "
                             "10.0.0.2 (box-10.0.0.2)")
    assert "create it there" in e.value.fix
    with pytest.raises(UserError) as e:  # a node without the label: the model as given
        ray_cluster.check_found(spec, {"CPU": 4.0}, _found("10.0.0.3", model=False))
    assert e.value.cause == f"the model {MODEL} is missing on Ray node 10.0.0.3 (box-10.0.0.3)"
    assert "--model-dir LABEL=DIR" in e.value.fix
    with pytest.raises(UserError, match="no llama-server on Ray node 10.0.0.3"):
        ray_cluster.check_found(spec, {"CPU": 4.0}, _found("10.0.0.3", model=True, server=None))


def test_bad_model_dir_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAMA_TUI_STATE_DIR": str(tmp_path / "s")}
    for args, cause in (
        (["--engine", "ray", "--model-dir", "gpu_box"], "bad value for --model-dir: --model-dir 'gpu_box' has no '='"),
        (["--engine", "ray", "--model-dir", "gpu_box=rel/dir"], "is not an absolute path"),
        (["--model-dir", "gpu_box=/srv"], "--model-dir places instances on Ray nodes"),
    ):
        proc = subprocess.run([sys.executable, "-m", "llama_tui", "fleet", "up", "--model", "tiny", "--detach",
                               "--ray-address", "127.0.0.1:1", *args], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=120, stdin=subprocess.DEVNULL)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and cause in errors[0], proc.stderr
        assert not (tmp_path / "s" / "fleet.json").exists()

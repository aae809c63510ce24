from pathlib import Path

import pytest
import yaml

from esva.config import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_parses_into_typed_config():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.synth.n_clips == 240 and p.decode.sample_rate == 16000 and p.crop.size == 224
    assert p.data.sources[0].adapter == "synthetic"


def test_params_yaml_sets_every_key_explicitly():
    """params.yaml is the single source of knobs: every field of every section appears in it."""
    with (ROOT / "params.yaml").open() as fh:
        tree = yaml.safe_load(fh)
    for section, model in Params.model_fields.items():
        assert section in tree, section
        sub = model.annotation.model_fields
        assert set(tree[section]) == set(sub), (section, set(sub) ^ set(tree[section]))


def test_unknown_key_in_file_is_an_error_naming_it(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("decode:\n  fps: 25\n  max_sidee: 3\n")
    with pytest.raises(ConfigError, match=r"decode\.max_sidee"):
        load_params(f)


def test_wrong_type_is_an_error_naming_key_and_value(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("crop:\n  size: big\n")
    with pytest.raises(ConfigError, match=r"crop\.size.*'big'"):
        load_params(f)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    p = load_params(None, ["synth.n_clips=12", "crop.backend=auto", "decode.require_audio=false"])
    assert p.synth.n_clips == 12 and p.crop.backend == "auto" and p.decode.require_audio is False
    with pytest.raises(ConfigError, match=r"synth\.nclips"):
        load_params(None, ["synth.nclips=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_params(None, ["synth.n_clips"])


def test_cross_field_checks_name_both_keys():
    with pytest.raises(ConfigError, match=r"max_seconds.*min_seconds"):
        load_params(None, ["synth.min_seconds=4", "synth.max_seconds=2"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(None, ["synth.split={train: 0.9, val: 0.2, test: 0.1}"])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_configs_are_frozen():
    p = load_params(None)
    with pytest.raises(Exception):
        p.decode.fps = 30  # type: ignore[misc]


def test_yaml_errors_and_empty_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("decode:\n  fps: [25\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(f)
    f.write_text("decode:\n")
    assert load_params(f, ["decode.fps=10"]).decode.fps == 10.0

"""The strict TOML config: defaults, the example file, and errors that name key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_worker.errors import ConfigError
from edge_worker.service.config import Config, load, parse, with_overrides

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "edge-worker.toml"


def test_example_config_is_valid_and_matches_defaults() -> None:
    config = load(EXAMPLE)
    assert config.station == "xr-01"
    # The example documents the defaults: apart from site/station it must equal Config().
    defaults = with_overrides(Config(), top={"site": config.site, "station": config.station})
    assert config == defaults


def test_unknown_key_is_refused_with_its_line() -> None:
    text = 'site = "a"\nstation = "b"\n\n[watch]\nfolder = "/x"\nsettle_secs = 1\n'
    with pytest.raises(ConfigError) as err:
        parse(text, "box.toml")
    assert "box.toml:6" in str(err.value)
    assert "watch.settle_secs" in str(err.value)
    assert "settle_seconds" in str(err.value)  # the message lists what is allowed


def test_unknown_top_level_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"box.toml:2: unknown key 'mqqt'"):
        parse('site = "a"\n[mqqt]\nurl = "mqtt://h"\n', "box.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[mqtt]\nkeepalive = "30"\n', "mqtt.keepalive: expected an integer"),
        ("[watch]\nrecursive = 1\n", "watch.recursive: expected true or false"),
        ('[inference]\nbackends = "onnxruntime-cpu"\n', "inference.backends: expected a list"),
        ('station = "xr 01"\n', "station: 'xr 01' must be"),
        ('[mqtt]\nurl = "http://broker"\n', "mqtt.url"),
        ('[mqtt.tls]\ncert_file = "/c.pem"\n', "cert_file and key_file go together"),
        ("site = \n", "not valid TOML"),
        ("[watch]\nincomplete_deadline_seconds = 1.5\n", "must exceed settle_seconds"),
    ],
)
def test_bad_values_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse(text)


def test_password_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Config().mqtt_password() == "s3cret"


def test_password_file_fallback_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "pw"
    secret.write_text("from-file")
    config = parse(f'[mqtt]\npassword_file = "{secret}"\n')
    assert config.mqtt_password() == "from-file"
    missing = parse(f'[mqtt]\npassword_file = "{tmp_path / "nope"}"\n')
    with pytest.raises(ConfigError, match="password_file"):
        missing.mqtt_password()

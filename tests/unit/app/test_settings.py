"""Routing hash, settings, and the bounded join tables (no broker)."""

from __future__ import annotations


import pytest

from streamlearn.app.settings import Settings, SettingsError


def test_settings_from_env_and_rules():
    s = Settings.from_env({"STREAMLEARN_BROKER": "kafka://h1:1;h2:2", "STREAMLEARN_PARTITIONS": "4",
                           "STREAMLEARN_SPEC_RULES": "fraud-*=hoeffding_tree, price-*=linreg",
                           "STREAMLEARN_SPEC_PARAMS": '{"hoeffding_tree": {"grace_period": 50}}'}, web_port=7000)
    assert s.bootstrap_servers == "h1:1,h2:2" and s.partitions == 4 and s.web_port == 7000
    assert s.spec_for("fraud-eu") == "hoeffding_tree" and s.spec_for("price-x") == "linreg"
    assert s.spec_for("other") == "logreg"
    assert s.params == {"hoeffding_tree": {"grace_period": 50}}
    assert Settings.from_env({}).broker == "kafka://127.0.0.1:9092"
    assert "STREAMLEARN_BROKER" in Settings.env_names()


@pytest.mark.parametrize("env,match", [
    ({"STREAMLEARN_PARTITIONS": "many"}, "not a valid int"),
    ({"STREAMLEARN_DEFAULT_SPEC": "nope"}, "unknown model spec"),
    ({"STREAMLEARN_SPEC_RULES": "a*"}, "pattern=spec"),
    ({"STREAMLEARN_SPEC_RULES": "a*=nope"}, "unknown model spec"),
    ({"STREAMLEARN_SPEC_PARAMS": "{"}, "not JSON"),
    ({"STREAMLEARN_OFFSET_RESET": "middle"}, "offset_reset"),
    ({"STREAMLEARN_SESSION_TIMEOUT_SECONDS": "40"}, "broker_request_timeout_seconds"),
])
def test_bad_settings_are_refused_clearly(env, match):
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)



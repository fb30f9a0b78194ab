import pytest

from pipelines.samples import SLI_DIR
from transforms.core.config import ConfigError
from transforms.sli.config import UNMATCHED_JOURNEY, JourneyMatcher, load_sli_config, parse_sli_config


@pytest.mark.parametrize("name", ["profile_service.yaml", "store.yaml", "starter_slos.yaml"])
def test_sample_configs_load(name):
    config = load_sli_config(SLI_DIR / name)
    assert config.services


def _names(config, service, method, path):
    return JourneyMatcher(config).match(service, method, path)[0]


def test_profile_templates_match_one_segment_each():
    config = load_sli_config(SLI_DIR / "profile_service.yaml")
    assert _names(config, "profile-web", "GET", "/profile/alice") == "view-profile"
    assert _names(config, "profile-web", "GET", "/profile/alice/avatar") == "view-avatar"
    assert _names(config, "profile-web", "GET", "/profile/alice/avatar/big") == UNMATCHED_JOURNEY
    assert _names(config, "profile-web", "GET", "/profile/") == UNMATCHED_JOURNEY
    assert _names(config, "profile-web", "POST", "/profile/alice") == UNMATCHED_JOURNEY  # method filter
    assert _names(config, "profile-web", "PUT", "/api/v1/profile/a1") == "update-profile"  # regex
    assert _names(config, "other-service", "GET", "/profile/alice") == UNMATCHED_JOURNEY


def test_store_regex_and_hosts():
    config = load_sli_config(SLI_DIR / "store.yaml")
    matcher = JourneyMatcher(config)
    service = matcher.service_for("unknown", "STORE.example.com")
    assert service == "store"
    assert matcher.match(service, "GET", "/apps/com.example.game/details")[0] == "app-details"
    assert matcher.match(service, "GET", "/apps/com.example.game")[0] == "app-details"
    assert matcher.match(service, "GET", "/")[0] == "home"
    assert [s.threshold_ms for s in matcher.match(service, "POST", "/apps/x/purchase")[1] if s.kind == "latency"] == [
        1000
    ]


def test_template_literal_text_is_not_a_regex():
    config = parse_sli_config("services: [{name: s, journeys: [{name: j, path: '/a.b/{x}'}]}]")
    assert _names(config, "s", "GET", "/a.b/1") == "j"
    assert _names(config, "s", "GET", "/aXb/1") == UNMATCHED_JOURNEY


@pytest.mark.parametrize(
    "text, field, words",
    [
        ("services: []", "services", "at least 1"),
        ("services: [{name: s, journeys: [{name: j}]}]", "services[0].journeys[0]", "exactly one of 'path'"),
        ("services: [{name: s, journeys: [{name: j, path: x}]}]", "services[0].journeys[0].path", "start with '/'"),
        ("services: [{name: s, journeys: [{name: j, regex: '(('}]}]", "services[0].journeys[0].regex", "invalid regex"),
        (
            "services: [{name: s, journeys: [{name: j, path: /a, slis: [{kind: latency}]}]}]",
            "services[0].journeys[0].slis[0].threshold_ms",
            "required",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a, slis: [{kind: latency, threshold_ms: 0}]}]}]",
            "services[0].journeys[0].slis[0].threshold_ms",
            "greater than 0",
        ),
        (
            "services: [{name: s, slis: [{kind: availability, bad_status: [6xx]}], journeys: [{name: j, path: /a}]}]",
            "services[0].slis[0].bad_status",
            "'6xx'",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a, slis: [{kind: speed}]}]}]",
            "services[0].journeys[0].slis[0]",
            "kind",
        ),
        ("services: [{name: s, journeys: [{name: j, path: /a}, {name: j, path: /b}]}]", "services[0]", "unique"),
        ("services: [{name: s, journeys: [{name: j, path: /a, typo: 1}]}]", "services[0].journeys[0].typo", "Extra"),
        (
            "services: [{name: s, journeys: [{name: j, path: /a, slis: [{kind: latency, threshold_ms: 1}, {kind: latency, threshold_ms: 1}]}]}]",
            "services[0]",
            "share a name",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a}]}]\nalerting: {rules: [{severity: page, "
            "long_window_minutes: 60, short_window_minutes: 5, budget_share: 0.02, keep_firing_for_minutes: -5}]}",
            "alerting.rules[0].keep_firing_for_minutes",
            "greater than or equal to 0",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a}], exclusions: [{reason: deploy}]}]",
            "services[0].exclusions[0]",
            "give either 'start' and 'end'",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a}], exclusions: [{reason: x, "
            "start: '2026-11-22T14:00:00Z', end: '2026-11-22T13:00:00Z'}]}]",
            "services[0].exclusions[0]",
            "a later 'end'",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a}], exclusions: [{reason: x, "
            "start: '2026-11-22T14:00:00', end: '2026-11-22T15:00:00Z'}]}]",
            "services[0].exclusions[0].start",
            "timezone",
        ),
        (
            "services: [{name: s, journeys: [{name: j, path: /a}], exclusions: [{reason: x, "
            "weekly: {day: sunday, start: 12:30, minutes: 60}}]}]",
            "services[0].exclusions[0].weekly.start",
            "write the time in quotes",
        ),
    ],
)
def test_config_errors_name_file_and_field(text, field, words):
    with pytest.raises(ConfigError) as err:
        parse_sli_config(text, "slis.yaml")
    message = str(err.value)
    assert f"slis.yaml: {field}:" in message
    assert words in message


def test_unreadable_file_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--sli_config: cannot read .*missing.yaml"):
        load_sli_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_sli_config(bad)


def test_an_slo_gets_its_own_exclusions_and_its_services():
    config = parse_sli_config(
        """
services:
  - {name: s, journeys: [{name: j, path: /a}], exclusions: [{reason: deploy, weekly: {day: sunday, start: '02:00', minutes: 60}}]}
  - {name: t, journeys: [{name: j, path: /a}], exclusions: [{reason: other, weekly: {day: monday, start: '02:00', minutes: 60}}]}
slos:
  - name: a
    sli: s/j/availability
    target: 0.99
    exclusions: [{reason: migration, start: '2026-11-22T14:00:00Z', end: '2026-11-22T15:00:00Z'}]
  - {name: b, sli: t/j/availability, target: 0.99}
"""
    )
    assert [e.reason for e in config.exclusions_for(config.slos[0])] == ["migration", "deploy"]
    assert [e.reason for e in config.exclusions_for(config.slos[1])] == ["other"]

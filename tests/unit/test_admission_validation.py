"""The validating webhook of our DRA kinds: CEL selectors and template metadata refused as the apiserver does,
its configuration (derived from the mutating one), and the handler's refusal."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from dra_operator.admission import configuration, validation
from dra_operator.admission.webhook import Refused, validate
from dra_operator.api.meta import annotation_problems, label_problems, qualified_name_messages
from dra_operator.cel.source import typed_device_fields

Json = dict[str, Any]


def device_class(*expressions: str) -> Json:
    return {
        "kind": "DeviceClass",
        "metadata": {"name": "dc"},
        "spec": {"selectors": [{"cel": {"expression": e}} for e in expressions]},
    }


def claim_spec(*expressions: str, sub: str | None = None) -> Json:
    requests: list[Json] = [
        {
            "name": "r",
            "exactly": {
                "deviceClassName": "c",
                "selectors": [{"cel": {"expression": e}} for e in expressions],
            },
        }
    ]
    if sub is not None:
        requests.append(
            {
                "name": "f",
                "firstAvailable": [
                    {"name": "a", "deviceClassName": "c"},
                    {"name": "b", "deviceClassName": "c", "selectors": [{"cel": {"expression": sub}}]},
                ],
            }
        )
    return {"devices": {"requests": requests}}


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("device.driver ==", "compilation failed: ERROR: <input>:1:17: Syntax error"),
        ("device.driver", "must evaluate to bool or the unknown type, not string"),
        ('device.attributes["x"].foo + 1', "must evaluate to bool or the unknown type, not int"),
        ('device.capacity["x"].memory', "not kubernetes.Quantity"),
        ("device.driver + 1 == 2", "found no matching overload for '_+_' applied to '(string, int)'"),
        ('device.foo == "a"', "undefined field 'foo'"),
        ("nosuchfn(device.driver)", "undeclared reference to 'nosuchfn'"),
        ('quantity("1") == "1"', "found no matching overload for '_==_'"),
        ("  ", "compilation failed"),
    ],
)
def test_bad_selectors_are_refused_with_the_apiservers_words(expression: str, detail: str) -> None:
    (problem,) = validation.problems("DeviceClass", device_class('device.driver == "a"', expression))
    path, message = problem
    assert path == "spec.selectors[1].cel.expression"
    assert message.startswith(f"Invalid value: {json.dumps(expression)}: ")
    assert detail in message


@pytest.mark.parametrize(
    "expression",
    [
        'device.driver == "driver.example.com"',
        'device.capacity["driver.example.com"].memory.compareTo(quantity("10Gi")) >= 0',
        '"x" in device.attributes && device.attributes["x"].?foo.orValue(1) == 1',
        'device.attributes["x"].v.isGreaterThan(semver("1.0.0"))',
        "device.allowMultipleAllocations",
        'device.attributes["x"].model',  # dyn: Kubernetes accepts it too
        "cel.bind(x, 1, x == 1)",
    ],
)
def test_good_selectors_pass(expression: str) -> None:
    assert validation.problems("DeviceClass", device_class(expression)) == []


def test_claim_and_template_paths_cover_subrequests() -> None:
    claim = {"kind": "ResourceClaim", "spec": claim_spec("device.driver", sub="1")}
    assert [p for p, _ in validation.problems("ResourceClaim", claim)] == [
        "spec.devices.requests[0].exactly.selectors[0].cel.expression",
        "spec.devices.requests[1].firstAvailable[1].selectors[0].cel.expression",
    ]
    template = {"kind": "ResourceClaimTemplate", "spec": {"spec": claim_spec("true", sub="device.driver")}}
    assert [p for p, _ in validation.problems("ResourceClaimTemplate", template)] == [
        "spec.spec.devices.requests[1].firstAvailable[1].selectors[0].cel.expression"
    ]


def taint_rule(*expressions: str, name: str = "maintenance") -> Json:
    selector: Json = {"driver": "gpu.nvidia.com"}
    if expressions:
        selector["selectors"] = [{"cel": {"expression": e}} for e in expressions]
    return {
        "kind": "DeviceTaintRule",
        "metadata": {"name": name},
        "spec": {
            "deviceSelector": selector,
            "taint": {"key": "example.com/maintenance", "value": "planned", "effect": "NoExecute"},
        },
    }


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        ((), []),
        (('device.attributes["gpu.nvidia.com"].productName == "H100"',), []),
        (
            ("true", "device.driver"),
            [
                (
                    "spec.deviceSelector.selectors[1].cel.expression",
                    'Invalid value: "device.driver": must evaluate to bool or the unknown type, not string',
                )
            ],
        ),
        (
            ("device.driver ==",),
            [
                (
                    "spec.deviceSelector.selectors[0].cel.expression",
                    'Invalid value: "device.driver ==": compilation failed: ERROR: <input>:1:17: Syntax',
                )
            ],
        ),
    ],
)
def test_taint_rule_selectors_are_compiled(
    expressions: tuple[str, ...], expected: list[tuple[str, str]]
) -> None:
    found = validation.problems("DeviceTaintRule", taint_rule(*expressions))
    assert [path for path, _ in found] == [path for path, _ in expected]
    for (_, message), (_, start) in zip(found, expected, strict=True):
        assert message.startswith(start), message


def test_taint_rule_without_selector_has_nothing_to_check() -> None:
    bare = {"kind": "DeviceTaintRule", "spec": {"taint": {"key": "k", "effect": "None"}}}
    assert validation.selectors("DeviceTaintRule", bare) == []
    assert validation.problems("DeviceTaintRule", {"kind": "DeviceTaintRule", "spec": "junk"}) == []


def test_update_only_checks_expressions_the_old_object_did_not_hold() -> None:
    stored = device_class("device.driver")  # stored before the webhook existed
    changed = copy.deepcopy(stored)
    changed["metadata"]["labels"] = {"a": "b"}
    assert validation.problems("DeviceClass", changed, old=stored) == []
    changed["spec"]["selectors"].append({"cel": {"expression": "1"}})
    assert [m for _, m in validation.problems("DeviceClass", changed, old=stored)] == [
        'Invalid value: "1": must evaluate to bool or the unknown type, not int'
    ]


def test_template_metadata_keys_and_values() -> None:
    template = {
        "kind": "ResourceClaimTemplate",
        "spec": {
            "metadata": {
                "labels": {"bad key!": "v", "ok": "bad value!", "example.com/fine": "x"},
                "annotations": {"a/b/c": "v", "Example.com/Fine": "anything at all"},
            },
            "spec": claim_spec(),
        },
    }
    found = validation.problems("ResourceClaimTemplate", template)
    assert [(p, m.split(":")[1].strip()) for p, m in found] == [
        ("spec.metadata.labels", '"bad key!"'),
        ("spec.metadata.labels", '"bad value!"'),
        ("spec.metadata.annotations", '"a/b/c"'),
    ]
    assert "name part must consist of alphanumeric characters" in found[0][1]
    assert "a valid label must be an empty string" in found[1][1]
    assert "a valid label key must consist of" in found[2][1]


@pytest.mark.parametrize(
    ("key", "messages"),
    [
        ("example.com/x", []),
        ("x", []),
        ("/x", ["prefix part must be non-empty"]),
        ("a/", ["name part must be non-empty", "name part must consist"]),
        ("a" * 64, ["name part must be no more than 63 bytes"]),
        ("a" * 254 + "/x", ["prefix part must be no more than 253 bytes"]),
        ("Ex_ample.com/x", ["prefix part a lowercase RFC 1123 subdomain"]),
        ("a/b/c", ["a valid label key must consist"]),
    ],
)
def test_qualified_names(key: str, messages: list[str]) -> None:
    found = qualified_name_messages(key)
    assert len(found) == len(messages)
    for got, want in zip(found, messages, strict=True):
        assert got.startswith(want)


def test_label_and_annotation_limits() -> None:
    assert label_problems({"k": "v" * 64}, "p") == [
        ("p", f'Invalid value: "{"v" * 64}": must be no more than 63 bytes')
    ]
    assert annotation_problems({"k": "v" * (256 * 1024)}, "p") == [
        ("p", "Too long: may not be more than 262144 bytes")
    ]


@pytest.mark.parametrize(
    ("source", "typed"),
    [
        ('device.driver == "a"', 'device_driver == "a"'),
        ('device.attributes["d"].device == 1', 'device_attributes["d"].device == 1'),
        ('"device.driver" == device.driver', '"device.driver" == device_driver'),
        ('device["driver"] == "a"', None),  # indexed: only the untyped check applies
        ('device . driver == "a"', None),
        ("device == device", None),
    ],
)
def test_typed_device_fields_keeps_positions(source: str, typed: str | None) -> None:
    assert typed_device_fields(source) == typed
    if typed is not None:
        assert len(typed) == len(source)


def test_validating_configuration_follows_the_mutating_one() -> None:
    for endpoint, where in (
        (configuration.Endpoint(url="https://127.0.0.1:9443"), "url"),
        (configuration.Endpoint(service_name="op", service_namespace="dra"), "service"),
    ):
        mutating = configuration.build(endpoint, b"CA", excluded_namespaces=["kube-system"], name="n")
        config = configuration.validating_from(mutating)
        assert config["kind"] == "ValidatingWebhookConfiguration" and config["metadata"]["name"] == "n"
        hooks = {h["rules"][0]["resources"][0]: h for h in config["webhooks"]}
        assert set(hooks) == {"deviceclasses", "resourceclaims", "resourceclaimtemplates", "devicetaintrules"}
        for plural, hook in hooks.items():
            assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
            assert hook["timeoutSeconds"] == mutating["webhooks"][0]["timeoutSeconds"]
            assert hook["rules"][0]["apiGroups"] == ["resource.dra-operator.io"]
            client = hook["clientConfig"]
            assert client["caBundle"] == mutating["webhooks"][0]["clientConfig"]["caBundle"]
            if where == "url":
                assert client["url"] == f"https://127.0.0.1:9443/validate-{plural}"
            else:
                assert client["service"]["path"] == f"/validate-{plural}"
                assert client["service"]["name"] == "op"
            names = [c["name"] for c in hook["matchConditions"]]
            assert names == ["spec-changed", "has-checked-fields"]
        assert hooks["deviceclasses"]["rules"][0]["scope"] == "Cluster"
        assert hooks["devicetaintrules"]["rules"][0]["scope"] == "Cluster"
        assert hooks["resourceclaims"]["rules"][0]["scope"] == "Namespaced"


def test_the_claims_the_operator_generates_are_not_sent_for_validation() -> None:
    mutating = configuration.build(
        configuration.Endpoint(url="https://127.0.0.1:9443"), b"CA", excluded_namespaces=[], name="n"
    )
    config = configuration.validating_from(mutating, operator_user='system:serviceaccount:dra:op"x')
    conditions = {h["rules"][0]["resources"][0]: h["matchConditions"] for h in config["webhooks"]}
    assert [c["name"] for c in conditions["resourceclaims"]][-1] == "not-generated-by-dra-operator"
    expression = conditions["resourceclaims"][-1]["expression"]
    assert 'request.userInfo.username != "system:serviceaccount:dra:op\\"x"' in expression, expression
    assert '"resource.dra-operator.io/pod-claim-name" in object.metadata.annotations' in expression
    for plural in ("deviceclasses", "resourceclaimtemplates", "devicetaintrules"):
        assert [c["name"] for c in conditions[plural]] == ["spec-changed", "has-checked-fields"], plural


def test_handler_refuses_with_the_apiservers_status_text() -> None:
    with pytest.raises(Refused) as info:
        validate("DeviceClass", device_class("device.driver", "1"), None)
    assert info.value.code == 422
    assert str(info.value).startswith('DeviceClass "dc" is invalid: [spec.selectors[0].cel.expression: ')
    validate("DeviceClass", device_class("true"), None)  # no exception: allowed

    with pytest.raises(Refused) as info:
        validate("DeviceTaintRule", taint_rule("1"), None)
    assert info.value.code == 422
    assert str(info.value) == (
        'DeviceTaintRule "maintenance" is invalid: spec.deviceSelector.selectors[0].cel.expression: '
        'Invalid value: "1": must evaluate to bool or the unknown type, not int'
    )
    stored = taint_rule("device.driver")  # stored before the webhook existed: an update may keep it
    validate("DeviceTaintRule", {**stored, "metadata": {"name": "maintenance", "labels": {"a": "b"}}}, stored)

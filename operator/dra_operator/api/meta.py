"""The apiserver's own wording for names and metadata: RFC 1123 labels and subdomains, label keys and values,
annotation keys (k8s.io/apimachinery validation, checked against kube-apiserver 1.36).

Users compare our refusals with the built-in API's, so these return the apiserver's messages verbatim; the
friendlier texts of `formats` stay where no apiserver message is compared (CRD fields, `simulate` input).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "ANNOTATIONS_TOTAL_MAX",
    "annotation_problems",
    "dns_label_messages",
    "dns_subdomain_messages",
    "invalid_value",
    "label_problems",
    "qualified_name_messages",
]

_LABEL: Final = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN: Final = rf"{_LABEL}(\.{_LABEL})*"
_QUALIFIED_NAME: Final = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE: Final = f"({_QUALIFIED_NAME})?"

_LABEL_RE: Final = re.compile(f"^{_LABEL}$")
_SUBDOMAIN_RE: Final = re.compile(f"^{_SUBDOMAIN}$")
_QUALIFIED_NAME_RE: Final = re.compile(f"^{_QUALIFIED_NAME}$")
_LABEL_VALUE_RE: Final = re.compile(f"^{_LABEL_VALUE}$")

_LABEL_MESSAGE: Final = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    f"'{_LABEL}')"
)
_SUBDOMAIN_MESSAGE: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_SUBDOMAIN}')"
)
_NAME_PART_MESSAGE: Final = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
    "character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    f"'{_QUALIFIED_NAME}')"
)
_QUALIFIED_KEY_MESSAGE: Final = (
    f"a valid label key {_NAME_PART_MESSAGE} with an optional DNS subdomain prefix and '/' "
    "(e.g. 'example.com/MyName')"
)
_LABEL_VALUE_MESSAGE: Final = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    f"for validation is '{_LABEL_VALUE}')"
)
_LABEL_MAX: Final = 63
_SUBDOMAIN_MAX: Final = 253
#: Kubernetes' TotalAnnotationSizeLimitB: keys and values of one object's annotations together.
ANNOTATIONS_TOTAL_MAX: Final = 256 * 1024


def _go_quote(value: Any) -> str:
    """A value as field.Invalid prints it: Go's %q for strings."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def invalid_value(value: Any, message: str) -> str:
    """`Invalid value: "<value>": <message>`, the apiserver's field.Invalid detail."""
    return f"Invalid value: {_go_quote(value)}: {message}"


def dns_label_messages(value: str) -> list[str]:
    """Why `value` is not an RFC 1123 label, in the apiserver's words ([] when it is one)."""
    messages = []
    if len(value) > _LABEL_MAX:
        messages.append(f"must be no more than {_LABEL_MAX} characters")
    if not _LABEL_RE.match(value):
        messages.append(_LABEL_MESSAGE)
    return messages


def dns_subdomain_messages(value: str) -> list[str]:
    """Why `value` is not an RFC 1123 subdomain, in the apiserver's words ([] when it is one)."""
    messages = []
    if len(value) > _SUBDOMAIN_MAX:
        messages.append(f"must be no more than {_SUBDOMAIN_MAX} characters")
    if not _SUBDOMAIN_RE.match(value):
        messages.append(_SUBDOMAIN_MESSAGE)
    return messages


def qualified_name_messages(key: str) -> list[str]:
    """Why `key` is not a label key (`[prefix/]name`), in the apiserver's words ([] when it is one)."""
    parts = key.split("/")
    if len(parts) > 2:
        return [_QUALIFIED_KEY_MESSAGE]
    messages = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            messages.append("prefix part must be non-empty")
        else:
            if len(prefix.encode()) > _SUBDOMAIN_MAX:
                messages.append(f"prefix part must be no more than {_SUBDOMAIN_MAX} bytes")
            if not _SUBDOMAIN_RE.match(prefix):
                messages.append("prefix part " + _SUBDOMAIN_MESSAGE)
    if not name:
        messages.append("name part must be non-empty")
    elif len(name.encode()) > _LABEL_MAX:
        messages.append(f"name part must be no more than {_LABEL_MAX} bytes")
    if not _QUALIFIED_NAME_RE.match(name):
        messages.append("name part " + _NAME_PART_MESSAGE)
    return messages


def label_problems(labels: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """(path, message) for every invalid label key and value, as the apiserver reports them."""
    problems = []
    for key, value in labels.items():
        problems += [(path, invalid_value(key, m)) for m in qualified_name_messages(str(key))]
        text = "" if value is None else str(value)
        if len(text.encode()) > _LABEL_MAX:
            problems.append((path, invalid_value(text, f"must be no more than {_LABEL_MAX} bytes")))
        if not _LABEL_VALUE_RE.match(text):
            problems.append((path, invalid_value(text, _LABEL_VALUE_MESSAGE)))
    return problems


def annotation_problems(annotations: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """(path, message) for invalid annotation keys and an oversized total, as the apiserver reports them."""
    problems = []
    total = 0
    for key, value in annotations.items():
        # The apiserver checks annotation keys case-insensitively (it lower-cases them first).
        problems += [(path, invalid_value(key, m)) for m in qualified_name_messages(str(key).lower())]
        total += len(str(key).encode()) + len(("" if value is None else str(value)).encode())
    if total > ANNOTATIONS_TOTAL_MAX:
        problems.append((path, f"Too long: may not be more than {ANNOTATIONS_TOTAL_MAX} bytes"))
    return problems

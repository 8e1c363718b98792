"""Gang membership read from a Pod's metadata: which group of Pods must be allocated together, and its size.

A gang is declared with the annotation `resource.dra-operator.io/gang-size: "N"` (N Pods), either

- on Pods that also carry `resource.dra-operator.io/gang: NAME` (as a label or an annotation): the Pods of
  one namespace with the same NAME form the gang, or
- on a Job's Pod template without a name: the Job's Pods form the gang, identified by the controller uid
  label the Job controller puts on each of them (`batch.kubernetes.io/controller-uid`, or `controller-uid`
  before Kubernetes 1.27).

Counting is by Pods that use devices: the operator only sees Pods with claims. A gang whose Pods are created
one by one is not allocated until N of them exist; then all are allocated in one decision or none is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dra_operator.api.group import GROUP

GANG = GROUP + "/gang"
GANG_SIZE = GROUP + "/gang-size"
JOB_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
#: The largest gang: a bound on one decision's size, far above any device count a cluster offers at once.
MAX_GANG_SIZE = 10_000

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Gang:
    key: str  # what members share, within their namespace: "name:<NAME>" or "job:<controller uid>"
    display: str  # for messages: `gang NAME` or `job NAME`
    size: int


class GangError(ValueError):
    """Gang metadata that cannot be honoured; the message names the field and says what to write."""


def _strings(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def gang_problem(metadata: Mapping[str, Any], *, template: bool) -> str | None:
    """Why this metadata's gang declaration is invalid, or None. A Pod template may leave the name out (the
    Job's Pods get their controller uid label when created); a Pod may not, unless it has that label."""
    annotations, labels = _strings(metadata.get("annotations")), _strings(metadata.get("labels"))
    name = labels.get(GANG, annotations.get(GANG))
    size = annotations.get(GANG_SIZE)
    where = "metadata.annotations[" + repr(GANG_SIZE).replace("'", '"') + "]"
    if GANG in labels and GANG in annotations and labels[GANG] != annotations[GANG]:
        return (
            f"the label and the annotation {GANG} name different gangs "
            f"({labels[GANG]!r}, {annotations[GANG]!r})"
        )
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        return (
            f"{GANG}: {name!r} is not a valid gang name (up to 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit)"
        )
    if size is None:
        if name is not None:
            return f"{where} is required with {GANG}: how many Pods the gang has"
        return None
    if not isinstance(size, str) or not size.isdigit() or not 1 <= int(size) <= MAX_GANG_SIZE:
        return f"{where}: {size!r} is not a whole number from 1 to {MAX_GANG_SIZE}"
    if name is None and not template and not any(labels.get(label) for label in JOB_UID_LABELS):
        return (
            f"{where} needs a gang name: set the label {GANG} on every Pod of the gang, or put the "
            "annotation on a Job's Pod template (the Job's Pods then form the gang)"
        )
    return None


def gang_of(metadata: Mapping[str, Any]) -> Gang | None:
    """The gang a Pod belongs to; None without one, for a gang of one, or for a declaration admission
    refuses."""
    if gang_problem(metadata, template=False) is not None:
        return None
    annotations, labels = _strings(metadata.get("annotations")), _strings(metadata.get("labels"))
    size = annotations.get(GANG_SIZE)
    if size is None or int(size) < 2:
        return None
    name = labels.get(GANG, annotations.get(GANG))
    if name is not None:
        return Gang(key=f"name:{name}", display=f"gang {name}", size=int(size))
    uid = next(str(labels[label]) for label in JOB_UID_LABELS if labels.get(label))
    job = next((str(labels[label]) for label in JOB_NAME_LABELS if labels.get(label)), uid)
    return Gang(key=f"job:{uid}", display=f"job {job}", size=int(size))

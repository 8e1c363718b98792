"""The admission parity corpus (tests/fixtures/admission/corpus.py) against our checks alone, no cluster:
the mutating webhook's Pod validation and the validating webhook's, plus the models `simulate` loads."""

from __future__ import annotations

from typing import Any

import pytest

from dra_operator.admission import validation
from dra_operator.admission.mutation import TEMPLATE_PATHS, AdmissionRejected, invalid_message, mutate
from dra_operator.api.resource import API_VERSION, InvalidObject, load_object
from fixtures.admission import corpus


def our_refusal(case: Any) -> str | None:
    """What our admission says about the case's object: the refusal text, or None when it is let through."""
    obj = dict(case.obj)
    if case.kind in TEMPLATE_PATHS:
        try:
            mutate(obj, case.kind)
        except AdmissionRejected as err:
            return str(err)
        return None
    found = validation.problems(case.kind, obj)
    return invalid_message(case.kind, obj, found) if found else None


def test_the_corpus_is_large_enough() -> None:
    bad = [c for c in corpus.CASES if c.refused is not None]
    good = [c for c in corpus.CASES if c.refused is None]
    assert len(bad) >= 40 and len(good) >= 5
    assert len({c.id for c in corpus.CASES}) == len(corpus.CASES)


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.id)
def test_our_admission_refuses_what_the_apiserver_refuses(case: Any) -> None:
    refusal = our_refusal(case)
    if case.refused is None or case.divergence is not None:
        assert refusal is None, refusal
    else:
        assert refusal is not None and case.expected_ours in refusal, refusal


@pytest.mark.parametrize(
    "case", [c for c in corpus.DRA_CASES if c.refused is None or c.divergence is None], ids=lambda c: c.id
)
def test_models_agree_on_the_template_metadata(case: Any) -> None:
    # `simulate` loads the same objects: template metadata is refused there too, selectors only at use.
    obj = {**case.obj, "apiVersion": API_VERSION}
    metadata_case = case.id.startswith("template: ") and "metadata" in case.obj["spec"]
    if metadata_case and case.refused is not None:
        with pytest.raises(InvalidObject) as info:
            load_object(obj)
        assert case.refused.split(": ", 1)[1] in str(info.value)
    else:
        assert load_object(obj).kind == case.kind

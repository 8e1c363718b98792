"""The rule that decides whether a Pod's claim reference belongs to this operator or to built-in DRA.

The rule, deterministic and evaluated per reference at admission time:

1. A cluster that does not serve `resource.k8s.io/v1` (no built-in DRA): every reference is ours.
2. Otherwise the reference names a ResourceClaim (`resourceClaimName`) or a ResourceClaimTemplate
   (`resourceClaimTemplateName`) in the Pod's namespace, and it is ours unless the name exists **only** in the
   built-in group:
   - our kind (`resource.dra-operator.io/v1`) exists with that name  -> ours (even if a built-in one exists);
   - only the built-in kind (`resource.k8s.io/v1`) exists with it    -> built-in, left untouched;
   - neither exists yet                                              -> ours: the Pod stays gated with a
     ClaimNotFound / TemplateNotFound event until our object appears. Installing this operator is the
     cluster admin's statement that unresolved names are meant for it; a Pod meant for built-in DRA is created
     after its built-in claim or template.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lookup:
    """What the cluster says about one reference's name."""

    builtin_dra: bool  # the cluster serves resource.k8s.io/v1 ResourceClaims
    ours_exists: bool  # our kind with that name exists in the namespace
    builtin_exists: bool  # the built-in kind with that name exists in the namespace


def belongs_to_us(lookup: Lookup) -> bool:
    """Apply the rule of this module's docstring."""
    if not lookup.builtin_dra or lookup.ours_exists:
        return True
    return not lookup.builtin_exists

"""The API group and versions of our kinds and of built-in DRA's, apart from the models: the admission process
names them without loading pydantic's model classes."""

from __future__ import annotations

GROUP = "resource.dra-operator.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
UPSTREAM_API_VERSION = "resource.k8s.io/v1"
API_VERSIONS = (API_VERSION, UPSTREAM_API_VERSION)

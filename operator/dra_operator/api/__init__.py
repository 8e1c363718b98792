"""The resource API of dra-operator: pydantic models of resource.dra-operator.io/v1 and their CRDs."""

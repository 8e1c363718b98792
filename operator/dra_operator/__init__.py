"""dra-operator: Kubernetes Dynamic Resource Allocation for any cluster, as a Kopf operator."""

__version__ = "0.1.0"

"""dra-operator: Kubernetes Dynamic Resource Allocation for any cluster, as a Kopf operator."""

__version__ = "0.1.0"

# Before anything imports kubernetes_asyncio.client (Kopf does, at its own import): its ~900 generated
# classes are then imported one by one when used, not all at once (31 MiB of the operator's imports).
from dra_operator.kube.lazyclient import install as _install_lazy_client

_install_lazy_client()

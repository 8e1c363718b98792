"""Thin Kubernetes client helpers for the shell (operator, webhook, Lease): raw REST, kubernetes_asyncio."""

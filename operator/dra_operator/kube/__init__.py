"""Thin Kubernetes client helpers for the shell (operator, webhook, leader election): raw REST over kubernetes_asyncio."""

"""The operator shell: Kopf watch handlers, the allocation worker, leader election, events, metrics, `run`."""

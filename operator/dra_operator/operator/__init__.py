"""The operator shell: informers and Kopf handlers, the allocation worker, leader election, events, `run`."""

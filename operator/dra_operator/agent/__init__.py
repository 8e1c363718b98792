"""The node agent (`dra-operator agent`): reads a node's devices (NVML or a simulated YAML inventory) and
publishes them as ResourceSlices of resource.dra-operator.io/v1, one per node and driver.

Modules: inventory (plain device data), nvml / simulated (backends), health (Xid -> withdrawn or tainted
devices), slices (inventory -> ResourceSlice, the pure sync plan), publisher (API writes), main (CLI, loop).
"""

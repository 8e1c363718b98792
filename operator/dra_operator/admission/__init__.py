"""Admission: the pure Pod/Pod-template mutation and the names (annotations, gate, label) it shares with the operator."""

"""Admission: the pure Pod (template) mutation and the names it shares with the operator."""

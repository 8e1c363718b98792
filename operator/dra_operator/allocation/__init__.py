"""The structured allocator: a pure function from a snapshot and one Pod's claims to an allocation."""

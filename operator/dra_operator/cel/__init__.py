"""The DRA CEL environment: device selectors compiled once and evaluated against devices."""

"""nsd-synth: a simulated NSD-style world with known ground truth (DESIGN.md)."""

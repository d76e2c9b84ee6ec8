"""Scoring against nsd-synth's ground truth, where the simulator knows the answer (imports `brainatt.synth`).

Only nsd-synth runs reach this package; real-data runs never import it (nor the simulator).
"""

"""NSD preprocessing: responses with noise ceilings, and the stimuli the subjects saw."""

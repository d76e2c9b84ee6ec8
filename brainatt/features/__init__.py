"""Backbone feature cache: one pass of a frozen backbone over the stimuli, read by every encoder."""

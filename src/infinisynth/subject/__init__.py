"""Infinity Instruct Subject: hierarchical tagging, informative seed selection, evolution, multi-turn.

Analysis half: :mod:`.pool` (any instruction pool as one schema), :mod:`.tagging` (the tagger
stage), :mod:`.vocabulary` (tag normalization into a persistent, versioned vocabulary with domain
categories), :mod:`.losses` (base-model losses through a completions endpoint), :mod:`.selection`
(the four seed criteria and their report). Synthesis half: evolution, oracle checks, multi-turn.
"""

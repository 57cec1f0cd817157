"""The registration stage's default memory budget, in a module that imports nothing.

The flows size every stage's budget from their workers (flows/cluster.py) and need
the defaults without loading the stages' libraries.  Conversion's and warping's
defaults live in their planners, which are light; registration's cannot: importing
anything under scalereg.register loads ANTs (ITK's libraries, ~0.2 GiB in every
process), which a conversion's driver and workers have no use for.
"""

REGISTRATION_BUDGET = "8GiB"  # memory for one registration step (decides which levels fit)

"""The quality judge's seven dimensions (Infinite-Instruct 3.3), in the order the judge scores them.

A module of its own, with no imports: the quality stage builds its schema from it, and the run
report (inside the api-server, which must not load the stage stack) draws its chart from it.
"""

DIMENSIONS = (
    "specificity",
    "domain_knowledge",
    "complexity",
    "problem_solving",
    "creativity",
    "technical_accuracy",
    "practical_application",
)

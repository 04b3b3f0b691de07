"""Evaluation: sample k answers per problem, grade them, and report avg@k / pass@k / maj@k and
how the model used its tools (``retool eval``)."""

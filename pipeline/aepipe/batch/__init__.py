"""Batch jobs over rows: the engine they share (engine), the model actors that run in them (actors),
and row selection and output writers (rows)."""

"""Batch jobs over rows: the engine they share (pipeline.batch.engine) and row selection and
output writers (pipeline.batch.rows)."""

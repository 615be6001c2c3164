"""aepipe on Ray: connecting to it, checking what the cluster offers and stopping cleanly on Ctrl-C
(runtime), every workaround of Ray in one place (ray_workarounds), Ray Tune over the
hyper-parameters (tune), and job specs run through Ray Jobs (submit).

It imports nothing: its modules stand in different layers (tests/test_package.py), from the jobs
(tune, submit) through the engine (runtime) down to the parts (ray_workarounds)."""

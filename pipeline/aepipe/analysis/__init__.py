"""What aepipe says about models and codes: metrics, the classical baselines and the probe
(metrics), the one-page report of a run dir (report), the scikit-learn transformer
AutoencoderFeatures (features), and the digits demo (demo).

It imports nothing: its modules stand in different layers (tests/test_package.py), from the
package's API (features) through the jobs (report, demo) down to the parts (metrics)."""

"""Benchmarks that compose the cloud packages: ``asymfuse bench aff`` (AFF ablations in miniature).

Modules: :mod:`.aff_bench` (the protocol and its rows), :mod:`.aff_bench_config` (tiers and
:class:`AFFBenchConfig`), :mod:`.aff_report` (table and plots),
:mod:`.noise_features` (synthetic noisy gallery features for the robustness block). Import them
directly; this package imports nothing heavy on its own.
"""

"""Benchmarks of casare_nb; see bench/README.md."""

"""The benchmark harness of issue #8: `bash bench/run.sh` (see docs/benchmarks.md)."""

"""Latency benchmarking of dense and slim encoders (torch or onnxruntime) and the `deepcuts bench` command."""
from .command import add_bench_command, run_bench_command
from .latency import benchmark
from .report import BenchmarkReport

__all__ = ["BenchmarkReport", "add_bench_command", "benchmark", "run_bench_command"]

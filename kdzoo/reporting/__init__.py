"""What a run reports as it goes: the metrics file, console lines, TensorBoard and plots."""

from kdzoo.reporting.metrics_file import DamagedFile, read_json, read_records, significant, write_jsonl
from kdzoo.reporting.reporters import ConsoleReporter, MetricsFileReporter, PlotReporter, TensorBoardReporter

__all__ = [
    "ConsoleReporter",
    "MetricsFileReporter",
    "PlotReporter",
    "TensorBoardReporter",
    "DamagedFile",
    "read_json",
    "read_records",
    "significant",
    "write_jsonl",
]

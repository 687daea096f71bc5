"""Benchmarks against other libraries, installed beside kdzoo as ``kdzoo_benchmarks``: what they know of
kdzoo's methods (how each maps onto the other library) lives here, not in the core."""

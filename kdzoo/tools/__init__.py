"""Tools built on the engine: the benchmark (with torchdistill beside kdzoo) and method comparisons.

They use the engine and the public API only; the engine never imports them."""

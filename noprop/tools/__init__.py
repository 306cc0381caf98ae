"""The measuring and reporting tools around the library: ``noprop bench`` (bench.py), ``noprop
results`` (results.py: the documentation's tables from results/*.json), ``noprop table`` and the
report folder (report.py), ``noprop reproduce`` (reproduce.py).

They stand above the library's core: a tool imports the core, the core never imports a tool.
Importing this package loads none of them (the CLI imports each when its command runs)."""

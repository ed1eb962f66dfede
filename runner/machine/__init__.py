"""This machine's hardware as ftui reads it: GPUs through NVML (with named fake scenarios for tests
and the demo) and host RAM. Imported by recipe (to resolve `auto`), watch and tui."""

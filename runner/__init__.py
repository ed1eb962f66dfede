"""ftui runner: everything between a plan and a running job (NVML reader so far)."""

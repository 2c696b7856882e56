"""`python -m cli ...` = `geoadapt ...` (how `geoadapt serve` starts its worker process)."""
from cli import main

main()

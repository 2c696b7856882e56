"""`python -m service.cli ...` = `geoadapt ...` (how `geoadapt serve` starts its worker process)."""
from service.cli import main

main()

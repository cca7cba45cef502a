"""`python -m msapp ...`: the commands ms.sh runs."""
from .cli import main

main()

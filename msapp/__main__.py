"""`python -m msapp ...`: the commands ms.sh runs."""
from msapp.cli import main

main()

"""`python -m textok ...` is the `textok` command."""
from textok.cli import main

if __name__ == "__main__":
    main()

"""`python -m shoal.swarmctl`: the same as the `swarmctl` entry point."""

from shoal.swarmctl.cli import main

if __name__ == "__main__":
    main()

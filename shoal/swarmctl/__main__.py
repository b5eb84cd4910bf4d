from shoal.swarmctl.cli import main

main()

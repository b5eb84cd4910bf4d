from shoal.lab.cli import main

main()

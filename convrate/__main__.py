from convrate.cli import main

main()

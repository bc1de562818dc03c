from tapeline.cli import main

main()

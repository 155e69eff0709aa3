from genvae.cli import main

main()

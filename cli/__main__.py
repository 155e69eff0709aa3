from genvae.cli.main import main

main()
